import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef } from '../../src/model/block-ref.js';
import { makeVersion, VERSION_ABSENT, VERSION_LEGACY } from '../../src/model/version.js';
import { tableDigest } from '../../src/store/block-file.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { crc32c } from '../../src/util/crc32c.js';
import { SeededRandom } from '../../src/util/random.js';
import { digestOfBytes, localStoreContract } from '../helpers/local-store-contract.js';

const BS = 16 * 1024;
const W = { fua: false };
const v = (seq: number) => makeVersion(1, seq);

function store(blocks = 8, extra: { checkpointOnFlush?: boolean } = {}): MemoryBlockStore {
  return new MemoryBlockStore({ blockSize: BS, capacity: blocks * BS, ...extra });
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

/** The digest as block-meta.ts defines it, computed from the bytes. */
function digestOf(data: Buffer): number {
  const t = new Uint32Array(data.length / 4096);
  for (let p = 0; p < t.length; p++) t[p] = crc32c(data.subarray(p * 4096, (p + 1) * 4096));
  const be = Buffer.alloc(t.length * 4);
  t.forEach((c, i) => be.writeUInt32BE(c, i * 4));
  return crc32c(be);
}

describe('MemoryBlockStore', () => {
  it('asserts a block size of whole pages', () => {
    expect(() => new MemoryBlockStore({ blockSize: 512, capacity: 4096 })).toThrow(/multiple of 4 KiB/);
  });

  it('computes the digest over the big-endian page CRC table', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    const data = Buffer.alloc(BS);
    for (let i = 0; i < BS; i++) data[i] = (i * 7) & 0xff;
    await s.write(ref, 0, data, v(1), W);
    expect(s.meta(ref).digest).toBe(digestOf(data));
    const t = new Uint32Array(BS / 4096);
    for (let p = 0; p < t.length; p++) t[p] = crc32c(data.subarray(p * 4096, (p + 1) * 4096));
    expect(tableDigest(t)).toBe(digestOf(data));
    // Partial writes keep the digest in step with the bytes.
    await s.write(ref, 5000, Buffer.from('abc'), v(2), W);
    data.write('abc', 5000);
    expect(s.meta(ref).digest).toBe(digestOf(data));
  });

  it('does not alias the caller buffers', async () => {
    const s = store();
    const ref = blockRef(1, 1, 0);
    const data = Buffer.from('abcd');
    await s.write(ref, 0, data, v(1), W);
    data.fill(0);
    const got = await s.read(ref, 0, 4);
    expect(got.toString()).toBe('abcd');
    got.fill(0);
    expect((await s.read(ref, 0, 4)).toString()).toBe('abcd');
    const whole = Buffer.alloc(BS, 9);
    await s.install(ref, whole, v(2), W);
    whole.fill(1);
    expect((await s.read(ref, 0, 1))[0]).toBe(9);
  });

  it('setCapacity fills the store up and makes room again', async () => {
    const s = store(8);
    await s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), v(1), W);
    s.setCapacity(BS);
    expect(await code(s.write(blockRef(1, 1, 1), 0, Buffer.from('b'), v(1), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(await code(s.install(blockRef(1, 1, 1), Buffer.alloc(BS), v(1), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(s.meta(blockRef(1, 1, 1)).state).toBe('absent');
    expect(s.list({ limit: 10 }).length).toBe(1);
    // A tombstone needs no room.
    await s.zero(blockRef(1, 1, 2), 0, BS, v(1), { punch: true, fua: false });
    expect(s.meta(blockRef(1, 1, 2))).toMatchObject({ state: 'zero', version: v(1) });
    s.setCapacity(2 * BS);
    await s.write(blockRef(1, 1, 1), 0, Buffer.from('b'), v(1), W);
    expect(s.usage()).toEqual({ capacity: 2 * BS, used: 2 * BS, blocks: 2 });
  });

  describe('crash', () => {
    it('keeps flushed and fua blocks exactly, and leaves unchanged blocks alone', async () => {
      const s = store();
      const a = blockRef(1, 1, 0);
      const b = blockRef(1, 1, 1);
      const c = blockRef(1, 1, 2);
      await s.write(a, 0, Buffer.alloc(BS, 1), v(1), W);
      await s.zero(c, 0, BS, v(1), { punch: true, fua: false });
      await s.flush();
      await s.write(b, 0, Buffer.alloc(BS, 2), v(1), { fua: true });
      const outcomes = s.crash(new SeededRandom(1));
      expect(outcomes.size).toBe(0);
      expect(s.suspects()).toEqual([]);
      expect(s.meta(a)).toMatchObject({ state: 'data', version: v(1), suspect: false });
      expect(s.meta(b)).toMatchObject({ state: 'data', version: v(1), suspect: false });
      expect(s.meta(c)).toMatchObject({ state: 'zero', version: v(1), suspect: false });
      expect((await s.read(b, 0, BS)).equals(Buffer.alloc(BS, 2))).toBe(true);
    });

    it('brings back each unflushed block as durable, visible or torn content, at its durable version, suspect', async () => {
      const seen = new Set<string>();
      for (let seed = 1; seed <= 30; seed++) {
        const s = store();
        const ref = blockRef(2, 1, 0);
        const old = Buffer.alloc(BS, 0x11);
        const neu = Buffer.alloc(BS, 0x22);
        await s.write(ref, 0, old, v(1), W);
        await s.flush();
        await s.write(ref, 0, neu, v(2), W);
        const outcome = s.crash(new SeededRandom(seed)).get('2-1-0');
        expect(outcome).toBeDefined();
        seen.add(outcome!);
        const meta = s.meta(ref);
        expect(meta).toMatchObject({ state: 'data', version: v(1), suspect: true });
        expect(s.suspects()).toEqual([ref]);
        // Whatever came back reads without CRC errors (the repair), page by page from one side.
        const got = await s.read(ref, 0, BS);
        expect(meta.digest).toBe(digestOf(got));
        for (let p = 0; p < BS / 4096; p++) {
          const page = got.subarray(p * 4096, (p + 1) * 4096);
          expect(page.equals(old.subarray(0, 4096)) || page.equals(neu.subarray(0, 4096))).toBe(true);
        }
        if (outcome === 'durable') expect(got.equals(old)).toBe(true);
        if (outcome === 'visible') expect(got.equals(neu)).toBe(true);
      }
      expect([...seen].sort()).toEqual(['durable', 'torn', 'visible']);
    });

    it('replays exactly from a seed', async () => {
      const run = async (seed: number) => {
        const s = store(64);
        for (let i = 0; i < 20; i++) await s.write(blockRef(3, 1, i), 0, Buffer.alloc(BS, i + 1), v(1), W);
        await s.flush();
        for (let i = 0; i < 20; i++) await s.write(blockRef(3, 1, i), 4096, Buffer.alloc(8192, 0xf0), v(2), W);
        const outcomes = [...s.crash(new SeededRandom(seed))];
        const digests = s.list({ limit: 100 }).map((b) => b.digest);
        return JSON.stringify({ outcomes, digests });
      };
      expect(await run(7)).toBe(await run(7));
      expect(await run(7)).not.toBe(await run(8));
    });

    it('a block created since the last flush comes back absent or as data at VERSION_LEGACY, suspect either way', async () => {
      const states = new Set<string>();
      for (let seed = 1; seed <= 20; seed++) {
        const s = store();
        const ref = blockRef(4, 1, 3);
        await s.write(ref, 0, Buffer.alloc(BS, 5), v(1), W);
        s.crash(new SeededRandom(seed));
        const m = s.meta(ref);
        states.add(m.state);
        expect(m.suspect).toBe(true);
        expect(m.version).toBe(m.state === 'absent' ? VERSION_ABSENT : VERSION_LEGACY);
        expect(s.list({ limit: 10 }).map((b) => b.ref)).toEqual([ref]);
        expect(s.usage().blocks).toBe(m.state === 'data' ? 1 : 0);
        // drop() forgets an absent suspect block.
        await s.drop(ref);
        expect(s.meta(ref)).toEqual({ state: 'absent', version: VERSION_ABSENT, suspect: false, digest: 0 });
        expect(s.list({ limit: 10 })).toEqual([]);
      }
      expect([...states].sort()).toEqual(['absent', 'data']);
    });

    it('an unflushed drop or tombstone may come undone, suspect', async () => {
      const outcomes = new Set<string>();
      for (let seed = 1; seed <= 20; seed++) {
        const s = store();
        const a = blockRef(5, 1, 0);
        const b = blockRef(5, 1, 1);
        await s.write(a, 0, Buffer.alloc(BS, 1), v(1), W);
        await s.write(b, 0, Buffer.alloc(BS, 2), v(1), W);
        await s.flush();
        await s.drop(a);
        await s.zero(b, 0, BS, v(2), { punch: true, fua: false });
        s.crash(new SeededRandom(seed));
        const ma = s.meta(a);
        const mb = s.meta(b);
        outcomes.add(`${ma.state}/${mb.state}`);
        expect(ma.suspect && mb.suspect).toBe(true);
        expect(ma.version).toBe(ma.state === 'absent' ? VERSION_ABSENT : v(1));
        expect(mb.version).toBe(v(1));
      }
      expect(outcomes.size).toBeGreaterThan(2);
    });

    it('with checkpointOnFlush false, flushed blocks come back intact but suspect until a checkpoint', async () => {
      const s = store(8, { checkpointOnFlush: false });
      const ref = blockRef(6, 1, 0);
      await s.write(ref, 0, Buffer.alloc(BS, 3), v(1), W);
      await s.flush();
      expect(s.crash(new SeededRandom(1)).size).toBe(0);
      expect(s.meta(ref)).toMatchObject({ state: 'data', version: v(1), suspect: true });
      expect((await s.read(ref, 0, BS)).equals(Buffer.alloc(BS, 3))).toBe(true);
      await s.confirm(ref, v(1));
      await s.checkpoint();
      s.crash(new SeededRandom(2));
      expect(s.meta(ref).suspect).toBe(false);
    });

    it('a confirm that was not made durable is undone: suspect again', async () => {
      const s = store();
      const ref = blockRef(7, 1, 0);
      await s.write(ref, 0, Buffer.alloc(BS, 3), v(1), W);
      s.crash(new SeededRandom(3));
      const m = s.meta(ref);
      if (m.state === 'absent') return;
      await s.confirm(ref, v(1));
      expect(s.meta(ref).suspect).toBe(false);
      s.crash(new SeededRandom(4));
      expect(s.meta(ref)).toMatchObject({ suspect: true, version: VERSION_LEGACY });
    });

    it('the store is open again after a crash, even if it was closed', async () => {
      const s = store();
      await s.close();
      expect(await code(s.flush())).toBe('TORUS_ERR_STORE_CLOSED');
      s.crash(new SeededRandom(1));
      await s.write(blockRef(1, 1, 0), 0, Buffer.from('x'), v(1), W);
    });
  });

  describe('corrupt', () => {
    it('fails the next read of that page, marks the block suspect, and survives a flush and crash', async () => {
      const failures: number[] = [];
      const s = new MemoryBlockStore({ blockSize: BS, capacity: 8 * BS, onCrcFailure: (_r, p) => failures.push(p) });
      const ref = blockRef(1, 1, 0);
      await s.write(ref, 0, Buffer.alloc(BS, 4), v(1), W);
      await s.flush();
      const before = s.meta(ref);
      s.corrupt(ref, 2);
      // The digest is of the stored CRCs, which did not change.
      expect(s.meta(ref)).toEqual(before);
      expect((await s.read(ref, 0, 8192)).equals(Buffer.alloc(8192, 4))).toBe(true);
      expect(s.meta(ref).suspect).toBe(false);
      expect(await code(s.read(ref, 8192 + 100, 10))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
      expect(failures).toEqual([2]);
      expect(s.meta(ref).suspect).toBe(true);
      s.crash(new SeededRandom(1));
      expect(await code(s.verify(ref))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
      // Rewriting the page gives it a CRC of what it holds again.
      await s.write(ref, 8192, Buffer.alloc(4096, 6), v(2), W);
      await s.verify(ref);
    });
  });
});

localStoreContract('MemoryBlockStore', async () => {
  const blockSize = 16 * 1024;
  return {
    blockSize,
    open: async (blocks) => new MemoryBlockStore({ blockSize, capacity: blocks * blockSize }),
    crash: async (store, seed) => {
      (store as MemoryBlockStore).crash(new SeededRandom(seed));
      return store;
    },
    checkpoint: (store) => (store as MemoryBlockStore).checkpoint(),
    corrupt: async (store, ref, page) => (store as MemoryBlockStore).corrupt(ref, page),
    cleanup: async () => undefined,
  };
});

describe('MemoryBlockStore crash model under the contract, many seeds', () => {
  it('every seed leaves a store whose blocks read back consistent with their digests', async () => {
    for (let seed = 1; seed <= 50; seed++) {
      const s = store(64);
      const rnd = new SeededRandom(seed);
      for (let i = 0; i < 40; i++) {
        const ref = blockRef(1 + rnd.int(2), 1, rnd.int(12));
        const op = rnd.int(6);
        if (op === 0) await s.zero(ref, 0, BS, v(i + 1), { punch: true, fua: false });
        else if (op === 1) await s.drop(ref);
        else if (op === 2) await s.flush();
        else await s.write(ref, rnd.int(BS - 100), rnd.bytes(1 + rnd.int(99)), v(i + 1), { fua: rnd.int(4) === 0 });
      }
      s.crash(rnd);
      for (const b of s.list({ limit: 1000 })) {
        expect(b.version === VERSION_ABSENT).toBe(b.state === 'absent');
        if (b.state === 'data') expect(digestOfBytes(await s.read(b.ref, 0, BS))).toBe(b.digest);
      }
      expect(s.usage().blocks).toBe(s.list({ limit: 1000 }).filter((b) => b.state === 'data').length);
    }
  });
});
