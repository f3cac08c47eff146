import { describe, expect, it } from 'vitest';
import { BufferPool, isPooled, poisonFromEnv, releaseBuffer, retainBuffer } from '../../src/util/buffer-pool.js';

describe('buffer pool', () => {
  it('hands out views of exactly the length asked, on power-of-two classes, and reuses released buffers', () => {
    const pool = new BufferPool({ classMinBytes: 4096, classMaxBytes: 1 << 20, poison: false });
    const a = pool.acquire(5000);
    expect(a.length).toBe(5000);
    expect(a.buffer.byteLength).toBe(8192);
    expect(isPooled(a)).toBe(true);
    releaseBuffer(a);
    expect(isPooled(a)).toBe(false);
    const b = pool.acquire(8192);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.stats()).toMatchObject({ allocations: 1, reuses: 1, inUseBytes: 8192, freeBytes: 0 });
    releaseBuffer(b);
    expect(pool.stats()).toMatchObject({ inUseBytes: 0, freeBytes: 8192 });
  });

  it('returns a buffer only when the last reference is dropped, from any view of it', () => {
    const pool = new BufferPool({ poison: false });
    const a = pool.acquire(4096);
    retainBuffer(a.subarray(100, 200));
    releaseBuffer(a);
    expect(pool.stats().inUseBytes).toBe(4096);
    releaseBuffer(a.subarray(0, 10));
    expect(pool.stats().inUseBytes).toBe(0);
  });

  it('asserts on a release without a reference', () => {
    const pool = new BufferPool({ poison: false });
    const a = pool.acquire(4096);
    releaseBuffer(a);
    expect(() => releaseBuffer(a)).toThrow(/assertion failed/);
    expect(() => retainBuffer(a)).toThrow(/assertion failed/);
  });

  it('ignores buffers that did not come from a pool, and large ones', () => {
    const pool = new BufferPool({ classMaxBytes: 65536, poison: false });
    const plain = Buffer.alloc(4096);
    retainBuffer(plain);
    releaseBuffer(plain);
    const big = pool.acquire(65537);
    expect(big.length).toBe(65537);
    expect(isPooled(big)).toBe(false);
    releaseBuffer(big);
    expect(pool.stats().inUseBytes).toBe(0);
  });

  it('keeps at most freeBytesMax on its free lists', () => {
    const pool = new BufferPool({ freeBytesMax: 8192, poison: false });
    const bufs = [pool.acquire(4096), pool.acquire(4096), pool.acquire(4096)];
    for (const b of bufs) releaseBuffer(b);
    expect(pool.stats().freeBytes).toBe(8192);
    // The one beyond the bound is forgotten: releasing a view of it again is a no-op.
    expect(isPooled(bufs[2]!)).toBe(false);
  });

  it('poisons released buffers and crashes when one was written after release', () => {
    const pool = new BufferPool({ poison: true });
    const a = pool.acquire(4096);
    a.fill(7);
    releaseBuffer(a);
    expect(a.every((x) => x === 0xdb)).toBe(true);
    a[123] = 1; // a write after release
    expect(() => pool.acquire(4096)).toThrow(/assertion failed/);
  });

  it('reads the poison switch from TORUS_POOL_POISON', () => {
    expect(poisonFromEnv({ TORUS_POOL_POISON: '1' })).toBe(true);
    expect(poisonFromEnv({})).toBe(false);
  });
});
