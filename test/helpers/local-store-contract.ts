import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import { ABSENT_META } from '../../src/model/block-meta.js';
import { makeVersion, VERSION_ABSENT, type Version } from '../../src/model/version.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import { crc32c } from '../../src/util/crc32c.js';

/**
 * The LocalBlockStore contract (src/store/local-store.ts), run against the
 * disk store and its in-memory twin, so that what the simulation learns
 * from the twin holds for the disk.
 */
export interface LocalStoreHarness {
  /** A whole number of 4 KiB pages (and a power of two, for the disk store). */
  readonly blockSize: number;
  /** A fresh, empty store with room for exactly `blocks` data blocks. */
  open(blocks: number): Promise<LocalBlockStore>;
  /** Power loss and restart: the store the next start finds (the old object is not used again). */
  crash(store: LocalBlockStore, seed: number): Promise<LocalBlockStore>;
  /** Ends a checkpoint: blocks changed before it come back from a crash exact and trusted. */
  checkpoint(store: LocalBlockStore): Promise<void>;
  /** Corrupts one page on the medium: its bytes change, its stored CRC does not. */
  corrupt(store: LocalBlockStore, ref: BlockRef, page: number): Promise<void>;
  cleanup(): Promise<void>;
}

const v = (token: number, seq: number): Version => makeVersion(token, seq);
const W = { fua: false } as const;
const PUNCH = { punch: true, fua: false } as const;
const NO_HOLE = { punch: false, fua: false } as const;

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

/** The digest as block-meta.ts defines it, from the bytes. */
export function digestOfBytes(data: Buffer): number {
  const pages = data.length / 4096;
  const be = Buffer.alloc(pages * 4);
  for (let p = 0; p < pages; p++) be.writeUInt32BE(crc32c(data.subarray(p * 4096, (p + 1) * 4096)), p * 4);
  return crc32c(be);
}

function pattern(bs: number, seed: number): Buffer {
  const b = Buffer.alloc(bs);
  for (let i = 0; i < bs; i++) b[i] = (i * 31 + seed * 7 + (i >> 12)) & 0xff;
  return b;
}

export function localStoreContract(name: string, makeHarness: () => Promise<LocalStoreHarness>): void {
  describe(`LocalBlockStore contract: ${name}`, () => {
    let h: LocalStoreHarness;
    let bs: number;
    let s: LocalBlockStore;
    beforeEach(async () => {
      h = await makeHarness();
      bs = h.blockSize;
      s = await h.open(8);
    });
    afterEach(async () => {
      await s.close().catch(() => undefined);
      await h.cleanup();
    });

    describe('states and versions', () => {
      it('an unknown block is absent, reads as zeroes, and is not listed', async () => {
        const r = blockRef(1, 1, 0);
        expect(s.meta(r)).toEqual(ABSENT_META);
        expect((await s.read(r, 0, bs)).equals(Buffer.alloc(bs))).toBe(true);
        expect(await s.verify(r)).toEqual(ABSENT_META);
        expect(s.list({ limit: 10 })).toEqual([]);
        expect(s.suspects()).toEqual([]);
        expect(s.volumeIds()).toEqual([]);
        expect(s.usage()).toMatchObject({ used: 0, blocks: 0 });
      });

      it('a write makes a data block at its version; pages never written read as zeroes; the digest covers the bytes', async () => {
        const r = blockRef(1, 1, 3);
        await s.write(r, 4096 + 100, Buffer.from('hello'), v(1, 1), W);
        const want = Buffer.alloc(bs);
        want.write('hello', 4096 + 100);
        expect((await s.read(r, 0, bs)).equals(want)).toBe(true);
        expect((await s.read(r, 4096 + 98, 9)).toString('latin1')).toBe('\0\0hello\0\0');
        expect(s.meta(r)).toEqual({ state: 'data', version: v(1, 1), suspect: false, digest: digestOfBytes(want) });
        expect(s.list({ limit: 10 })).toEqual([{ ref: r, ...s.meta(r) }]);
        expect(s.usage().blocks).toBe(1);
        await s.write(r, 0, Buffer.alloc(3, 9), v(1, 2), W);
        want.fill(9, 0, 3);
        expect(s.meta(r)).toEqual({ state: 'data', version: v(1, 2), suspect: false, digest: digestOfBytes(want) });
      });

      it('head() is meta() without the digest, in every state', async () => {
        const r = blockRef(1, 1, 2);
        const agree = () => {
          const { digest: _digest, ...rest } = s.meta(r);
          expect(s.head(r)).toEqual(rest);
        };
        agree(); // unknown
        await s.write(r, 100, Buffer.from('x'), v(1, 1), W);
        agree(); // data
        s.markSuspect(r);
        agree(); // suspect data
        await s.zero(r, 0, bs, v(1, 2), PUNCH);
        agree(); // tombstone (still suspect)
        await s.drop(r);
        agree(); // absent again
        s.markSuspect(r);
        agree(); // suspect absent
        expect(s.head(r)).toEqual({ state: 'absent', version: VERSION_ABSENT, suspect: true });
      });

      it('equal bytes give equal digests, different bytes different ones', async () => {
        const a = blockRef(1, 1, 0);
        const b = blockRef(2, 1, 0);
        await s.write(a, 0, pattern(bs, 1), v(1, 1), W);
        await s.install(b, pattern(bs, 1), v(2, 1), W);
        expect(s.meta(a).digest).toBe(s.meta(b).digest);
        await s.write(b, bs - 1, Buffer.from([0]), v(2, 2), W);
        expect(s.meta(a).digest).not.toBe(s.meta(b).digest);
      });

      it('each change sets the version it carries: the store does not order versions (the replica layer does)', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, Buffer.from('a'), v(3, 5), W);
        await s.write(r, 0, Buffer.from('b'), v(2, 1), W);
        expect(s.meta(r).version).toBe(v(2, 1));
        await s.zero(r, 0, bs, 0, PUNCH);
        expect(s.meta(r)).toMatchObject({ state: 'zero', version: 0 });
      });

      it('a whole-block punch leaves a tombstone: state zero, its version, reads zeroes, frees the data', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 2), v(1, 1), W);
        await s.zero(r, 0, bs, v(1, 2), PUNCH);
        expect(s.meta(r)).toEqual({ state: 'zero', version: v(1, 2), suspect: false, digest: 0 });
        expect((await s.read(r, 0, bs)).equals(Buffer.alloc(bs))).toBe(true);
        expect(s.usage()).toMatchObject({ used: 0, blocks: 0 });
        expect(s.list({ limit: 10 }).map((b) => b.ref)).toEqual([r]);
        expect(s.volumeIds()).toEqual([1]);
        expect(await s.verify(r)).toEqual(s.meta(r));
      });

      it('a whole-block punch of an absent block leaves a tombstone too (mechanism: the caller decides)', async () => {
        const r = blockRef(1, 1, 5);
        await s.zero(r, 0, bs, v(1, 1), PUNCH);
        expect(s.meta(r)).toMatchObject({ state: 'zero', version: v(1, 1) });
      });

      it('a partial punch zeroes a range of a data block and keeps it data', async () => {
        const r = blockRef(1, 1, 0);
        const want = pattern(bs, 3);
        await s.write(r, 0, want, v(1, 1), W);
        await s.zero(r, 10, 5000, v(1, 2), PUNCH);
        want.fill(0, 10, 5010);
        expect((await s.read(r, 0, bs)).equals(want)).toBe(true);
        expect(s.meta(r)).toEqual({ state: 'data', version: v(1, 2), suspect: false, digest: digestOfBytes(want) });
      });

      it('a partial punch of an absent block or a tombstone leaves a tombstone at the new version', async () => {
        const a = blockRef(1, 1, 0);
        await s.zero(a, 100, 200, v(1, 1), PUNCH);
        expect(s.meta(a)).toMatchObject({ state: 'zero', version: v(1, 1) });
        await s.zero(a, 0, 10, v(1, 2), PUNCH);
        expect(s.meta(a)).toMatchObject({ state: 'zero', version: v(1, 2) });
        expect(s.usage().blocks).toBe(0);
      });

      it('zero without punch makes (or keeps) a data block of zeroes', async () => {
        const a = blockRef(1, 1, 0);
        await s.zero(a, 0, bs, v(1, 1), NO_HOLE);
        expect(s.meta(a)).toEqual({ state: 'data', version: v(1, 1), suspect: false, digest: digestOfBytes(Buffer.alloc(bs)) });
        expect(s.usage().blocks).toBe(1);
        const b = blockRef(1, 1, 1);
        await s.zero(b, 0, bs, v(1, 1), PUNCH);
        await s.zero(b, 4096, 10, v(1, 2), NO_HOLE);
        expect(s.meta(b)).toMatchObject({ state: 'data', version: v(1, 2) });
        expect((await s.read(b, 0, bs)).equals(Buffer.alloc(bs))).toBe(true);
      });

      it('a write into a tombstone makes data again, its other pages zero', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 4), v(1, 1), W);
        await s.zero(r, 0, bs, v(1, 2), PUNCH);
        await s.write(r, 4096, Buffer.from('x'), v(1, 3), W);
        const want = Buffer.alloc(bs);
        want.write('x', 4096);
        expect((await s.read(r, 0, bs)).equals(want)).toBe(true);
        expect(s.meta(r)).toMatchObject({ state: 'data', version: v(1, 3), digest: digestOfBytes(want) });
      });

      it('install replaces the whole block (data or tombstone) at its version and clears suspect', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 5), v(1, 1), W);
        s.markSuspect(r);
        await s.install(r, pattern(bs, 6), v(2, 1), W);
        expect(s.meta(r)).toEqual({ state: 'data', version: v(2, 1), suspect: false, digest: digestOfBytes(pattern(bs, 6)) });
        expect((await s.read(r, 0, bs)).equals(pattern(bs, 6))).toBe(true);
        s.markSuspect(r);
        await s.install(r, null, v(2, 2), W);
        expect(s.meta(r)).toEqual({ state: 'zero', version: v(2, 2), suspect: false, digest: 0 });
        expect(s.usage().blocks).toBe(0);
        await s.install(r, pattern(bs, 7), v(2, 3), { fua: true });
        expect((await s.read(r, 0, bs)).equals(pattern(bs, 7))).toBe(true);
        const fresh = blockRef(1, 1, 1);
        await s.install(fresh, null, v(2, 1), W);
        expect(s.meta(fresh)).toMatchObject({ state: 'zero', version: v(2, 1) });
      });

      it('confirm clears suspect and sets the version, bytes unchanged', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 8), v(1, 1), W);
        const digest = s.meta(r).digest;
        s.markSuspect(r);
        expect(s.meta(r).suspect).toBe(true);
        await s.confirm(r, v(1, 4));
        expect(s.meta(r)).toEqual({ state: 'data', version: v(1, 4), suspect: false, digest });
        expect((await s.read(r, 0, bs)).equals(pattern(bs, 8))).toBe(true);
        const t = blockRef(1, 1, 1);
        await s.zero(t, 0, bs, v(1, 1), PUNCH);
        s.markSuspect(t);
        await s.confirm(t, v(1, 2));
        expect(s.meta(t)).toEqual({ state: 'zero', version: v(1, 2), suspect: false, digest: 0 });
      });

      it('confirm of an absent suspect block at VERSION_ABSENT forgets it', async () => {
        const r = blockRef(1, 1, 0);
        s.markSuspect(r);
        expect(s.meta(r)).toEqual({ state: 'absent', version: VERSION_ABSENT, suspect: true, digest: 0 });
        await s.confirm(r, VERSION_ABSENT);
        expect(s.meta(r)).toEqual(ABSENT_META);
        expect(s.list({ limit: 10 })).toEqual([]);
      });

      it('markSuspect marks data, tombstones and absent blocks; suspects() lists them in order; drop() clears', async () => {
        const a = blockRef(2, 1, 0);
        const b = blockRef(1, 2, 0);
        const c = blockRef(1, 1, 7);
        await s.write(a, 0, Buffer.from('a'), v(1, 1), W);
        await s.zero(b, 0, bs, v(1, 1), PUNCH);
        s.markSuspect(a);
        s.markSuspect(b);
        s.markSuspect(c);
        s.markSuspect(c);
        expect(s.suspects()).toEqual([c, b, a]);
        expect(s.list({ limit: 10 }).map((x) => [x.ref, x.state, x.suspect])).toEqual([
          [c, 'absent', true],
          [b, 'zero', true],
          [a, 'data', true],
        ]);
        // The store still reads a suspect block: not reading it is the replica layer's rule.
        expect((await s.read(a, 0, 1)).toString()).toBe('a');
        for (const r of [a, b, c]) await s.drop(r);
        expect(s.suspects()).toEqual([]);
        expect(s.list({ limit: 10 })).toEqual([]);
      });

      it('drop makes a block absent and frees its room; dropping an absent block is a no-op', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 9), v(1, 1), W);
        await s.drop(r);
        expect(s.meta(r)).toEqual(ABSENT_META);
        expect((await s.read(r, 0, bs)).equals(Buffer.alloc(bs))).toBe(true);
        expect(s.usage()).toMatchObject({ used: 0, blocks: 0 });
        await s.drop(r);
        await s.drop(blockRef(9, 9, 9));
        await s.zero(r, 0, bs, v(1, 2), PUNCH);
        await s.drop(r);
        expect(s.meta(r)).toEqual(ABSENT_META);
        expect(s.volumeIds()).toEqual([]);
      });
    });

    describe('listing', () => {
      it('orders by (volumeId, generation, index), pages with cursors, and filters by volume', async () => {
        const refs = [blockRef(3, 1, 0), blockRef(1, 2, 1), blockRef(1, 1, 2 ** 40), blockRef(1, 1, 2), blockRef(2, 1, 0), blockRef(1, 1, 10), blockRef(0x10, 1, 0)];
        for (const [i, r] of refs.entries()) {
          if (i % 2 === 0) await s.zero(r, 0, bs, v(1, 1), PUNCH);
          else await s.write(r, 0, Buffer.from([i]), v(1, 1), W);
        }
        const sorted = [...refs].sort((x, y) => x.volumeId - y.volumeId || x.generation - y.generation || x.index - y.index);
        expect(s.list({ limit: 100 }).map((b) => b.ref)).toEqual(sorted);
        // Pages of 2, each after the last ref of the previous one.
        const paged: BlockRef[] = [];
        let after: BlockRef | null = null;
        for (;;) {
          const page = s.list({ after, limit: 2 });
          if (page.length === 0) break;
          expect(page.length).toBeLessThanOrEqual(2);
          paged.push(...page.map((b) => b.ref));
          after = page[page.length - 1]!.ref;
        }
        expect(paged).toEqual(sorted);
        expect(s.list({ volumeId: 1, limit: 100 }).map((b) => b.ref)).toEqual(sorted.filter((r) => r.volumeId === 1));
        expect(s.list({ volumeId: 1, after: blockRef(1, 1, 10), limit: 100 }).map((b) => b.ref)).toEqual([blockRef(1, 1, 2 ** 40), blockRef(1, 2, 1)]);
        expect(s.list({ volumeId: 4, limit: 100 })).toEqual([]);
        expect(s.list({ limit: 0 })).toEqual([]);
        // A cursor need not name a held block.
        expect(s.list({ after: blockRef(1, 1, 3), limit: 1 }).map((b) => b.ref)).toEqual([blockRef(1, 1, 10)]);
        expect(s.list({ after: blockRef(2, 5, 0), limit: 100 }).map((b) => b.ref)).toEqual([blockRef(3, 1, 0), blockRef(0x10, 1, 0)]);
        expect(s.volumeIds().sort((x, y) => x - y)).toEqual([1, 2, 3, 0x10]);
      });

      it('a page is stable while blocks come and go around the cursor', async () => {
        for (let i = 0; i < 6; i++) await s.write(blockRef(1, 1, i * 2), 0, Buffer.from('x'), v(1, 1), W);
        const first = s.list({ limit: 3 }).map((b) => b.ref.index);
        expect(first).toEqual([0, 2, 4]);
        await s.drop(blockRef(1, 1, 2));
        await s.zero(blockRef(1, 1, 5), 0, bs, v(1, 1), PUNCH);
        await s.write(blockRef(1, 1, 1), 0, Buffer.from('y'), v(1, 1), W);
        expect(s.list({ after: blockRef(1, 1, 4), limit: 10 }).map((b) => b.ref.index)).toEqual([5, 6, 8, 10]);
      });
    });

    describe('capacity', () => {
      it('a change that needs a new data block beyond the cap fails with NO_SPACE and changes nothing', async () => {
        await s.close();
        s = await h.open(2);
        const a = blockRef(1, 1, 0);
        const b = blockRef(1, 1, 1);
        const c = blockRef(1, 1, 2);
        const t = blockRef(1, 1, 3);
        await s.write(a, 0, Buffer.from('a'), v(1, 1), W);
        await s.write(b, 0, Buffer.from('b'), v(1, 1), W);
        await s.zero(t, 0, bs, v(1, 1), PUNCH);
        const before = JSON.stringify({ list: s.list({ limit: 10 }), usage: s.usage() });
        expect(await codeOf(s.write(c, 0, Buffer.from('c'), v(1, 2), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
        expect(await codeOf(s.install(c, Buffer.alloc(bs, 1), v(1, 2), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
        expect(await codeOf(s.zero(c, 0, bs, v(1, 2), NO_HOLE))).toBe('TORUS_ERR_STORE_NO_SPACE');
        expect(await codeOf(s.write(t, 0, Buffer.from('t'), v(1, 2), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
        expect(await codeOf(s.install(t, Buffer.alloc(bs, 1), v(1, 2), { fua: true }))).toBe('TORUS_ERR_STORE_NO_SPACE');
        expect(JSON.stringify({ list: s.list({ limit: 10 }), usage: s.usage() })).toBe(before);
        expect(s.meta(c)).toEqual(ABSENT_META);
        // Changes to blocks that hold data, tombstones and installs of tombstones still work when full.
        await s.write(a, 1, Buffer.from('z'), v(1, 2), W);
        expect((await s.read(a, 0, 2)).toString()).toBe('az');
        await s.install(c, null, v(1, 2), W);
        await s.zero(c, 0, 10, v(1, 3), PUNCH);
        // A tombstone frees room.
        await s.zero(b, 0, bs, v(1, 2), PUNCH);
        await s.write(c, 0, Buffer.from('c'), v(1, 4), W);
        expect(s.usage().blocks).toBe(2);
      });
    });

    describe('durability', () => {
      it('checkpointed blocks come back from a crash exact and trusted; flushed bytes survive; unflushed changes come back suspect', async () => {
        const kept = blockRef(1, 1, 0);
        const tomb = blockRef(1, 1, 1);
        const flushed = blockRef(1, 1, 2);
        const lost = blockRef(1, 1, 3);
        const dropped = blockRef(1, 1, 4);
        const trimmed = blockRef(1, 1, 5);
        await s.write(kept, 0, pattern(bs, 1), v(1, 1), W);
        await s.zero(tomb, 0, bs, v(1, 1), PUNCH);
        await s.write(dropped, 0, pattern(bs, 2), v(1, 1), W);
        await s.write(trimmed, 0, pattern(bs, 3), v(1, 1), W);
        await h.checkpoint(s);
        await s.write(flushed, 0, pattern(bs, 4), v(1, 2), W);
        await s.flush();
        await s.write(lost, 0, pattern(bs, 5), v(1, 3), W);
        await s.drop(dropped);
        await s.zero(trimmed, 0, bs, v(1, 2), PUNCH);
        s = await h.crash(s, 1);
        expect(s.meta(kept)).toEqual({ state: 'data', version: v(1, 1), suspect: false, digest: digestOfBytes(pattern(bs, 1)) });
        expect((await s.read(kept, 0, bs)).equals(pattern(bs, 1))).toBe(true);
        expect(s.meta(tomb)).toEqual({ state: 'zero', version: v(1, 1), suspect: false, digest: 0 });
        expect((await s.read(flushed, 0, bs)).equals(pattern(bs, 4))).toBe(true);
        expect(s.meta(flushed).state).toBe('data');
        for (const r of [lost, dropped, trimmed]) expect(s.meta(r).suspect, `block ${r.index}`).toBe(true);
        expect(s.suspects()).toEqual(expect.arrayContaining([lost, dropped, trimmed]));
        expect(s.suspects()).not.toContain(kept);
        // Whatever came back is consistent with its digest and reads without CRC errors.
        for (const b of s.list({ limit: 100 })) {
          if (b.state === 'absent') expect(b.version).toBe(VERSION_ABSENT);
          if (b.state !== 'data') continue;
          expect(digestOfBytes(await s.read(b.ref, 0, bs))).toBe(b.digest);
          await s.verify(b.ref);
        }
        // Suspect blocks can be replaced or confirmed; then they are trusted.
        await s.install(lost, pattern(bs, 5), v(1, 3), { fua: true });
        if (s.meta(trimmed).state !== 'absent') await s.confirm(trimmed, v(1, 2));
        await s.drop(dropped);
        if (s.meta(flushed).suspect) await s.confirm(flushed, v(1, 2));
        expect(s.suspects()).toEqual([]);
      });

      it('fua makes one change durable without a flush', async () => {
        const a = blockRef(1, 1, 0);
        const t = blockRef(1, 1, 1);
        const i = blockRef(1, 1, 2);
        await s.write(a, 0, pattern(bs, 1), v(1, 1), { fua: true });
        await s.write(t, 0, pattern(bs, 2), v(1, 1), W);
        await s.zero(t, 0, bs, v(1, 2), { punch: true, fua: true });
        await s.install(i, pattern(bs, 3), v(1, 1), { fua: true });
        s = await h.crash(s, 2);
        expect((await s.read(a, 0, bs)).equals(pattern(bs, 1))).toBe(true);
        expect(s.meta(t).state).toBe('zero');
        expect((await s.read(i, 0, bs)).equals(pattern(bs, 3))).toBe(true);
      });

      it('deleteVolume frees every generation, tombstone and suspect of one volume, durably', async () => {
        await s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), v(1, 1), W);
        await s.write(blockRef(1, 2, 5), 0, Buffer.from('a'), v(1, 1), W);
        await s.zero(blockRef(1, 1, 1), 0, bs, v(1, 1), PUNCH);
        s.markSuspect(blockRef(1, 3, 0));
        await s.write(blockRef(2, 1, 0), 0, Buffer.from('b'), v(1, 1), W);
        await h.checkpoint(s);
        await s.deleteVolume(1);
        await s.deleteVolume(99);
        expect(s.list({ limit: 10 }).map((b) => b.ref)).toEqual([blockRef(2, 1, 0)]);
        expect(s.volumeIds()).toEqual([2]);
        expect(s.usage()).toMatchObject({ blocks: 1 });
        s = await h.crash(s, 3);
        expect(s.list({ limit: 10 }).map((b) => b.ref)).toEqual([blockRef(2, 1, 0)]);
        expect((await s.read(blockRef(1, 2, 5), 0, 1)).equals(Buffer.alloc(1))).toBe(true);
      });
    });

    describe('checksums', () => {
      it('verify reads every page: a corrupt page fails with CRC_MISMATCH and marks the block suspect; other pages still read', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 1), v(1, 1), W);
        await s.flush();
        expect(await s.verify(r)).toEqual(s.meta(r));
        await h.corrupt(s, r, 1);
        expect(s.meta(r).suspect).toBe(false);
        expect((await s.read(r, 0, 4096)).equals(pattern(bs, 1).subarray(0, 4096))).toBe(true);
        expect(await codeOf(s.verify(r))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        expect(s.meta(r).suspect).toBe(true);
        expect(s.suspects()).toEqual([r]);
        expect(await codeOf(s.read(r, 4096 + 10, 10))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        // A fresh copy repairs it.
        await s.install(r, pattern(bs, 1), v(1, 1), W);
        expect(await s.verify(r)).toMatchObject({ suspect: false });
      });

      it('a write or zero covering part of a corrupt page fails with CRC_MISMATCH and never gives the page a fresh CRC', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 3), v(1, 1), W);
        await s.flush();
        await h.corrupt(s, r, 1);
        // Whole pages elsewhere are fine to write (they keep nothing of the old bytes).
        await s.write(r, 0, pattern(4096, 4), v(1, 2), W);
        expect(s.meta(r).suspect).toBe(false);
        // Part of the corrupt page: refused, nothing changes, the copy is suspect.
        expect(await codeOf(s.write(r, 4096 + 100, Buffer.from('abc'), v(1, 3), W))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        expect(s.meta(r)).toMatchObject({ version: v(1, 2), suspect: true });
        expect(await codeOf(s.zero(r, 2 * 4096 - 10, 20, v(1, 3), NO_HOLE))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        expect(await codeOf(s.verify(r))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        // A fresh copy repairs it.
        await s.install(r, pattern(bs, 3), v(1, 3), W);
        await s.write(r, 4096 + 100, Buffer.from('abc'), v(1, 4), W);
        expect(await s.verify(r)).toMatchObject({ suspect: false, version: v(1, 4) });
      });

      it('a read of a corrupt page marks the block suspect', async () => {
        const r = blockRef(1, 1, 0);
        await s.write(r, 0, pattern(bs, 2), v(1, 1), W);
        await h.corrupt(s, r, 0);
        expect(await codeOf(s.read(r, 0, 1))).toBe('TORUS_ERR_STORE_CRC_MISMATCH');
        expect(s.meta(r).suspect).toBe(true);
      });
    });

    describe('misuse', () => {
      it('asserts ranges and versions: they are caller bugs', async () => {
        const r = blockRef(1, 1, 0);
        expect(await codeOf(s.read(r, bs - 1, 2))).toBe('TORUS_ERR_ASSERTION');
        expect(await codeOf(s.read(r, -1, 1))).toBe('TORUS_ERR_ASSERTION');
        expect(await codeOf(s.write(r, bs, Buffer.from('a'), v(1, 1), W))).toBe('TORUS_ERR_ASSERTION');
        expect(await codeOf(s.write(r, 0, Buffer.from('a'), VERSION_ABSENT, W))).toBe('TORUS_ERR_ASSERTION');
        expect(await codeOf(s.zero(r, 1.5, 1, v(1, 1), NO_HOLE))).toBe('TORUS_ERR_ASSERTION');
        expect(await codeOf(s.install(r, Buffer.alloc(bs - 1), v(1, 1), W))).toBe('TORUS_ERR_ASSERTION');
        expect(s.meta(r)).toEqual(ABSENT_META);
        expect(s.usage().blocks).toBe(0);
      });

      it('refuses I/O once closed', async () => {
        await s.close();
        expect(await codeOf(s.read(blockRef(1, 1, 0), 0, 1))).toBe('TORUS_ERR_STORE_CLOSED');
        expect(await codeOf(s.write(blockRef(1, 1, 0), 0, Buffer.from('a'), v(1, 1), W))).toBe('TORUS_ERR_STORE_CLOSED');
        expect(await codeOf(s.flush())).toBe('TORUS_ERR_STORE_CLOSED');
      });
    });
  });
}
