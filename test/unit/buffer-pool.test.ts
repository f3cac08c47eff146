import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/util/native.js';
import { BUFFER_ALIGN_BYTES, BufferPool, isPooled, poisonFromEnv, releaseBuffer, retainBuffer } from '../../src/util/buffer-pool.js';

describe('buffer pool', () => {
  it('hands out views of exactly the length asked, on power-of-two classes, and reuses released buffers', () => {
    const pool = new BufferPool({ classMinBytes: 4096, classMaxBytes: 1 << 20, poison: false, addressModulo: null });
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

  it('starts every pooled buffer on a 64-byte boundary, as the native addon sees it', () => {
    const addressModulo = nativeAddon?.addressModulo;
    if (addressModulo === undefined) throw new Error('the native addon is not built (or lacks addressModulo): run `npm run build`');
    const pool = new BufferPool({ classMinBytes: 4096, classMaxBytes: 4 << 20, poison: false });
    const held: Buffer[] = [];
    for (let size = 4096; size <= 4 << 20; size *= 2) {
      for (const length of [size, size - 100]) {
        const b = pool.acquire(length);
        expect(b.length).toBe(length);
        expect(addressModulo(b, BUFFER_ALIGN_BYTES)).toBe(0);
        // The class's bytes all fit after the skip: a write to its last byte stays in the buffer.
        expect(b.byteOffset + size).toBeLessThanOrEqual(b.buffer.byteLength);
        held.push(b);
      }
    }
    // Larger than the largest class: not pooled, placed the same way.
    const big = pool.acquire((4 << 20) + 1);
    expect(isPooled(big)).toBe(false);
    expect(addressModulo(big, BUFFER_ALIGN_BYTES)).toBe(0);
    // Reused ones keep their place.
    for (const b of held) releaseBuffer(b);
    const again = pool.acquire(1 << 20);
    expect(pool.stats().reuses).toBe(1);
    expect(addressModulo(again, BUFFER_ALIGN_BYTES)).toBe(0);
  });

  it('native addressModulo: counts the offset of a view and refuses a modulus that is not a power of two up to 64 KiB', () => {
    const addressModulo = nativeAddon?.addressModulo;
    if (addressModulo === undefined) throw new Error('the native addon is not built (or lacks addressModulo): run `npm run build`');
    const b = Buffer.allocUnsafeSlow(8192);
    const base = addressModulo(b, 4096);
    expect(addressModulo(b.subarray(5), 4096)).toBe((base + 5) % 4096);
    expect(addressModulo(b.subarray(4096 - base), 4096)).toBe(0);
    // Any view of the memory, not only bytes: the addon reads its address.
    expect(addressModulo(new Uint32Array(b.buffer, b.byteOffset + 8, 2) as unknown as Uint8Array, 8)).toBe((base + 8) % 8);
    for (const m of [0, 3, -64, 131072]) expect(() => addressModulo(b, m)).toThrow(/power of two/);
    expect(() => (addressModulo as (d: unknown, m: unknown) => number)('x', 64)).toThrow(/addressModulo/);
  });

  it('skips what the address function says, and nothing without one', () => {
    const seen: number[] = [];
    const at16 = new BufferPool({ poison: false, addressModulo: (_data, m) => (seen.push(m), 16) });
    const a = at16.acquire(4096);
    expect(seen).toEqual([BUFFER_ALIGN_BYTES]);
    expect(a.byteOffset).toBe(BUFFER_ALIGN_BYTES - 16);
    expect(a.buffer.byteLength).toBe(4096 + BUFFER_ALIGN_BYTES);
    const at0 = new BufferPool({ poison: false, addressModulo: () => 0 });
    expect(at0.acquire(4096).byteOffset).toBe(0);
    const none = new BufferPool({ poison: false, addressModulo: null });
    const c = none.acquire(4096);
    expect([c.byteOffset, c.buffer.byteLength]).toEqual([0, 4096]);
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
