/**
 * Page-cache reads in batches (src/store/read-batch.ts over the addon's
 * readBatchNowait, native/src/read-batch.cc): the bytes are those of the
 * file whatever path a read took, reads asked for together go in one
 * system call, a read the ring could not serve whole is made again through
 * the pool, and a kernel that refuses io_uring leaves reads working one by
 * one. Real files; the native checks are run under AddressSanitizer by
 * `npm run test:asan`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { READ_BATCH_BYTES_MAX, READ_BATCH_MAX, ReadBatcher } from '../../src/store/read-batch.js';
import { nativeAddon } from '../../src/util/native.js';

const FILE_BYTES = 1024 * 1024 + 4096;
let dir: string;
const fds: number[] = [];
const contents: Buffer[] = [];

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 12)) & 0xff;
  return b;
}

function batchFn() {
  const fn = nativeAddon?.readBatchNowait;
  expect(fn, 'the native addon must be built for this test (npm run build)').toBeTypeOf('function');
  return fn!;
}

/** xorshift32, so a failing case can be replayed from its seed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'torus-read-batch-'));
  for (let i = 0; i < 8; i++) {
    const file = path.join(dir, `f${i}`);
    const data = pattern(FILE_BYTES, i + 1);
    fs.writeFileSync(file, data);
    contents.push(data);
    fds.push(fs.openSync(file, 'r'));
  }
});

afterAll(() => {
  for (const fd of fds) fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('readBatchNowait (native)', () => {
  it('reads many ranges of several files in one call, each into its place in its buffer', () => {
    const fn = batchFn();
    const n = 24;
    const bufs: Buffer[] = [];
    const spec = new Float64Array(n * 4);
    const results = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      bufs.push(Buffer.alloc(8192 + 100, 0xee));
      spec.set([fds[i % fds.length]!, 100, 8192, 4096 * i + (i % 3)], i * 4);
    }
    expect(fn(bufs, spec, results)).toBe(0);
    for (let i = 0; i < n; i++) {
      expect(results[i]).toBe(8192);
      const want = contents[i % fds.length]!.subarray(4096 * i + (i % 3), 4096 * i + (i % 3) + 8192);
      expect(bufs[i]!.subarray(100).equals(want)).toBe(true);
      expect(bufs[i]!.subarray(0, 100).every((b) => b === 0xee)).toBe(true);
    }
  });

  it("gives each read its own outcome: a short read past the end of the file, -EBADF for a closed descriptor, 0 at the end", () => {
    const fn = batchFn();
    const closed = fs.openSync(path.join(dir, 'f0'), 'r');
    fs.closeSync(closed);
    const bufs = [Buffer.alloc(4096), Buffer.alloc(4096), Buffer.alloc(4096), Buffer.alloc(4096)];
    const spec = new Float64Array([fds[0]!, 0, 4096, FILE_BYTES - 1000, closed, 0, 4096, 0, fds[1]!, 0, 4096, FILE_BYTES, fds[2]!, 0, 4096, 0]);
    const results = new Float64Array(4);
    expect(fn(bufs, spec, results)).toBe(0);
    expect([...results]).toEqual([1000, -(os.constants.errno.EBADF as number), 0, 4096]);
    expect(bufs[0]!.subarray(0, 1000).equals(contents[0]!.subarray(FILE_BYTES - 1000))).toBe(true);
    expect(bufs[3]!.equals(contents[2]!.subarray(0, 4096))).toBe(true);
  });

  it('refuses a range outside its buffer, more than 64 reads, the wrong array types, and buffers that are not bytes', () => {
    const fn = batchFn();
    const results = new Float64Array(READ_BATCH_MAX + 1);
    expect(() => fn([Buffer.alloc(4096)], new Float64Array([fds[0]!, 1, 4096, 0]), results)).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(4096)], new Float64Array([fds[0]!, -1, 10, 0]), results)).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(4096)], new Float64Array([fds[0]!, 0, 10, -5]), results)).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(4096)], new Float64Array([Number.NaN, 0, 10, 0]), results)).toThrow(RangeError);
    const many = Array.from({ length: READ_BATCH_MAX + 1 }, () => Buffer.alloc(16));
    expect(() => fn(many, new Float64Array(many.length * 4), results)).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(16)], new Float64Array(3), results)).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(16)], new Float64Array(4), new Float64Array(0))).toThrow(RangeError);
    expect(() => fn([Buffer.alloc(16)], new Uint32Array(4) as unknown as Float64Array, results)).toThrow(RangeError);
    expect(() => fn([new Uint16Array(8) as unknown as Buffer], new Float64Array([fds[0]!, 0, 4, 0]), results)).toThrow(TypeError);
    expect(() => fn(['x' as unknown as Buffer], new Float64Array([fds[0]!, 0, 4, 0]), results)).toThrow(TypeError);
  });

  it('agrees with readSync on 300 random batches (1-64 reads of up to 64 KiB, any file, position and buffer offset)', () => {
    const fn = batchFn();
    const r = rng(20261207);
    const spec = new Float64Array(READ_BATCH_MAX * 4);
    const results = new Float64Array(READ_BATCH_MAX);
    for (let round = 0; round < 300; round++) {
      const n = 1 + r(READ_BATCH_MAX);
      const bufs: Buffer[] = [];
      const want: Buffer[] = [];
      const wantBytes: number[] = [];
      for (let i = 0; i < n; i++) {
        const len = 1 + r(READ_BATCH_BYTES_MAX);
        const off = r(64);
        const f = r(fds.length);
        const pos = r(FILE_BYTES + 2048);
        const buf = Buffer.alloc(off + len + r(64), 0x5a);
        bufs.push(buf);
        spec.set([fds[f]!, off, len, pos], i * 4);
        const expected = Buffer.from(buf);
        wantBytes.push(fs.readSync(fds[f]!, expected, off, len, pos));
        want.push(expected);
        results[i] = -1e9;
      }
      expect(fn(bufs, spec, results), `round ${round}`).toBe(0);
      for (let i = 0; i < n; i++) {
        expect(results[i], `round ${round} read ${i}`).toBe(wantBytes[i]);
        expect(bufs[i]!.equals(want[i]!), `round ${round} read ${i}`).toBe(true);
      }
    }
  });
});

describe('ReadBatcher', () => {
  it('makes the reads asked for in one run of microtasks with one call, each with the right bytes', async () => {
    const b = new ReadBatcher(batchFn());
    const bufs = Array.from({ length: 10 }, () => Buffer.alloc(4096));
    await Promise.all(bufs.map((buf, i) => b.read(fds[i % fds.length]!, buf, 0, 4096, 4096 * (i + 1))));
    expect(b.batches).toBe(1);
    expect(b.batchedReads).toBe(10);
    bufs.forEach((buf, i) => expect(buf.equals(contents[i % fds.length]!.subarray(4096 * (i + 1), 4096 * (i + 2)))).toBe(true));
  });

  it('starts a new batch when one is full (64 reads)', async () => {
    const b = new ReadBatcher(batchFn());
    const bufs = Array.from({ length: READ_BATCH_MAX + 6 }, () => Buffer.alloc(512));
    await Promise.all(bufs.map((buf, i) => b.read(fds[0]!, buf, 0, 512, 512 * i)));
    expect([b.batches, b.batchedReads]).toEqual([2, READ_BATCH_MAX + 6]);
    bufs.forEach((buf, i) => expect(buf.equals(contents[0]!.subarray(512 * i, 512 * (i + 1)))).toBe(true));
  });

  it('makes a read the ring did not serve whole again through the pool: zeroes past the end, the error of a bad descriptor', async () => {
    const b = new ReadBatcher(batchFn());
    const closed = fs.openSync(path.join(dir, 'f0'), 'r');
    fs.closeSync(closed);
    const tail = Buffer.alloc(4096, 0xff);
    const whole = Buffer.alloc(4096);
    const [t, w, bad] = await Promise.allSettled([b.read(fds[3]!, tail, 0, 4096, FILE_BYTES - 96), b.read(fds[3]!, whole, 0, 4096, 0), b.read(closed, Buffer.alloc(4096), 0, 4096, 0)]);
    expect(t.status).toBe('fulfilled');
    expect(w.status).toBe('fulfilled');
    expect(bad.status === 'rejected' && (bad.reason as NodeJS.ErrnoException).code).toBe('EBADF');
    expect(tail.subarray(0, 96).equals(contents[3]!.subarray(FILE_BYTES - 96))).toBe(true);
    expect(tail.subarray(96).every((x) => x === 0)).toBe(true);
    expect(whole.equals(contents[3]!.subarray(0, 4096))).toBe(true);
    expect(b.batches).toBe(1);
  });

  it('reads larger than 64 KiB go the ordinary way, not in a batch', async () => {
    const b = new ReadBatcher(batchFn());
    const big = Buffer.alloc(READ_BATCH_BYTES_MAX + 4096);
    const pending = b.read(fds[4]!, big, 0, big.length, 0);
    if (pending !== null) await pending;
    expect(big.equals(contents[4]!.subarray(0, big.length))).toBe(true);
    expect(b.batches).toBe(0);
  });

  it('reads one by one, for good, once the kernel refuses the ring (io_uring disabled or filtered)', async () => {
    let calls = 0;
    const refusing = (): number => {
      calls++;
      return -(os.constants.errno.ENOSYS as number);
    };
    // Three reads in one run of microtasks: a batch (one alone would not try the ring).
    const refusals: number[] = [];
    const b = new ReadBatcher(refusing, (errno) => refusals.push(errno));
    const first = Array.from({ length: 3 }, () => Buffer.alloc(4096));
    await Promise.all(first.map((buf, i) => b.read(fds[5]!, buf, 0, 4096, 4096 * i)));
    expect(b.batching).toBe(false);
    const later = Buffer.alloc(4096);
    const pending = b.read(fds[5]!, later, 0, 4096, 8192);
    if (pending !== null) await pending;
    expect(calls).toBe(1);
    expect(refusals).toEqual([os.constants.errno.ENOSYS]);
    first.forEach((buf, i) => expect(buf.equals(contents[5]!.subarray(4096 * i, 4096 * (i + 1)))).toBe(true));
    expect(later.equals(contents[5]!.subarray(8192, 12288))).toBe(true);
  });

  it('makes a read that is alone in its run of microtasks the ordinary way (one preadv2 costs less than a submission)', async () => {
    let calls = 0;
    const fn = batchFn();
    const b = new ReadBatcher((bufs, spec, results) => {
      calls++;
      return fn(bufs, spec, results);
    });
    const buf = Buffer.alloc(4096);
    await b.read(fds[7]!, buf, 0, 4096, 4096 * 3);
    expect(buf.equals(contents[7]!.subarray(4096 * 3, 4096 * 4))).toBe(true);
    expect([calls, b.batches, b.batching]).toEqual([0, 0, true]);
  });

  it('works without the addon: every read the ordinary way', async () => {
    const b = new ReadBatcher(null);
    expect(b.batching).toBe(false);
    const buf = Buffer.alloc(4096);
    const pending = b.read(fds[6]!, buf, 0, 4096, 4096);
    if (pending !== null) await pending;
    expect(buf.equals(contents[6]!.subarray(4096, 8192))).toBe(true);
  });
});
