import { assert } from '../util/assert.js';

/**
 * Block index sets as [start, end) ranges, the form stale records keep in
 * etcd. Pure.
 */
export type Range = readonly [number, number];

/** Sorted, distinct indexes → the fewest ranges covering exactly them. */
export function indexesToRanges(sorted: readonly number[]): Range[] {
  const out: [number, number][] = [];
  for (const i of sorted) {
    assert(Number.isInteger(i) && i >= 0, 'block indexes are non-negative integers');
    const last = out[out.length - 1];
    if (last !== undefined && i === last[1]) last[1] = i + 1;
    else {
      assert(last === undefined || i > last[1], 'indexes are sorted and distinct');
      out.push([i, i + 1]);
    }
  }
  return out;
}

export function rangesToIndexes(ranges: readonly Range[]): number[] {
  const out: number[] = [];
  for (const [s, e] of ranges) for (let i = s; i < e; i++) out.push(i);
  return out;
}
