import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import type { VolumeRecord } from '../../src/model/records.js';
import { readOnlyIo, Volume, type BlockIo } from '../../src/volume/volume.js';

const log = pino({ level: 'silent' });
const BS = 64 * 1024;
const record: VolumeRecord = { schema: 1, id: 9, name: 'v', type: 'block', size: 10 * BS + 512, blockSize: BS, generation: 1, createdAt: '' };

/** Block I/O over a map of whole blocks, recording what the volume asked. */
function memoryIo(): BlockIo & { calls: string[]; blocks: Map<number, Buffer> } {
  const blocks = new Map<number, Buffer>();
  const calls: string[] = [];
  const block = (i: number) => {
    let b = blocks.get(i);
    if (b === undefined) blocks.set(i, (b = Buffer.alloc(BS)));
    return b;
  };
  return {
    calls,
    blocks,
    async read(i, o, l) {
      calls.push(`read ${i} ${o} ${l}`);
      return Buffer.from((blocks.get(i) ?? Buffer.alloc(BS)).subarray(o, o + l));
    },
    async write(i, o, d, fua) {
      calls.push(`write ${i} ${o} ${d.length}${fua ? ' fua' : ''}`);
      d.copy(block(i), o);
    },
    async zero(i, o, l, z) {
      calls.push(`zero ${i} ${o} ${l}${z.punch ? ' punch' : ''}`);
      if (z.punch && o === 0 && l === BS) blocks.delete(i);
      else block(i).fill(0, o, o + l);
    },
    async flush() {
      calls.push('flush');
    },
    async allocated(i) {
      return blocks.has(i);
    },
  };
}

describe('Volume', () => {
  it('splits I/O at block boundaries', async () => {
    const io = memoryIo();
    const v = new Volume(record, io, log);
    const data = Buffer.from(Uint8Array.from({ length: 3 * BS }, (_, i) => i % 251));
    await v.write(BS - 100, data, true);
    expect(io.calls).toEqual([`write 0 ${BS - 100} 100 fua`, `write 1 0 ${BS} fua`, `write 2 0 ${BS} fua`, `write 3 0 ${BS - 100} fua`]);
    expect((await v.read(BS - 100, data.length)).equals(data)).toBe(true);
  });

  it('refuses ranges beyond the end with TORUS_ERR_IO_OUT_OF_RANGE, touching nothing', async () => {
    const io = memoryIo();
    const v = new Volume(record, io, log);
    for (const p of [v.read(record.size - 10, 11), v.write(record.size, Buffer.alloc(1), false), v.zero(record.size - 1, 2, { punch: true, fua: false })]) {
      const err = await p.catch((e: unknown) => e);
      expect(isTorusError(err, 'TORUS_ERR_IO_OUT_OF_RANGE')).toBe(true);
    }
    expect(io.calls).toEqual([]);
    // The last, partial block is usable.
    await v.write(record.size - 512, Buffer.alloc(512, 7), false);
    expect((await v.read(record.size - 512, 512)).equals(Buffer.alloc(512, 7))).toBe(true);
  });

  it('reports holes and data as merged base:allocation extents, and trims whole blocks to holes', async () => {
    const v = new Volume(record, memoryIo(), log);
    await v.write(2 * BS + 5, Buffer.alloc(2 * BS, 1), false);
    expect(await v.blockStatus(0, 6 * BS)).toEqual([
      { length: 2 * BS, flags: 3 },
      { length: 3 * BS, flags: 0 },
      { length: BS, flags: 3 },
    ]);
    await v.zero(3 * BS, BS, { punch: true, fua: false });
    expect(await v.blockStatus(2 * BS, 3 * BS)).toEqual([
      { length: BS, flags: 0 },
      { length: BS, flags: 3 },
      { length: BS, flags: 0 },
    ]);
  });

  it('hands a request within one block to that block as it is, and acknowledges the version its change made', async () => {
    const io = memoryIo();
    const inner = { write: io.write, zero: io.zero };
    io.write = async (i, o, d, fua) => {
      await inner.write(i, o, d, fua);
      return 40 + i;
    };
    io.zero = async (i, o, l, z) => {
      await inner.zero(i, o, l, z);
      return i === 6 ? undefined : 50 + i;
    };
    const acked: unknown[] = [];
    io.acknowledged = (c) => acked.push(c);
    const v = new Volume(record, io, log);
    const data = Buffer.alloc(4096, 3);
    await v.write(5 * BS + 8192, data, false);
    await v.write(4 * BS, Buffer.alloc(BS, 4), true);
    await v.zero(6 * BS + 10, 20, { punch: true, fua: false });
    await v.zero(7 * BS, BS, { punch: true, fua: false });
    expect((await v.read(5 * BS + 8192, 4096)).equals(data)).toBe(true);
    expect(await v.read(5 * BS, 0)).toHaveLength(0);
    expect(io.calls).toEqual([`write 5 8192 4096`, `write 4 0 ${BS} fua`, `zero 6 10 20 punch`, `zero 7 0 ${BS} punch`, `read 5 8192 4096`]);
    // A change that made no version (block 6) is not acknowledged.
    expect(acked).toEqual([[[5, 45]], [[4, 44]], [[7, 57]]]);
    // A failed one-block change is not acknowledged either.
    io.write = async () => {
      throw new Error('refused');
    };
    await expect(v.write(0, data, false)).rejects.toThrow('refused');
    expect(acked).toHaveLength(3);
  });

  it('passes flush through', async () => {
    const io = memoryIo();
    await new Volume(record, io, log).flush();
    expect(io.calls).toEqual(['flush']);
  });

  it('read-only I/O refuses every change with TORUS_ERR_VOLUME_READ_ONLY and still reads', async () => {
    const inner = memoryIo();
    await inner.write(0, 0, Buffer.from('hello'), false);
    const v = new Volume(record, readOnlyIo(inner, 'v'), log);
    expect((await v.read(0, 5)).toString()).toBe('hello');
    for (const p of [v.write(0, Buffer.alloc(1), false), v.zero(0, BS, { punch: true, fua: false })]) {
      const err = await p.catch((e: unknown) => e);
      expect(isTorusError(err, 'TORUS_ERR_VOLUME_READ_ONLY')).toBe(true);
    }
    await v.flush();
  });

  it('answers a request that failed in one piece only once every other piece has settled (seed 2623)', async () => {
    const io = memoryIo();
    const events: string[] = [];
    let finishSlow!: () => void;
    const slow = new Promise<void>((resolve) => (finishSlow = resolve));
    const err = new Error('piece 0 failed');
    io.write = async (i) => {
      if (i === 0) throw err;
      await slow;
      events.push(`piece ${i} settled`);
      return 7;
    };
    const acked: unknown[] = [];
    io.acknowledged = (c) => acked.push(c);
    const v = new Volume(record, io, log);
    const done = v.write(0, Buffer.alloc(2 * BS, 1), false).then(
      () => events.push('answered ok'),
      (e: unknown) => events.push(e === err ? 'answered with the failure' : `answered with ${String(e)}`),
    );
    // The failed piece alone does not answer the request.
    for (let i = 0; i < 10; i++) await Promise.resolve();
    expect(events).toEqual([]);
    finishSlow();
    await done;
    expect(events).toEqual(['piece 1 settled', 'answered with the failure']);
    // Not acknowledged in any piece.
    expect(acked).toEqual([]);
  });
});
