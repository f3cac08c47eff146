import { assert } from './assert.js';
import { nativeAddon } from './native.js';

/**
 * Pooled, bounded buffers for the data path (NBD payloads, store read
 * regions, peer frames). A fresh Buffer per request made about half of
 * torusd's CPU garbage collection: every large Buffer is external memory,
 * and V8 answers external growth with full mark-compacts. Buffers from here
 * are allocated once and reused.
 *
 * Sizes are powers of two from `classMinBytes` to `classMaxBytes`; a request
 * gets a view of exactly the length asked for on a buffer of its class.
 * Larger requests are plain allocations (still releasable: a no-op; aligned
 * as pooled ones are).
 *
 * Ownership: acquire() returns a buffer with one reference. Whoever keeps a
 * pooled buffer beyond the call that handed it over takes a reference with
 * retainBuffer() and drops it with releaseBuffer(); the buffer goes back to
 * its pool when the last reference is dropped. A buffer must not be touched
 * after its holder released it: a socket write still queued, a pwrite on the
 * thread pool or a replica that timed out but still has the bytes on its
 * socket each hold a reference of their own. Forgetting to release is not a
 * bug (the GC takes the buffer); releasing too often is, and is asserted.
 *
 * retainBuffer/releaseBuffer work on any Buffer or view: for a buffer that
 * did not come from a pool they do nothing, so layers can pass buffers
 * through without knowing where they came from. That needs one side table
 * from backing ArrayBuffer to slot for the whole process (a WeakMap, so it
 * holds nothing alive); the pools themselves are ordinary objects the daemon
 * creates and injects.
 *
 * Alignment: every pooled buffer starts on a 64-byte boundary (where the
 * native addon can say where a buffer lies; without it, where malloc put
 * it). A large Buffer comes from its own mmap at 16 bytes past a page
 * boundary, and on the AMD EPYC development machine the kernel's copy
 * between the page cache and such a buffer (pread into it, pwrite at a page
 * offset 16 bytes below it) ran at 1.8 GB/s against 8.5-9.7 GB/s at any
 * 64-byte boundary: copies whose destination lies 1-31 bytes past the
 * source modulo 4 KiB take the CPU's slow path. Block data sits at page
 * offsets in block files, so 64-byte aligned buffers never hit it. It was
 * half of torusd's CPU in 1 MiB sequential reads (docs/perf/profile.md,
 * "Buffers 16 bytes past a page").
 *
 * Poison mode (TORUS_POOL_POISON=1, or the `poison` option) overwrites every
 * released buffer with a pattern and checks the pattern is intact when the
 * buffer is handed out again: a read after release shows as corrupt data (the
 * durability and fuzz suites catch it), a write after release crashes.
 */

export interface BufferPoolOptions {
  /** Smallest class; requests below it get a buffer of this size. Default 4 KiB. */
  readonly classMinBytes?: number;
  /** Largest pooled class; larger requests are plain allocations. Default 4 MiB. */
  readonly classMaxBytes?: number;
  /** Bytes kept on the free lists at most; buffers released beyond it are left to the GC. Default 16 MiB. */
  readonly freeBytesMax?: number;
  /** Poison released buffers (see above). Default: TORUS_POOL_POISON=1 in the environment. */
  readonly poison?: boolean;
  /**
   * Where a buffer lies: its address modulo a power of two. Default: the
   * native addon's; null (or no addon) leaves buffers where malloc puts them.
   */
  readonly addressModulo?: ((data: Uint8Array, modulus: number) => number) | null;
}

/** Pooled buffers start at a multiple of this many bytes (see above). */
export const BUFFER_ALIGN_BYTES = 64;

export interface BufferPoolStats {
  /** Bytes of pooled buffers handed out and not yet back. */
  readonly inUseBytes: number;
  /** Bytes on the free lists. */
  readonly freeBytes: number;
  /** Buffers allocated because no free one of the class was there. */
  readonly allocations: number;
  /** Buffers handed out from a free list. */
  readonly reuses: number;
}

const POISON_BYTE = 0xdb;
const POISON_REF = Buffer.alloc(64 * 1024, POISON_BYTE);

interface Slot {
  readonly pool: BufferPool;
  readonly cls: number;
  /** The whole class-sized buffer. */
  readonly whole: Buffer;
  refs: number;
}

/** Backing store of every pooled buffer -> its slot. */
const slots = new WeakMap<ArrayBufferLike, Slot>();

function slotOf(buf: Uint8Array): Slot | undefined {
  return slots.get(buf.buffer);
}

/** Takes one more reference on a pooled buffer (any view of it); nothing for other buffers. */
export function retainBuffer(buf: Uint8Array): void {
  const s = slotOf(buf);
  if (s === undefined) return;
  assert(s.refs > 0, 'a pooled buffer is retained only while referenced');
  s.refs++;
}

/** Drops one reference; the last one returns the buffer to its pool. Nothing for other buffers. */
export function releaseBuffer(buf: Uint8Array): void {
  const s = slotOf(buf);
  if (s === undefined) return;
  assert(s.refs > 0, 'a pooled buffer is not released more often than it was referenced');
  if (--s.refs === 0) s.pool.giveBack(s);
}

/** True when `buf` is a view of a pooled buffer that is currently handed out. */
export function isPooled(buf: Uint8Array): boolean {
  const s = slotOf(buf);
  return s !== undefined && s.refs > 0;
}

export function poisonFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TORUS_POOL_POISON === '1';
}

export class BufferPool {
  readonly classMinBytes: number;
  readonly classMaxBytes: number;
  readonly freeBytesMax: number;
  readonly poison: boolean;
  /** Free buffers per class (index = log2(size / classMinBytes)), used last-in first-out: warm in cache. */
  private readonly free: Slot[][];
  private freeBytes = 0;
  private inUseBytes = 0;
  private allocations = 0;
  private reuses = 0;
  private readonly addressModulo: ((data: Uint8Array, modulus: number) => number) | null;

  constructor(opts: BufferPoolOptions = {}) {
    this.classMinBytes = opts.classMinBytes ?? 4096;
    this.classMaxBytes = opts.classMaxBytes ?? 4 * 1024 * 1024;
    this.freeBytesMax = opts.freeBytesMax ?? 16 * 1024 * 1024;
    this.poison = opts.poison ?? poisonFromEnv();
    this.addressModulo = opts.addressModulo === undefined ? (nativeAddon?.addressModulo ?? null) : opts.addressModulo;
    assert(isPowerOfTwo(this.classMinBytes) && isPowerOfTwo(this.classMaxBytes) && this.classMinBytes <= this.classMaxBytes, 'pool classes are powers of two, min <= max');
    assert(Number.isSafeInteger(this.freeBytesMax) && this.freeBytesMax >= 0, 'freeBytesMax is a non-negative integer');
    this.free = Array.from({ length: Math.log2(this.classMaxBytes / this.classMinBytes) + 1 }, () => []);
  }

  /**
   * A buffer of exactly `length` bytes holding arbitrary old bytes (like
   * Buffer.allocUnsafe), with one reference; give it back with releaseBuffer.
   */
  acquire(length: number): Buffer {
    assert(Number.isSafeInteger(length) && length >= 0, 'a buffer length is a non-negative integer');
    // Not pooled, but placed like pooled ones: a 32 MiB READ is read into it.
    if (length > this.classMaxBytes) return this.allocAligned(length);
    const cls = this.classOf(length);
    const list = this.free[cls]!;
    let s = list.pop();
    if (s !== undefined) {
      this.freeBytes -= s.whole.length;
      this.reuses++;
      if (this.poison) this.checkPoison(s);
    } else {
      s = { pool: this, cls, whole: this.allocAligned(this.classMinBytes << cls), refs: 0 };
      slots.set(s.whole.buffer, s);
      this.allocations++;
    }
    s.refs = 1;
    this.inUseBytes += s.whole.length;
    return length === s.whole.length ? s.whole : s.whole.subarray(0, length);
  }

  stats(): BufferPoolStats {
    return { inUseBytes: this.inUseBytes, freeBytes: this.freeBytes, allocations: this.allocations, reuses: this.reuses };
  }

  /** Called by releaseBuffer for the last reference. */
  giveBack(s: Slot): void {
    assert(s.pool === this && s.refs === 0, 'a buffer goes back to its own pool, unreferenced');
    this.inUseBytes -= s.whole.length;
    if (this.poison) s.whole.fill(POISON_BYTE);
    if (this.freeBytes + s.whole.length > this.freeBytesMax) {
      // Over the bound: forget it, the GC reclaims it.
      slots.delete(s.whole.buffer);
      return;
    }
    this.free[s.cls]!.push(s);
    this.freeBytes += s.whole.length;
  }

  /**
   * A buffer of its own (allocUnsafeSlow: never a slice of Node's shared
   * 8 KiB pool, so its backing store identifies it), starting on a
   * BUFFER_ALIGN_BYTES boundary when the address can be known.
   */
  private allocAligned(size: number): Buffer {
    if (this.addressModulo === null) return Buffer.allocUnsafeSlow(size);
    const raw = Buffer.allocUnsafeSlow(size + BUFFER_ALIGN_BYTES);
    const skip = (BUFFER_ALIGN_BYTES - this.addressModulo(raw, BUFFER_ALIGN_BYTES)) % BUFFER_ALIGN_BYTES;
    assert(Number.isSafeInteger(skip) && skip >= 0 && skip < BUFFER_ALIGN_BYTES, 'an alignment skip is within the slack');
    return raw.subarray(skip, skip + size);
  }

  private classOf(length: number): number {
    if (length <= this.classMinBytes) return 0;
    return Math.ceil(Math.log2(length / this.classMinBytes));
  }

  private checkPoison(s: Slot): void {
    const b = s.whole;
    for (let at = 0; at < b.length; at += POISON_REF.length) {
      const n = Math.min(POISON_REF.length, b.length - at);
      assert(b.compare(POISON_REF, 0, n, at, at + n) === 0, 'a pooled buffer was not written after it was released');
    }
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
