import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { encodeFences, FileFencePersistence, MemoryFencePersistence } from '../../src/store/fence-file.js';
import { SeededRandom } from '../../src/util/random.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-fences-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

const table = (...pairs: [number, number][]) => new Map<number, number>(pairs);

describe('FileFencePersistence', () => {
  it('loads an empty table when nothing was ever saved', async () => {
    expect(await new FileFencePersistence(dir).load()).toEqual(new Map());
  });

  it('round-trips the whole table through a new instance (a restart), ordered by volume id', async () => {
    const p = new FileFencePersistence(path.join(dir, 'store'));
    await p.save(table([7, 3], [1, 2 ** 21 - 1], [4, 0]));
    expect(await new FileFencePersistence(path.join(dir, 'store')).load()).toEqual(table([1, 2 ** 21 - 1], [4, 0], [7, 3]));
    expect(JSON.parse(await readFile(path.join(dir, 'store', 'fences.json'), 'utf8'))).toEqual({ schema: 1, fences: [[1, 2 ** 21 - 1], [4, 0], [7, 3]] });
    await p.save(table([1, 5]));
    expect(await p.load()).toEqual(table([1, 5]));
    expect(await readdir(path.join(dir, 'store'))).toEqual(['fences.json']);
  });

  it('concurrent saves land in call order and all resolve', async () => {
    const p = new FileFencePersistence(dir);
    await Promise.all([p.save(table([1, 1])), p.save(table([1, 2])), p.save(table([1, 3], [2, 1]))]);
    expect(await p.load()).toEqual(table([1, 3], [2, 1]));
  });

  it('a crash between writing the temp file and the rename leaves the old table, whatever the temp file holds', async () => {
    const p = new FileFencePersistence(dir);
    await p.save(table([1, 4]));
    // The new table written but not renamed; then a torn one.
    for (const leftover of [encodeFences(table([1, 9])), '{"schema":1,"fen', '\0\0\0\0']) {
      await writeFile(path.join(dir, 'fences.json.tmp'), leftover);
      expect(await new FileFencePersistence(dir).load()).toEqual(table([1, 4]));
    }
    // The next save replaces the leftover.
    const again = new FileFencePersistence(dir);
    await again.save(table([1, 5]));
    expect(await again.load()).toEqual(table([1, 5]));
    expect(await readdir(dir)).toEqual(['fences.json']);
  });

  it('a crash before the first rename leaves no table: nothing was promised', async () => {
    await writeFile(path.join(dir, 'fences.json.tmp'), encodeFences(table([1, 9])));
    expect(await new FileFencePersistence(dir).load()).toEqual(new Map());
  });

  it('refuses a damaged table with TORUS_ERR_STORE_CORRUPT rather than forget tokens', async () => {
    const cases = [
      '{"schema":1,"fences":[[1,',
      '',
      '[]',
      '{"schema":2,"fences":[]}',
      '{"schema":1,"fences":[[0,1]]}',
      '{"schema":1,"fences":[[1,-1]]}',
      '{"schema":1,"fences":[[1,2097152]]}',
      '{"schema":1,"fences":[[1,1.5]]}',
      '{"schema":1,"fences":[[1,1],[1,2]]}',
      '{"schema":1,"fences":[[1]]}',
    ];
    for (const text of cases) {
      await writeFile(path.join(dir, 'fences.json'), text);
      expect(await codeOf(new FileFencePersistence(dir).load()), text).toBe('TORUS_ERR_STORE_CORRUPT');
    }
  });

  it('asserts what it is asked to save: ids are positive u32, tokens within 0..TOKEN_MAX', async () => {
    const p = new FileFencePersistence(dir);
    expect(() => p.save(table([0, 1]))).toThrow(/assertion failed/);
    expect(() => p.save(table([1, 2 ** 21]))).toThrow(/assertion failed/);
  });

  it('reports a save that cannot reach the disk with TORUS_ERR_STORE_IO', async () => {
    await writeFile(path.join(dir, 'blocker'), 'a file where the folder should be');
    const p = new FileFencePersistence(path.join(dir, 'blocker'));
    expect(await codeOf(p.save(table([1, 1])))).toBe('TORUS_ERR_STORE_IO');
  });
});

describe('MemoryFencePersistence', () => {
  it('round-trips and copies: later changes to the saved map do not leak in', async () => {
    const p = new MemoryFencePersistence();
    expect(await p.load()).toEqual(new Map());
    const t = table([1, 2]);
    await p.save(t);
    t.set(1, 99);
    expect(await p.load()).toEqual(table([1, 2]));
    expect(p.durable()).toEqual(table([1, 2]));
  });

  it('a held save is not durable until it resolves; a crash keeps a seeded prefix of the saves in flight, never resolving them', async () => {
    const seen = new Set<string>();
    for (let seed = 1; seed <= 30; seed++) {
      const p = new MemoryFencePersistence();
      await p.save(table([1, 1]));
      p.hold();
      let resolved = 0;
      void p.save(table([1, 2])).then(() => resolved++);
      void p.save(table([1, 3])).then(() => resolved++);
      expect(p.pendingSaves()).toBe(2);
      expect(p.durable()).toEqual(table([1, 1]));
      p.crash(new SeededRandom(seed));
      await Promise.resolve();
      expect(resolved).toBe(0);
      const after = (await p.load()).get(1)!;
      expect([1, 2, 3]).toContain(after);
      seen.add(String(after));
    }
    expect([...seen].sort()).toEqual(['1', '2', '3']);
  });

  it('release() completes held saves in order', async () => {
    const p = new MemoryFencePersistence();
    p.hold();
    const order: number[] = [];
    const a = p.save(table([1, 2])).then(() => order.push(2));
    const b = p.save(table([1, 3])).then(() => order.push(3));
    p.release();
    await Promise.all([a, b]);
    expect(order).toEqual([2, 3]);
    expect(await p.load()).toEqual(table([1, 3]));
    await p.save(table([1, 4]));
    expect(p.durable()).toEqual(table([1, 4]));
  });

  it('a failing disk rejects saves with TORUS_ERR_STORE_IO and changes nothing; a corrupt table fails loads until a save', async () => {
    const p = new MemoryFencePersistence();
    await p.save(table([1, 1]));
    p.setFailing(true);
    expect(await codeOf(p.save(table([1, 2])))).toBe('TORUS_ERR_STORE_IO');
    expect(await p.load()).toEqual(table([1, 1]));
    p.setFailing(false);
    p.corrupt();
    expect(await codeOf(p.load())).toBe('TORUS_ERR_STORE_CORRUPT');
    await p.save(table([1, 3]));
    expect(await p.load()).toEqual(table([1, 3]));
  });
});
