import { assert } from '../util/assert.js';
import { nativeAddon, type NativeAddon } from '../util/native.js';
import { preadCached, preadFull } from './fs-async.js';

/** Reads one batch takes at most (the native ring's size, native/src/read-batch.h). */
export const READ_BATCH_MAX = 64;

/**
 * Largest read that waits for a batch. The system call's entry and exit
 * are worth sharing for small reads only: a 1 MiB read spends its time in
 * the copy, and would only wait for the batch's microtask.
 */
export const READ_BATCH_BYTES_MAX = 64 * 1024;

type BatchFn = NonNullable<NativeAddon['readBatchNowait']>;

interface Pending {
  readonly fd: number;
  readonly buf: Buffer;
  readonly offset: number;
  readonly length: number;
  readonly position: number;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Gathers the small reads asked for in one run of the microtask queue and
 * makes them with one system call (native/src/read-batch.cc: io_uring, each
 * read with RWF_NOWAIT, all completed before the call returns).
 *
 * Why: a 4 KiB read from the page cache is mostly the cost of its system
 * call on this kind of host (a paravirtualised guest: `preadv2` was 44 % of
 * the event loop's samples under 4 KiB random reads, its page-cache walk
 * and copy a quarter of that). The NBD server takes several requests from
 * one socket read, and their reads reach the store in the same run of
 * microtasks: about five per batch at qd16. Measured in docs/perf/profile.md
 * ("Page-cache reads in batches").
 *
 * A read the batch could not serve whole (not cached: -EAGAIN; short; any
 * error) is made again the ordinary way (preadFull, through the thread
 * pool), which also reports its error. Without the addon's batch, or once
 * the kernel refused the ring (no io_uring, a seccomp filter,
 * kernel.io_uring_disabled), every read goes through preadCached as before.
 */
export class ReadBatcher {
  private queue: Pending[] = [];
  private scheduled = false;
  private usable: boolean;
  private readonly bufs: Buffer[] = [];
  private readonly spec = new Float64Array(READ_BATCH_MAX * 4);
  private readonly results = new Float64Array(READ_BATCH_MAX);
  /** Batches the ring served, and the reads in them (a read alone is made the ordinary way and not counted). */
  batches = 0;
  batchedReads = 0;

  /**
   * `native`: the addon's batch call (null: none, every read the ordinary
   * way). `onRefused` hears once, with the errno, that the kernel refused
   * the ring (the store logs it: reads then cost what they did before).
   * `readOne`: how a read goes when not in a batch (a store over a model
   * disk passes its own, with `native` null).
   */
  constructor(
    private readonly native: BatchFn | null = nativeAddon?.readBatchNowait ?? null,
    private readonly onRefused: (errno: number) => void = () => undefined,
    private readonly readOne: typeof preadCached = preadCached,
  ) {
    this.usable = native !== null;
  }

  /** Whether reads still go in batches (false without the addon, or after the kernel refused the ring). */
  get batching(): boolean {
    return this.usable;
  }

  /**
   * Fills buf[offset, offset + length) with the file's bytes at `position`
   * (zeroes past its end), as preadCached does: null when done already, or
   * a promise. A small read always waits for its batch.
   */
  read(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> | null {
    if (!this.usable || length > READ_BATCH_BYTES_MAX || length === 0) return this.readOne(fd, buf, offset, length, position);
    assert(offset >= 0 && offset + length <= buf.length, 'a batched read lies inside its buffer');
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ fd, buf, offset, length, position, resolve, reject });
      if (this.queue.length === READ_BATCH_MAX) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(this.flushQueued);
      }
    });
  }

  private readonly flushQueued = (): void => {
    this.scheduled = false;
    this.flush();
  };

  private flush(): void {
    const batch = this.queue;
    if (batch.length === 0) return;
    this.queue = [];
    if (batch.length === 1) {
      // Alone (a replica serving one peer request at a time): one preadv2 costs less than a ring's submission.
      this.single(batch[0]!);
      return;
    }
    const bufs = this.bufs;
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      bufs.push(p.buf);
      this.spec[i * 4] = p.fd;
      this.spec[i * 4 + 1] = p.offset;
      this.spec[i * 4 + 2] = p.length;
      this.spec[i * 4 + 3] = p.position;
    }
    let r: number;
    try {
      r = this.native!(bufs, this.spec, this.results);
    } catch (err) {
      // Only arguments the checks above let through (a bug): every read fails with it.
      for (const p of batch) p.reject(err);
      return;
    } finally {
      bufs.length = 0;
    }
    if (r !== 0) {
      // Refused by the kernel: never tried again; these reads and all later ones go one by one.
      this.usable = false;
      this.onRefused(-r);
      for (const p of batch) this.single(p);
      return;
    }
    this.batches++;
    this.batchedReads += batch.length;
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      if (this.results[i] === p.length) p.resolve();
      else preadFull(p.fd, p.buf, p.offset, p.length, p.position).then(p.resolve, p.reject);
    }
  }

  private single(p: Pending): void {
    try {
      const pending = this.readOne(p.fd, p.buf, p.offset, p.length, p.position);
      if (pending === null) p.resolve();
      else pending.then(p.resolve, p.reject);
    } catch (err) {
      p.reject(err);
    }
  }
}
