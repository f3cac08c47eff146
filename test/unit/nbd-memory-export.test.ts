import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import { STATE_HOLE, STATE_ZERO } from '../../src/nbd/protocol.js';

const HOLE = STATE_HOLE | STATE_ZERO;
const client = { remote: '127.0.0.1:1' };

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(isTorusError(err) ? err.code : err).toBe(code);
}

describe('MemoryExportProvider', () => {
  it('lists, describes and opens exports; the empty name maps to the default export', async () => {
    const p = new MemoryExportProvider(
      [
        { name: 'a', size: 1000, description: 'first' },
        { name: 'b', size: 2000, readOnly: true, multiConn: false },
      ],
      { defaultExport: 'a' },
    );
    expect(await p.list()).toEqual([
      { name: 'a', description: 'first' },
      { name: 'b', description: '' },
    ]);
    expect(await p.describe('b')).toEqual({ size: 2000, readOnly: true, multiConn: false, description: '' });
    const e = await p.open('', client);
    expect(e.name).toBe('a');
    expect(e.size).toBe(1000);
    expect(e.multiConn).toBe(true);
    await rejectsWith(p.open('nope', client), 'TORUS_ERR_NBD_EXPORT_UNKNOWN');
    await rejectsWith(p.describe('nope'), 'TORUS_ERR_NBD_EXPORT_UNKNOWN');
    expect(() => p.add({ name: 'a', size: 1 })).toThrow(/already exists/);
  });

  it('reads back what was written across chunk boundaries, zeroes elsewhere', async () => {
    const p = new MemoryExportProvider([{ name: 'd', size: 10_000, chunkBytes: 1024 }]);
    const e = await p.open('d', client);
    const data = Buffer.from(Array.from({ length: 3333 }, (_, i) => (i * 7) & 0xff));
    await e.write(1000, data, false);
    expect(await e.read(1000, 3333)).toEqual(data);
    expect((await e.read(0, 1000)).equals(Buffer.alloc(1000))).toBe(true);
    expect((await e.read(4333, 5667)).equals(Buffer.alloc(5667))).toBe(true);
    // the last chunk is shorter than chunkBytes
    await e.write(9990, Buffer.alloc(10, 0xee), true);
    expect(await e.read(9990, 10)).toEqual(Buffer.alloc(10, 0xee));
    expect(p.disk('d').stats).toMatchObject({ writes: 2, fuaWrites: 1, reads: 4 });
  });

  it('reports allocation as extents and makes holes on trim and zero', async () => {
    const p = new MemoryExportProvider([{ name: 'd', size: 8192, chunkBytes: 1024 }]);
    const e = await p.open('d', client);
    expect(await e.blockStatus(0, 8192)).toEqual([{ length: 8192, flags: HOLE }]);
    await e.write(1024, Buffer.alloc(2048, 1), false);
    expect(await e.blockStatus(0, 8192)).toEqual([
      { length: 1024, flags: HOLE },
      { length: 2048, flags: 0 },
      { length: 5120, flags: HOLE },
    ]);
    expect(await e.blockStatus(1500, 100)).toEqual([{ length: 100, flags: 0 }]);
    // partial-chunk zero keeps the chunk allocated but zeroes its bytes
    await e.writeZeroes(1024, 100, { noHole: false, fua: false });
    expect((await e.read(1024, 100)).equals(Buffer.alloc(100))).toBe(true);
    expect((await e.read(1124, 10)).equals(Buffer.alloc(10, 1))).toBe(true);
    // whole-chunk trim punches a hole
    await e.trim(2048, 1024, false);
    expect(await e.blockStatus(0, 8192)).toEqual([
      { length: 1024, flags: HOLE },
      { length: 1024, flags: 0 },
      { length: 6144, flags: HOLE },
    ]);
    // NO_HOLE zeroing allocates
    await e.writeZeroes(4096, 1024, { noHole: true, fua: false });
    expect((await e.blockStatus(4096, 1024))[0]!.flags).toBe(0);
    expect(p.disk('d').allocatedBytes).toBe(2048);
  });

  it('refuses out-of-range I/O and writes to read-only exports', async () => {
    const p = new MemoryExportProvider([
      { name: 'd', size: 100 },
      { name: 'ro', size: 100, readOnly: true },
    ]);
    const e = await p.open('d', client);
    await rejectsWith(e.read(50, 51), 'TORUS_ERR_IO_OUT_OF_RANGE');
    await rejectsWith(e.write(-1, Buffer.alloc(1), false), 'TORUS_ERR_IO_OUT_OF_RANGE');
    const ro = await p.open('ro', client);
    await rejectsWith(ro.write(0, Buffer.alloc(1), false), 'TORUS_ERR_VOLUME_READ_ONLY');
    await rejectsWith(ro.trim(0, 1, false), 'TORUS_ERR_VOLUME_READ_ONLY');
    await rejectsWith(ro.writeZeroes(0, 1, { noHole: false, fua: false }), 'TORUS_ERR_VOLUME_READ_ONLY');
    expect((await ro.read(0, 100)).length).toBe(100);
  });

  it('lets one connection at a time hold an exclusive export and names the holder', async () => {
    const p = new MemoryExportProvider([{ name: 'x', size: 100, exclusive: true }]);
    const first = await p.open('x', { remote: '10.1.1.1:5000' });
    const err = await p.open('x', { remote: '10.1.1.2:6000' }).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_VOLUME_IN_USE')).toBe(true);
    expect((err as Error).message).toContain('10.1.1.1:5000');
    await first.release();
    await first.release(); // idempotent
    expect(p.opens).toBe(1);
    expect(p.releases).toBe(1);
    const second = await p.open('x', { remote: '10.1.1.2:6000' });
    expect(p.disk('x').holder).toBe('10.1.1.2:6000');
    await second.release();
    expect(p.disk('x').openCount).toBe(0);
  });

  it('runs the interceptor before each operation, which can delay or fail it', async () => {
    const p = new MemoryExportProvider([{ name: 'd', size: 100 }]);
    const seen: string[] = [];
    p.disk('d').interceptor = (op, offset, length) => {
      seen.push(`${op}:${offset}:${length}`);
      if (op === 'flush') throw new Error('flush failed');
    };
    const e = await p.open('d', client);
    await e.write(1, Buffer.alloc(2), false);
    await e.cache(0, 10);
    await expect(e.flush()).rejects.toThrow('flush failed');
    expect(seen).toEqual(['write:1:2', 'cache:0:10', 'flush:0:0']);
  });

  it('peek and poke bypass hooks for test setup', () => {
    const p = new MemoryExportProvider([{ name: 'd', size: 100, readOnly: true }]);
    const d = p.disk('d');
    d.poke(10, Buffer.from('hello'));
    expect(d.peek(10, 5).toString()).toBe('hello');
    expect(d.stats.reads).toBe(0);
  });
});
