/**
 * The power-loss suite's checker (test/vm/guest/powerloss-pattern.mjs) runs
 * only inside the VM; these negative controls show on the host that it
 * catches what it is there to catch: a lost flushed write, a torn sector, a
 * sector holding another sector's data, a generation from outside the window.
 */
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain JS module of the VM harness, no types
import * as pl from '../vm/guest/powerloss-pattern.mjs';

const SEED = 0x9abcdef1;
const SECTORS = 512;

describe('power-loss pattern checker', () => {
  it('reads back each generation exactly and rejects damaged, misplaced and foreign sectors', () => {
    const b: Buffer = pl.sectorBytes(SEED, 7, 1_000_001);
    expect(pl.classify(SEED, 7, b)).toEqual({ gen: 1_000_001 });
    expect(pl.classify(SEED, 7, Buffer.alloc(4096))).toEqual({ gen: 0 });
    expect(pl.classify(SEED, 8, b).garbage).toMatch(/sector 7/);
    expect(pl.classify(SEED + 1, 7, b).garbage).toMatch(/seed/);
    for (const at of [20, 2048, 4095]) {
      const torn = Buffer.from(b);
      torn[at] = torn[at]! ^ 0x40;
      expect(pl.classify(SEED, 7, torn).garbage).toMatch(/torn/);
    }
    // Half old, half new (a torn 4 KiB write): garbage, not either generation.
    const half = Buffer.concat([pl.sectorBytes(SEED, 7, 1_000_002).subarray(0, 2048), b.subarray(2048)]);
    expect(pl.classify(SEED, 7, half).garbage).toBeDefined();
    // A sector of the deleted file the guest fills the disk with first: told apart, at any offset in it.
    for (const at of [0, 4096 * 3, 1024 * 1024 - 4096]) {
      expect(pl.classify(SEED, 7, pl.STALE_CHUNK, at).garbage).toMatch(/deleted file/);
    }
    expect(pl.classify(SEED, 7, Buffer.alloc(4096, 0x55)).garbage).toMatch(/no pattern header/);
    // Into a bigger buffer at an offset, as the checker reads.
    const big = Buffer.alloc(3 * 4096);
    pl.sectorBytes(SEED, 9, 5, big, 4096);
    expect(pl.classify(SEED, 9, big, 4096)).toEqual({ gen: 5 });
  });

  it('judges: flushed generations must survive, unacknowledged ones may or may not, nothing else passes', () => {
    const base = pl.roundBase(1);
    const before = new Uint32Array(SECTORS).fill(7); // what the round began with
    const lastAck = base + 3;
    const exp = pl.expectations(SEED, SECTORS, before, base, lastAck);
    let checked = 0;
    for (let s = 0; s < SECTORS; s++) {
      const floor = exp.floor[s]!;
      expect(pl.judge(exp, s, { gen: floor })).toBe('flushed');
      if (floor >= base) {
        // A flushed write of this round lost: the sector shows what it held before.
        expect(pl.judge(exp, s, { gen: 7 })).toBe('lost');
        checked++;
      }
      for (const g of exp.later.get(s) ?? []) expect(pl.judge(exp, s, { gen: g })).toBe('unflushed');
      expect(pl.judge(exp, s, { garbage: 'torn' })).toBe('garbage');
      expect(pl.judge(exp, s, { gen: lastAck + 50 })).toBe('unknown');
    }
    expect(checked).toBeGreaterThan(0);
    expect(exp.later.size).toBeGreaterThan(0);
  });

  it('tells where two reads of the volume through different peers disagree (the replicated run)', () => {
    const a = new Uint32Array(SECTORS).fill(5);
    expect(pl.readsDiffer(a, Uint32Array.from(a))).toEqual({ count: 0, examples: [] });
    // One replica behind on two sectors: an older generation there.
    const b = Uint32Array.from(a);
    b[3] = 4;
    b[400] = 0;
    expect(pl.readsDiffer(a, b)).toEqual({ count: 2, examples: [{ sector: 3, a: 5, b: 4 }, { sector: 400, a: 5, b: 0 }] });
    // Counted in full, listed up to the limit.
    const c = new Uint32Array(SECTORS).fill(6);
    const all = pl.readsDiffer(a, c, 3);
    expect(all.count).toBe(SECTORS);
    expect(all.examples).toHaveLength(3);
    expect(() => pl.readsDiffer(a, new Uint32Array(SECTORS - 1))).toThrow(/sectors/);
  });
});
