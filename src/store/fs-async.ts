import fs from 'node:fs';
import { assert } from '../util/assert.js';
import { nativeAddon } from '../util/native.js';

/**
 * Promise wrappers over raw file descriptors. fs.promises.FileHandle costs an
 * extra object and close bookkeeping per call; the store keeps its own fd cache
 * and uses these on the data path.
 */

export function openFd(path: string, flags: number | string, mode = 0o644): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/**
 * Opens a block file asking the kernel not to update its access time
 * (O_NOATIME): every read then skips the access-time check, a measurable
 * part of a 4 KiB cached read. Only the file's owner (or a process with
 * CAP_FOWNER) may ask; for a file it does not own (a data folder copied in
 * by another user) the open is refused with EPERM, and is made again
 * without the flag.
 */
export async function openNoAtime(path: string, flags: number, open: (path: string, flags: number) => Promise<number> = openFd): Promise<number> {
  try {
    return await open(path, flags | fs.constants.O_NOATIME);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    return open(path, flags);
  }
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
}

/** Reads exactly `length` bytes at `position`, zero-filling past end of file. */
export async function preadFull(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, buf, offset + done, length - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))),
    );
    if (n === 0) {
      buf.fill(0, offset + done, offset + length);
      return;
    }
    done += n;
  }
}

/**
 * Like preadFull, but first tries a read that does not block (preadv2 with
 * RWF_NOWAIT through the native addon) on the event loop thread: pages
 * already in the page cache are copied at memory speed instead of after a
 * round trip through the libuv thread pool. That round trip is the cost on
 * a busy machine: handing a read to a pool thread and its completion back
 * wakes two threads that compete with the event loop (and with the client)
 * for the cores. Up to a whole 1 MiB block is read this way: on 2 cores,
 * 1 MiB sequential reads went 8 % faster in the median of five interleaved
 * pairs, and 10-18 % through a replicated volume (2026-12-01). Anything else
 * (not cached, short read, error, no addon) goes the normal way.
 */
export const NOWAIT_READ_BYTES_MAX = 1024 * 1024;

export function preadCached(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> | null {
  const nowait = nativeAddon?.preadNowait;
  if (nowait !== undefined && length <= NOWAIT_READ_BYTES_MAX && nowait(fd, buf, offset, length, position) === length) return null;
  return preadFull(fd, buf, offset, length, position);
}

/**
 * A write into the page cache is a memory copy: up to a 1 MiB block takes
 * a fraction of a millisecond, less than a round trip through the thread
 * pool costs on a busy machine (see preadCached), so such writes are done
 * on the event loop thread. On 2 cores 1 MiB sequential writes went 15 %
 * faster in the median of five interleaved pairs (2026-12-01). The kernel
 * can block a writer when too many pages are dirty (balance_dirty_pages,
 * pauses of 4 ms and more), or make it read a page from disk first, which
 * would stall every client of the process; so each such write is timed,
 * and after one that was slower than syncWriteSlowMs *and waited* (the
 * thread slept: a voluntary context switch, counted by the native addon),
 * writes go through the pool for a while.
 *
 * A slow write that did not wait was only preempted: the machine is busy,
 * and the pool would make that worse (two more thread wake-ups per write).
 * Taking wall time alone, a replica of a 3-peer cluster on 2 cores was
 * preempted mid-write often enough to stay backed off nearly all the time
 * (its pool threads woke 0.8 times per write). Counting only writes that
 * waited, 4 KiB replicated random writes went from 4037 / 5238 / 4222 to
 * 6823 / 6416 / 6634 IOPS (three interleaved pairs), and a replica's CPU
 * per write from 78-101 µs to 50 µs (2026-12-02, docs/perf/profile.md).
 * Without the addon there is no per-thread count, and wall time alone
 * decides.
 */
export const SYNC_WRITE_BYTES_MAX = 1024 * 1024;
const SYNC_WRITE_BACKOFF_MS = 1_000;
let syncWritesAfter = 0;

/**
 * How long a write of `bytes` may take on the event loop before writes back
 * off to the pool: 1 ms, plus 2 ms per MiB (a copy slower than 500 MB/s is
 * no longer a plain copy into the page cache).
 */
export function syncWriteSlowMs(bytes: number): number {
  return 1 + (2 * bytes) / (1024 * 1024);
}

/**
 * Whether a write on the event loop that took `elapsedMs` should send the
 * writes after it to the pool: only if it was slow and the thread slept
 * during it (its wait count went up from `waitsBefore`). Where the count
 * is not known (no addon: null) a slow write counts as a waiting one.
 * `waitsNow` is asked only for a slow write: a fast one costs no second
 * count.
 */
export function slowWriteBacksOff(elapsedMs: number, bytes: number, waitsBefore: number | null, waitsNow: () => number | null): boolean {
  if (elapsedMs <= syncWriteSlowMs(bytes)) return false;
  if (waitsBefore === null) return true;
  const now = waitsNow();
  return now === null || now > waitsBefore;
}

/** The calling thread's wait count, or null where the addon cannot tell. */
function threadWaits(): number | null {
  const waits = nativeAddon?.threadWaits;
  if (waits === undefined) return null;
  const n = waits();
  return n < 0 ? null : n;
}

/**
 * Pieces a write into pages the page cache does not hold yet is split
 * into: writes that end at file offsets that are multiples of this. The
 * kernel (ext4 since Linux 6.16) caches what one write(2) brings in as
 * folios as large as the write allows (up to 512 KiB of a block file's
 * data, aligned as it is), and every later write into a folio walks all
 * of its 4 KiB buffer heads: 4 KiB random writes into blocks filled by
 * 1 MiB writes spent a fifth of torusd's CPU in ext4_block_write_begin.
 * Filled in 64 KiB pieces, the folios stay at most 64 KiB (16 buffer
 * heads). Interleaved pairs of one torusd before and after, each after a
 * 1 GiB fill (2026-12-03): 4 KiB random writes 24.2k / 22.4k / 18.0k ->
 * 33.3k / 24.3k / 31.9k IOPS, with an fsync every 32: 8564 / 7804 / 7257
 * -> 10.3k / 7937 / 8171. Only the first write of a page pays the extra
 * syscalls (a 1 MiB write in pieces is 16 of them): later writes into
 * cached folios are not split, and keep their speed.
 */
export const COLD_WRITE_PIECE_BYTES = 64 * 1024;

/** Where the piece of a write that starts at `position` ends: the next multiple of `piece`, or `end`. */
export function pieceEnd(position: number, end: number, piece: number): number {
  assert(piece > 0 && position < end, 'a piece is a positive size and the write is not empty');
  return Math.min(end, (Math.floor(position / piece) + 1) * piece);
}

/** Bytes of `buf` the write call at `done` may take: up to the piece's end, or all that is left. */
function pieceBytes(buf: Buffer, done: number, position: number, piece: number | null): number {
  const end = position + buf.length;
  return piece === null ? buf.length - done : pieceEnd(position + done, end, piece) - (position + done);
}

/**
 * Writes `buf` at `position`; `piece` (see COLD_WRITE_PIECE_BYTES) splits
 * it into writes that end at multiples of it, for pages not cached yet.
 */
export function pwriteCached(fd: number, buf: Buffer, position: number, piece: number | null = null): Promise<void> | null {
  if (buf.length > SYNC_WRITE_BYTES_MAX) return pwriteFull(fd, buf, position, piece);
  const t0 = performance.now();
  if (t0 < syncWritesAfter) return pwriteFull(fd, buf, position, piece);
  const waits0 = threadWaits();
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, pieceBytes(buf, done, position, piece), position + done);
  const t1 = performance.now();
  if (slowWriteBacksOff(t1 - t0, buf.length, waits0, threadWaits)) syncWritesAfter = t1 + SYNC_WRITE_BACKOFF_MS;
  return null;
}

export async function pwriteFull(fd: number, buf: Buffer, position: number, piece: number | null = null): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.write(fd, buf, done, pieceBytes(buf, done, position, piece), position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))),
    );
    done += n;
  }
}

/** Writes buffers back to back at `position` with as few syscalls as possible. */
export async function pwritevFull(fd: number, bufs: Buffer[], position: number): Promise<void> {
  let pending = bufs;
  let pos = position;
  while (pending.length > 0) {
    // Linux caps one writev at IOV_MAX (1024) entries.
    const batch = pending.slice(0, 1024);
    const total = batch.reduce((s, b) => s + b.length, 0);
    const n = await new Promise<number>((resolve, reject) =>
      fs.writev(fd, batch, pos, (err, bytes) => (err ? reject(err) : resolve(bytes))),
    );
    pos += n;
    if (n === total) {
      pending = pending.slice(batch.length);
      continue;
    }
    // Short write: drop what was written and go on with the rest.
    let skip = n;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    pending = rest;
  }
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
}

export function ftruncate(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, length, (err) => (err ? reject(err) : resolve())));
}

/** fsync a directory so that entries created or removed in it survive power loss. */
export async function fsyncDir(path: string): Promise<void> {
  const fd = await openFd(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

/**
 * syncfs(2) on a worker thread through the native addon, or null when the
 * addon lacks it (the caller then syncs file by file).
 */
export function syncFileSystem(fd: number): Promise<void> | null {
  const syncfs = nativeAddon?.syncfs;
  if (syncfs === undefined) return null;
  return new Promise((resolve, reject) =>
    syncfs(fd, (errno) => {
      if (errno === 0) return resolve();
      const err = new Error(`syncfs failed: errno ${errno}`) as NodeJS.ErrnoException;
      err.errno = errno;
      err.code = errno === 28 ? 'ENOSPC' : errno === 5 ? 'EIO' : `E${errno}`;
      reject(err);
    }),
  );
}
