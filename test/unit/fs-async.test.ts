/**
 * The store's file helpers that may run a read or a write on the event loop
 * thread (store/fs-async.ts): whatever path they take, the bytes are the
 * same, a failure surfaces as the syscall's error, and the size limits
 * and the slow-write rule are what the data path relies on.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { openFlags } from '../helpers/fd-flags.js';
import { recordFileWrites } from '../helpers/file-writes.js';
import { COLD_WRITE_PIECE_BYTES, NOWAIT_READ_BYTES_MAX, openFd, openNoAtime, pieceEnd, preadCached, pwriteCached, pwriteFull, slowWriteBacksOff, SYNC_WRITE_BYTES_MAX, syncWriteSlowMs } from '../../src/store/fs-async.js';
import { nativeAddon } from '../../src/util/native.js';

const MiB = 1024 * 1024;
let dir: string;
let fd: number;

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'torus-fs-async-'));
  fd = fs.openSync(path.join(dir, 'f'), 'w+');
});

afterEach(() => {
  vi.restoreAllMocks();
});

afterAll(() => {
  fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('fs-async', () => {
  it('covers a whole 1 MiB block on the loop thread, for reads and writes', () => {
    expect(SYNC_WRITE_BYTES_MAX).toBe(MiB);
    expect(NOWAIT_READ_BYTES_MAX).toBe(MiB);
  });

  it('allows 1 ms plus 2 ms per MiB before writes back off to the pool', () => {
    expect(syncWriteSlowMs(0)).toBe(1);
    expect(syncWriteSlowMs(4096)).toBeCloseTo(1.0078, 4);
    expect(syncWriteSlowMs(MiB)).toBe(3);
  });

  it('backs off to the pool after a slow write only when the thread waited in it (or nobody can tell)', () => {
    // The wait count now, as the addon would answer it; counts how often it was asked.
    const counter = (now: number | null) => {
      const q = { asked: 0, now: () => (q.asked++, now) };
      return q;
    };
    // Slow and waited (the dirty-page throttle, a page read from disk): back off.
    expect(slowWriteBacksOff(5, 4096, 10, counter(11).now)).toBe(true);
    // Slow but never slept: preempted on a busy machine; the pool would not help.
    expect(slowWriteBacksOff(5, 4096, 10, counter(10).now)).toBe(false);
    // No addon, no per-thread count: wall time alone decides, as before.
    expect(slowWriteBacksOff(5, 4096, null, counter(null).now)).toBe(true);
    expect(slowWriteBacksOff(5, 4096, 10, counter(null).now)).toBe(true);
    // Fast writes never back off, whatever the count says, and never ask it.
    const fast = counter(99);
    expect(slowWriteBacksOff(0.5, 4096, 10, fast.now)).toBe(false);
    expect(slowWriteBacksOff(2.9, MiB, 10, fast.now)).toBe(false);
    expect(fast.asked).toBe(0);
    expect(slowWriteBacksOff(3.1, MiB, 10, counter(11).now)).toBe(true);
  });

  it("counts the loop thread's waits (the addon's per-thread voluntary context switches)", () => {
    const waits = nativeAddon?.threadWaits;
    expect(waits, 'the native addon must be built for this test (npm run build)').toBeTypeOf('function');
    const before = waits!();
    expect(before).toBeGreaterThanOrEqual(0);
    // Sleeping is a wait: the count goes up.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    const after = waits!();
    expect(after).toBeGreaterThan(before);
  });

  it('writes a 1 MiB buffer at an offset whole, and reads it back from the page cache without the pool', async () => {
    const data = pattern(MiB, 7);
    const wrote = pwriteCached(fd, data, 4096);
    if (wrote !== null) await wrote; // a slow write earlier in the process may have sent it to the pool
    const back = Buffer.alloc(MiB);
    expect(nativeAddon, 'the native addon must be built for this test (npm run build)').not.toBeNull();
    // Just written, so cached: the non-blocking read takes it whole on the loop thread.
    expect(preadCached(fd, back, 0, MiB, 4096)).toBeNull();
    expect(back.equals(data)).toBe(true);
  });

  it('sends writes over 1 MiB to the pool, with the same result', async () => {
    const data = pattern(MiB + 4096, 3);
    const wrote = pwriteCached(fd, data, 0);
    expect(wrote).not.toBeNull();
    await wrote;
    const back = Buffer.alloc(data.length);
    const read = preadCached(fd, back, 0, back.length, 0);
    expect(read, 'reads over 1 MiB go to the pool').not.toBeNull();
    await read;
    expect(back.equals(data)).toBe(true);
  });

  it('zero-fills a read past the end of the file (the pool path takes a short read over)', async () => {
    const f = fs.openSync(path.join(dir, 'short'), 'w+');
    try {
      fs.writeSync(f, pattern(4096, 1), 0, 4096, 0);
      const back = Buffer.alloc(8192, 0xaa);
      const read = preadCached(f, back, 0, 8192, 0);
      expect(read).not.toBeNull();
      await read;
      expect(back.subarray(0, 4096).equals(pattern(4096, 1))).toBe(true);
      expect(back.subarray(4096).every((b) => b === 0)).toBe(true);
    } finally {
      fs.closeSync(f);
    }
  });

  it("reports a write's failure as the syscall's error, whichever path the write took", async () => {
    const ro = fs.openSync(path.join(dir, 'f'), 'r');
    try {
      const outcome = await (async () => {
        const wrote = pwriteCached(ro, pattern(4096, 2), 0);
        if (wrote !== null) await wrote;
      })().then(() => null, (e: unknown) => e);
      expect(outcome).toMatchObject({ code: 'EBADF' });
    } finally {
      fs.closeSync(ro);
    }
  });

  it('ends the pieces of a write into uncached pages at multiples of the piece size', () => {
    const K = 1024;
    expect(COLD_WRITE_PIECE_BYTES).toBe(64 * K);
    // A block file's data starts after its 4 KiB header: the first piece is short.
    expect(pieceEnd(4 * K, 4 * K + MiB, 64 * K)).toBe(64 * K);
    expect(pieceEnd(64 * K, 4 * K + MiB, 64 * K)).toBe(128 * K);
    expect(pieceEnd(MiB, 4 * K + MiB, 64 * K)).toBe(MiB + 4 * K);
    // A write inside one piece is one piece.
    expect(pieceEnd(68 * K, 72 * K, 64 * K)).toBe(72 * K);
    expect(() => pieceEnd(8, 8, 64 * K)).toThrow(/assertion/);
  });

  it('writes in pieces ending at piece boundaries when asked, on the loop and through the pool, with the same bytes', async () => {
    const calls = recordFileWrites();
    const piece = COLD_WRITE_PIECE_BYTES;
    const want = (len: number, at: number): [number, number][] => {
      const out: [number, number][] = [];
      for (let p = at; p < at + len; p = pieceEnd(p, at + len, piece)) out.push([pieceEnd(p, at + len, piece) - p, p]);
      return out;
    };
    for (const [len, at] of [[MiB, 4096], [200_000, 70_000], [4096, 8192]] as const) {
      const data = pattern(len, len & 0xff);
      calls.length = 0;
      const wrote = pwriteCached(fd, data, at, piece);
      if (wrote !== null) await wrote;
      expect(calls).toEqual(want(len, at));
      calls.length = 0;
      await pwriteFull(fd, data, at, piece);
      expect(calls).toEqual(want(len, at));
      const back = Buffer.alloc(len);
      fs.readSync(fd, back, 0, len, at);
      expect(back.equals(data)).toBe(true);
    }
    // Without a piece size a write is one call.
    calls.length = 0;
    const wrote = pwriteCached(fd, pattern(MiB, 5), 4096);
    if (wrote !== null) await wrote;
    expect(calls).toEqual([[MiB, 4096]]);
  });

  it('openNoAtime: opens without access-time updates, falls back to a plain open on EPERM only', async () => {
    const file = path.join(dir, 'noatime');
    fs.writeFileSync(file, 'x');
    const got = await openNoAtime(file, fs.constants.O_RDWR);
    try {
      expect(openFlags(got) & fs.constants.O_NOATIME).toBe(fs.constants.O_NOATIME);
      expect(openFlags(got) & 0o3).toBe(fs.constants.O_RDWR); // the access mode bits
    } finally {
      fs.closeSync(got);
    }
    // Not the file's owner: the kernel refuses O_NOATIME with EPERM.
    const asked: number[] = [];
    const notOwner = (p: string, flags: number) => {
      asked.push(flags);
      if (flags & fs.constants.O_NOATIME) return Promise.reject(Object.assign(new Error('EPERM'), { code: 'EPERM' }));
      return openFd(p, flags);
    };
    const plain = await openNoAtime(file, fs.constants.O_RDONLY, notOwner);
    try {
      expect(asked).toEqual([fs.constants.O_RDONLY | fs.constants.O_NOATIME, fs.constants.O_RDONLY]);
      expect(openFlags(plain) & fs.constants.O_NOATIME).toBe(0);
    } finally {
      fs.closeSync(plain);
    }
    // Any other failure is the caller's, not retried.
    await expect(openNoAtime(path.join(dir, 'missing'), fs.constants.O_RDWR)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

