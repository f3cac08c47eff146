import { describe, expect, it } from 'vitest';
import {
  coarsenRanges,
  narrowStaleSet,
  addToStale,
  countBlocks,
  intersectRanges,
  indexesToRanges,
  isSortedDisjoint,
  mergeRanges,
  normalizeRanges,
  rangesContain,
  rangesOverlap,
  removeFromStale,
  staleContains,
  subtractRanges,
  type BlockRange,
} from '../../src/model/ranges.js';
import { SeededRandom } from '../../src/util/random.js';
import { expectCode } from '../helpers/metadata-contract.js';

/** The same sets as plain index sets, for checking the range maths against. */
function toSet(ranges: readonly BlockRange[]): Set<number> {
  const s = new Set<number>();
  for (const [a, b] of ranges) for (let i = a; i < b; i++) s.add(i);
  return s;
}

function fromSet(s: Set<number>): BlockRange[] {
  const sorted = [...s].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const i of sorted) {
    const last = out[out.length - 1];
    if (last && last[1] === i) last[1] = i + 1;
    else out.push([i, i + 1]);
  }
  return out;
}

function randomRanges(rnd: SeededRandom, n: number, span: number): BlockRange[] {
  return Array.from({ length: n }, () => {
    const s = rnd.int(span);
    return [s, s + 1 + rnd.int(8)] as const;
  });
}

describe('block ranges', () => {
  it('normalises: sorts, merges overlapping and touching ranges', () => {
    expect(normalizeRanges([])).toEqual([]);
    expect(normalizeRanges([[5, 7], [0, 2], [2, 3], [6, 10], [12, 13]])).toEqual([[0, 3], [5, 10], [12, 13]]);
    expect(normalizeRanges([[0, 10], [2, 3]])).toEqual([[0, 10]]);
  });

  it('refuses malformed ranges with TORUS_ERR_ARG_INVALID', async () => {
    for (const bad of [[3, 3], [4, 2], [-1, 2], [0.5, 2], [0, Number.NaN], [0, 2 ** 60], [1], 'x'] as unknown as BlockRange[]) {
      await expectCode(Promise.resolve().then(() => normalizeRanges([bad])), 'TORUS_ERR_ARG_INVALID');
    }
  });

  it('merges, subtracts and intersects like sets of indexes', () => {
    const rnd = new SeededRandom(42);
    for (let round = 0; round < 300; round++) {
      const a = randomRanges(rnd, rnd.int(12), 60);
      const b = randomRanges(rnd, rnd.int(12), 60);
      const sa = toSet(a);
      const sb = toSet(b);
      expect(mergeRanges(a, b)).toEqual(fromSet(new Set([...sa, ...sb])));
      expect(subtractRanges(a, b)).toEqual(fromSet(new Set([...sa].filter((i) => !sb.has(i)))));
      expect(intersectRanges(a, b)).toEqual(fromSet(new Set([...sa].filter((i) => sb.has(i)))));
      expect(countBlocks(a)).toBe(sa.size);
      const norm = normalizeRanges(a);
      expect(isSortedDisjoint(norm)).toBe(true);
      for (let i = -1; i < 70; i++) {
        expect(rangesContain(norm, i)).toBe(sa.has(i));
        if (i >= 0) expect(rangesOverlap(norm, [i, i + 3])).toBe(sa.has(i) || sa.has(i + 1) || sa.has(i + 2));
      }
    }
  });

  it('subtracts holes at the edges and across several ranges', () => {
    expect(subtractRanges([[0, 10]], [[0, 10]])).toEqual([]);
    expect(subtractRanges([[0, 10]], [[0, 2], [4, 5], [9, 12]])).toEqual([[2, 4], [5, 9]]);
    expect(subtractRanges([[0, 3], [5, 8]], [[2, 6]])).toEqual([[0, 2], [6, 8]]);
    expect(subtractRanges([[0, 3]], [])).toEqual([[0, 3]]);
  });

  it('tells sorted disjoint lists from others', () => {
    expect(isSortedDisjoint([[0, 2], [2, 4]])).toBe(true);
    expect(isSortedDisjoint([[0, 3], [2, 4]])).toBe(false);
    expect(isSortedDisjoint([[5, 6], [0, 1]])).toBe(false);
    expect(isSortedDisjoint([[1, 1]])).toBe(false);
  });
});

describe('stale sets', () => {
  it('adds ranges, and all absorbs them', () => {
    const one = addToStale(null, { ranges: [[4, 6], [0, 1]] });
    expect(one).toEqual({ all: false, ranges: [[0, 1], [4, 6]] });
    expect(addToStale(one, { ranges: [[1, 4]] })).toEqual({ all: false, ranges: [[0, 6]] });
    const all = addToStale(one, { all: true });
    expect(all).toEqual({ all: true, ranges: [] });
    expect(addToStale(all, { ranges: [[100, 200]] })).toEqual({ all: true, ranges: [] });
    expect(staleContains(all, 123456)).toBe(true);
    expect(staleContains(one, 5)).toBe(true);
    expect(staleContains(one, 6)).toBe(false);
  });

  it('collapses to all beyond the range cap', () => {
    const many = Array.from({ length: 10 }, (_, i) => [i * 2, i * 2 + 1] as const);
    expect(addToStale(null, { ranges: many }, 10)).toEqual({ all: false, ranges: many });
    expect(addToStale(null, { ranges: [...many, [100, 101]] }, 10)).toEqual({ all: true, ranges: [] });
  });

  it('removes ranges; the record goes when empty; all stays all unless all is removed', () => {
    const set = { all: false, ranges: [[0, 10]] as BlockRange[] };
    expect(removeFromStale(set, [[0, 4]])).toEqual({ all: false, ranges: [[4, 10]] });
    expect(removeFromStale(set, [[0, 10]])).toBeNull();
    expect(removeFromStale(set, 'all')).toBeNull();
    expect(removeFromStale(null, [[0, 1]])).toBeNull();
    const all = { all: true, ranges: [] };
    expect(removeFromStale(all, [[0, 1_000_000]])).toBe(all);
    expect(removeFromStale(all, 'all')).toBeNull();
  });
});

describe('unsure blocks in stale sets', () => {
  it('are kept apart from missed blocks, named by staleContains, absorbed by all, and removed with them', () => {
    const set = addToStale(addToStale(null, { ranges: [[0, 2]] }), { unsure: [[5, 7]] });
    expect(set).toEqual({ all: false, ranges: [[0, 2]], unsure: [[5, 7]] });
    expect(staleContains(set, 6)).toBe(true);
    expect(staleContains(set, 3)).toBe(false);
    // Only unsure: still a record.
    expect(addToStale(null, { unsure: [[9, 10]] })).toEqual({ all: false, ranges: [], unsure: [[9, 10]] });
    expect(addToStale(set, { all: true })).toEqual({ all: true, ranges: [] });
    // A removal clears both kinds; the record goes when both are empty.
    expect(removeFromStale(set, [[1, 6]])).toEqual({ all: false, ranges: [[0, 1]], unsure: [[6, 7]] });
    expect(removeFromStale(set, [[0, 2]])).toEqual({ all: false, ranges: [], unsure: [[5, 7]] });
    expect(removeFromStale(set, [[0, 10]])).toBeNull();
    // Narrowing is about missed blocks: unsure ones stay until a coordinator compares them.
    expect(narrowStaleSet(set, [[1, 2]])).toEqual({ all: false, ranges: [[1, 2]], unsure: [[5, 7]] });
    expect(narrowStaleSet(set, [])).toEqual({ all: false, ranges: [], unsure: [[5, 7]] });
    // Both kinds count toward the cap.
    expect(addToStale({ all: false, ranges: [[0, 1]] }, { unsure: [[2, 3]] }, 1)).toEqual({ all: true, ranges: [] });
  });
});

describe('narrowing and coarsening', () => {
  it('narrows any set, or none, to exactly the kept blocks', () => {
    expect(narrowStaleSet({ all: true, ranges: [] }, [[5, 6], [1, 3]])).toEqual({ all: false, ranges: [[1, 3], [5, 6]] });
    // A listed set names what was kept even where it did not before (an earlier narrowing's answer was lost).
    expect(narrowStaleSet({ all: false, ranges: [[0, 10], [20, 30]] }, [[5, 25]])).toEqual({ all: false, ranges: [[5, 25]] });
    expect(narrowStaleSet({ all: true, ranges: [] }, [])).toBeNull();
    expect(narrowStaleSet(null, [[1, 2]])).toEqual({ all: false, ranges: [[1, 2]] });
    expect(narrowStaleSet(null, [])).toBeNull();
    const whole = { all: true, ranges: [] };
    expect(narrowStaleSet(whole, [[0, 1], [2, 3], [4, 5]], 2)).toBe(whole);
  });

  it('coarsens to at most max ranges, filling the smallest gaps, and always covers the input', () => {
    expect(coarsenRanges([[0, 1], [2, 3], [10, 11], [12, 13]], 2)).toEqual([[0, 3], [10, 13]]);
    expect(coarsenRanges([[0, 1], [5, 6]], 4)).toEqual([[0, 1], [5, 6]]);
    expect(coarsenRanges([[0, 1], [5, 6], [7, 8]], 1)).toEqual([[0, 8]]);
    const rnd = new SeededRandom(11);
    for (let round = 0; round < 200; round++) {
      const idx = Array.from({ length: 1 + rnd.int(300) }, () => rnd.int(5000));
      const exact = indexesToRanges(idx);
      const max = 1 + rnd.int(40);
      const out = coarsenRanges(exact, max);
      expect(out.length).toBeLessThanOrEqual(max);
      expect(isSortedDisjoint(out)).toBe(true);
      expect(subtractRanges(exact, out)).toEqual([]);
      if (exact.length <= max) expect(out).toEqual(exact);
    }
  });
});

