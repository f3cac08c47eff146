import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef } from '../../src/model/block-ref.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';

const BS = 4096;
const W = { fua: false };

function store(blocks = 4): MemoryBlockStore {
  return new MemoryBlockStore({ blockSize: BS, capacity: blocks * BS });
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

describe('MemoryBlockStore', () => {
  it('reads zeroes from blocks never written and allocates nothing for them', async () => {
    const s = store();
    const ref = blockRef(1, 1, 7);
    expect(await s.read(ref, 0, BS)).toEqual(Buffer.alloc(BS));
    expect(await s.allocated([ref])).toEqual([false]);
    expect(s.usage()).toEqual({ capacity: 4 * BS, used: 0, blocks: 0 });
  });

  it('writes and reads back partial ranges', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    await s.write(ref, 100, Buffer.from('hello'), W);
    expect((await s.read(ref, 98, 9)).toString('latin1')).toBe('\0\0hello\0\0');
    expect(await s.allocated([ref, blockRef(1, 1, 1)])).toEqual([true, false]);
    expect(s.usage()).toEqual({ capacity: 4 * BS, used: BS, blocks: 1 });
  });

  it('does not alias the caller buffers', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    const data = Buffer.from('abcd');
    await s.write(ref, 0, data, W);
    data.fill(0);
    const got = await s.read(ref, 0, 4);
    expect(got.toString()).toBe('abcd');
    got.fill(0);
    expect((await s.read(ref, 0, 4)).toString()).toBe('abcd');
  });

  it('keeps generations and volumes apart', async () => {
    const s = store();
    await s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), W);
    await s.write(blockRef(1, 2, 0), 0, Buffer.from('b'), W);
    await s.write(blockRef(2, 1, 0), 0, Buffer.from('c'), W);
    expect((await s.read(blockRef(1, 1, 0), 0, 1)).toString()).toBe('a');
    expect((await s.read(blockRef(1, 2, 0), 0, 1)).toString()).toBe('b');
    expect((await s.read(blockRef(2, 1, 0), 0, 1)).toString()).toBe('c');
  });

  it('refuses a write that needs a block beyond capacity and changes nothing', async () => {
    const s = store(2);
    await s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), { fua: false, fence: 1 });
    await s.write(blockRef(1, 1, 1), 0, Buffer.from('b'), W);
    expect(await code(s.write(blockRef(1, 1, 2), 0, Buffer.from('c'), { fua: false, fence: 5 }))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(s.usage().blocks).toBe(2);
    expect(await s.allocated([blockRef(1, 1, 2)])).toEqual([false]);
    // The refused write did not advance the fence either.
    expect(s.fenceOf(1)).toBe(1);
    // Rewriting an allocated block still works when full.
    await s.write(blockRef(1, 1, 0), 1, Buffer.from('z'), W);
    expect((await s.read(blockRef(1, 1, 0), 0, 2)).toString()).toBe('az');
  });

  it('a capacity below one block holds nothing', async () => {
    const s = new MemoryBlockStore({ blockSize: BS, capacity: BS - 1 });
    expect(await code(s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
  });

  it('fences writers older than the newest token seen per volume', async () => {
    const s = store();
    const ref = blockRef(3, 1, 0);
    await s.write(ref, 0, Buffer.from('a'), { fua: false, fence: 5 });
    await s.write(ref, 0, Buffer.from('b'), { fua: false, fence: 5 });
    expect(await code(s.write(ref, 0, Buffer.from('x'), { fua: false, fence: 4 }))).toBe('TORUS_ERR_VOLUME_FENCED');
    expect(await code(s.zero(ref, 0, BS, { fua: false, punch: true, fence: 4 }))).toBe('TORUS_ERR_VOLUME_FENCED');
    expect((await s.read(ref, 0, 1)).toString()).toBe('b');
    await s.zero(ref, 0, 1, { fua: false, punch: false, fence: 6 });
    expect(s.fenceOf(3)).toBe(6);
    expect(await code(s.write(ref, 0, Buffer.from('x'), { fua: false, fence: 5 }))).toBe('TORUS_ERR_VOLUME_FENCED');
    // Another volume has its own token; writes without a token bypass fencing.
    await s.write(blockRef(4, 1, 0), 0, Buffer.from('y'), { fua: false, fence: 1 });
    await s.write(ref, 0, Buffer.from('n'), W);
    expect((await s.read(ref, 0, 1)).toString()).toBe('n');
  });

  it('zero with punch on a whole block frees it; partial zero keeps it', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    await s.write(ref, 0, Buffer.alloc(BS, 0xff), W);
    await s.zero(ref, 10, 20, { fua: false, punch: true });
    const got = await s.read(ref, 0, BS);
    expect(got.subarray(10, 30)).toEqual(Buffer.alloc(20));
    expect(got[9]).toBe(0xff);
    expect(got[30]).toBe(0xff);
    expect(s.usage().blocks).toBe(1);
    await s.zero(ref, 0, BS, { fua: false, punch: true });
    expect(s.usage().blocks).toBe(0);
    expect(await s.allocated([ref])).toEqual([false]);
    expect(await s.read(ref, 0, BS)).toEqual(Buffer.alloc(BS));
  });

  it('zero without punch keeps (or makes) the block allocated', async () => {
    const s = store(1);
    const ref = blockRef(1, 1, 0);
    await s.zero(ref, 0, BS, { fua: false, punch: false });
    expect(await s.allocated([ref])).toEqual([true]);
    expect(await s.read(ref, 0, BS)).toEqual(Buffer.alloc(BS));
    expect(await code(s.zero(blockRef(1, 1, 1), 0, BS, { fua: false, punch: false }))).toBe('TORUS_ERR_STORE_NO_SPACE');
    // Punching an unallocated block is a no-op, not a space error.
    await s.zero(blockRef(1, 1, 1), 0, 5, { fua: false, punch: true });
    expect(s.usage().blocks).toBe(1);
  });

  it('deleteVolume frees every generation of one volume only', async () => {
    const s = store();
    await s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), W);
    await s.write(blockRef(1, 2, 5), 0, Buffer.from('a'), W);
    await s.write(blockRef(2, 1, 0), 0, Buffer.from('b'), W);
    await s.deleteVolume(1);
    await s.deleteVolume(99);
    expect(await s.allocated([blockRef(1, 1, 0), blockRef(1, 2, 5), blockRef(2, 1, 0)])).toEqual([false, false, true]);
    expect(s.usage()).toEqual({ capacity: 4 * BS, used: BS, blocks: 1 });
  });

  it('asserts ranges: they are caller bugs', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    expect(await code(s.read(ref, BS - 1, 2))).toBe('TORUS_ERR_ASSERTION');
    expect(await code(s.read(ref, -1, 1))).toBe('TORUS_ERR_ASSERTION');
    expect(await code(s.write(ref, BS, Buffer.from('a'), W))).toBe('TORUS_ERR_ASSERTION');
    expect(await code(s.zero(ref, 1.5, 1, { fua: false, punch: false }))).toBe('TORUS_ERR_ASSERTION');
    expect(s.usage().blocks).toBe(0);
  });

  it('refuses everything once closed', async () => {
    const s = store();
    await s.close();
    expect(await code(s.read(blockRef(1, 1, 0), 0, 1))).toBe('TORUS_ERR_STORE_CLOSED');
    expect(await code(s.flush())).toBe('TORUS_ERR_STORE_CLOSED');
  });
});
