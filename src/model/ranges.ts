import { TorusError } from '../errors/torus-error.js';
import type { StaleRecord } from './records.js';

/**
 * Sets of block indexes as lists of [start, end) ranges. Pure maths for
 * stale records (docs/replication.md, "Stale records") and whoever copies the
 * blocks they name: no I/O, no clock.
 *
 * A list is in normal form when its ranges are sorted, non-empty, and
 * neither overlap nor touch (the next start is above the previous end).
 * Every function here returns normal form; inputs may be in any order and
 * overlap, but each range must be well formed (checkRange).
 */

export type BlockRange = readonly [number, number];

/** Indexes are safe integers, so that counts and sums stay exact. */
export const BLOCK_INDEX_END_MAX = Number.MAX_SAFE_INTEGER;

/**
 * Ranges one stale record keeps; beyond this it collapses to the whole
 * volume (`all`), so that a record stays a small etcd value (1024 ranges of
 * two 16-digit numbers is about 35 KiB) however scattered the blocks are.
 */
export const STALE_RANGES_MAX = 1024;

function badRange(r: unknown, why: string): TorusError {
  return new TorusError('TORUS_ERR_ARG_INVALID', `invalid block range ${JSON.stringify(r)}: ${why}`);
}

/** A range is two safe integers with 0 <= start < end <= BLOCK_INDEX_END_MAX. */
export function checkRange(r: unknown): BlockRange {
  if (!Array.isArray(r) || r.length !== 2) throw badRange(r, 'expected [start, end)');
  const [s, e] = r as unknown[];
  if (typeof s !== 'number' || typeof e !== 'number' || !Number.isSafeInteger(s) || !Number.isSafeInteger(e)) throw badRange(r, 'bounds are not integers');
  if (s < 0) throw badRange(r, 'start is negative');
  if (e <= s) throw badRange(r, 'end is not above start');
  return [s, e];
}

/** True when `ranges` is sorted, made of well-formed ranges, and disjoint (touching allowed). */
export function isSortedDisjoint(ranges: readonly BlockRange[]): boolean {
  let prevEnd = -1;
  for (const r of ranges) {
    try {
      checkRange(r);
    } catch {
      return false;
    }
    if (r[0] < prevEnd) return false;
    prevEnd = r[1];
  }
  return true;
}

/** Sorts and coalesces: overlapping or touching ranges become one. */
export function normalizeRanges(ranges: readonly BlockRange[]): BlockRange[] {
  const sorted = ranges.map(checkRange).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out: [number, number][] = [];
  for (const [s, e] of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** The union of two sets. */
export function mergeRanges(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  return normalizeRanges([...a, ...b]);
}

/** The blocks of `a` that are not in `b`. */
export function subtractRanges(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  const minus = normalizeRanges(b);
  const out: BlockRange[] = [];
  let j = 0;
  for (const [start, end] of normalizeRanges(a)) {
    let s = start;
    // Skip holes that end before this range; they cannot cut later ones either.
    while (j < minus.length && minus[j]![1] <= s) j++;
    let k = j;
    while (k < minus.length && minus[k]![0] < end) {
      const [ms, me] = minus[k]!;
      if (ms > s) out.push([s, ms]);
      s = Math.max(s, me);
      if (s >= end) break;
      k++;
    }
    if (s < end) out.push([s, end]);
  }
  return out;
}

/**
 * The fewest changes to cover `ranges` with at most `max` ranges: the
 * smallest gaps are filled first. A superset, never a subset (for stale
 * sets, naming more blocks is the safe side).
 */
export function coarsenRanges(ranges: readonly BlockRange[], max: number): BlockRange[] {
  const sorted = normalizeRanges(ranges);
  if (sorted.length <= max) return sorted;
  if (max < 1) throw new TorusError('TORUS_ERR_ARG_INVALID', `cannot cover ${sorted.length} ranges with ${max}`);
  // Gaps by size (ties: the earlier first); the k smallest are filled.
  const gaps = sorted.slice(1).map((r, i) => ({ i, size: r[0] - sorted[i]![1] }));
  gaps.sort((a, b) => a.size - b.size || a.i - b.i);
  const fill = new Set(gaps.slice(0, sorted.length - max).map((g) => g.i));
  const out: [number, number][] = [[sorted[0]![0], sorted[0]![1]]];
  for (let i = 1; i < sorted.length; i++) {
    if (fill.has(i - 1)) out[out.length - 1]![1] = sorted[i]![1];
    else out.push([sorted[i]![0], sorted[i]![1]]);
  }
  return out;
}

/** The blocks in both sets. */
export function intersectRanges(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  const x = normalizeRanges(a);
  const y = normalizeRanges(b);
  const out: BlockRange[] = [];
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    const s = Math.max(x[i]![0], y[j]![0]);
    const e = Math.min(x[i]![1], y[j]![1]);
    if (s < e) out.push([s, e]);
    if (x[i]![1] < y[j]![1]) i++;
    else j++;
  }
  return out;
}

/** Whether block `index` is in a normal-form list (binary search). */
export function rangesContain(ranges: readonly BlockRange[], index: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const [s, e] = ranges[mid]!;
    if (index < s) hi = mid - 1;
    else if (index >= e) lo = mid + 1;
    else return true;
  }
  return false;
}

/** Whether any block of [start, end) is in a normal-form list. */
export function rangesOverlap(ranges: readonly BlockRange[], range: BlockRange): boolean {
  const [start, end] = checkRange(range);
  // The first range that ends after `start`; it overlaps when it starts before `end`.
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ranges[mid]![1] <= start) lo = mid + 1;
    else hi = mid;
  }
  return lo < ranges.length && ranges[lo]![0] < end;
}

/** How many blocks a set holds (overlaps counted once). */
export function countBlocks(ranges: readonly BlockRange[]): number {
  return normalizeRanges(ranges).reduce((n, [s, e]) => n + (e - s), 0);
}

/**
 * The content of a stale record: the whole volume, or some blocks of it;
 * and `unsure` blocks, where the peer may hold a change no client was told
 * succeeded (it missed no acknowledged one there). Every one of them is
 * untrusted; only a coordinator may resolve the unsure ones, by comparing
 * versions (docs/replication.md, "Unsure blocks").
 */
export interface StaleSet {
  readonly all: boolean;
  readonly ranges: readonly BlockRange[];
  readonly unsure?: readonly BlockRange[];
}

function withUnsure(all: boolean, ranges: readonly BlockRange[], unsure: readonly BlockRange[]): StaleSet {
  return unsure.length === 0 ? { all, ranges } : { all, ranges, unsure };
}

/**
 * A stale set after adding blocks (or the whole volume): `all` absorbs every
 * range, unsure ones too, and more than `rangesMax` ranges collapse to `all`
 * (safe: a record may name more blocks than were missed, never fewer).
 */
export function addToStale(current: StaleSet | null, add: { readonly all?: boolean; readonly ranges?: readonly BlockRange[]; readonly unsure?: readonly BlockRange[] }, rangesMax = STALE_RANGES_MAX): StaleSet {
  if (current?.all === true || add.all === true) return { all: true, ranges: [] };
  const ranges = mergeRanges(current?.ranges ?? [], add.ranges ?? []);
  const unsure = mergeRanges(current?.unsure ?? [], add.unsure ?? []);
  if (ranges.length + unsure.length > rangesMax) return { all: true, ranges: [] };
  return withUnsure(false, ranges, unsure);
}

/**
 * A stale set after the blocks in `remove` caught up (or were resolved);
 * null when nothing is left (the record goes). Both kinds of a block go. A
 * set that is `all` stays `all` unless `remove` is 'all': the metadata
 * layer does not know the volume's size, so "the whole volume except these
 * blocks" cannot be written down, and keeping the record whole is the safe
 * side (the blocks are copied again).
 */
export function removeFromStale(current: StaleSet | null, remove: readonly BlockRange[] | 'all'): StaleSet | null {
  if (current === null || remove === 'all') return null;
  if (current.all) return current;
  const ranges = subtractRanges(current.ranges, remove);
  const unsure = subtractRanges(current.unsure ?? [], remove);
  return ranges.length === 0 && unsure.length === 0 ? null : withUnsure(false, ranges, unsure);
}

/**
 * A stale set after a catch-up plan showed that only the blocks in `keep`
 * may still be behind (src/replication/catch-up-plan.ts): its missed
 * blocks become exactly `keep`, whatever the set named before (the whole
 * volume, a list, or nothing: there was no record); unsure blocks stay
 * (only a coordinator's comparison resolves them). Null when nothing is
 * left. A `keep` too fragmented to list leaves the set as it is (still
 * the safe side).
 *
 * Replacing, not intersecting: the coordinator's memory names exactly
 * `keep` once the narrowing lands, so etcd must too. A record that named
 * less by then (an earlier narrowing or clear applied whose answer was
 * lost, so memory still held the whole volume) kept only the overlap,
 * and etcd trusted the peer for blocks its coordinator still held stale
 * (found by test/unit/stale-book-interleavings.test.ts). Naming more
 * is the safe side: those blocks are compared again.
 */
export function narrowStaleSet(current: StaleSet | null, keep: readonly BlockRange[], rangesMax = STALE_RANGES_MAX): StaleSet | null {
  const kept = normalizeRanges(keep);
  if (kept.length > rangesMax) return current;
  const unsure = current?.unsure ?? [];
  return kept.length === 0 && unsure.length === 0 ? null : withUnsure(false, kept, unsure);
}

/** The record of a peer that had none, holding `set`. */
export function newStaleRecord(volumeId: number, peer: string, set: StaleSet, updatedAt: string): StaleRecord {
  return { schema: 1, volumeId, peer, all: set.all, ranges: set.ranges, ...(set.unsure && set.unsure.length > 0 ? { unsure: set.unsure } : {}), updatedAt };
}

/** The record that holds `set` in place of `current` (an empty unsure list is left out). */
export function staleRecordOf<R extends StaleSet & { readonly updatedAt: string }>(current: R, set: StaleSet, updatedAt: string): R {
  const { unsure: _drop, ...rest } = current;
  return { ...rest, all: set.all, ranges: set.ranges, ...(set.unsure && set.unsure.length > 0 ? { unsure: set.unsure } : {}), updatedAt } as R;
}

/** Whether a stale set names block `index` (either kind). */
export function staleContains(set: StaleSet, index: number): boolean {
  return set.all || rangesContain(set.ranges, index) || rangesContain(set.unsure ?? [], index);
}

/** Indexes (any order, repeats allowed) → the fewest ranges covering exactly them. */
export function indexesToRanges(indexes: readonly number[]): BlockRange[] {
  return normalizeRanges(indexes.map((i) => [i, i + 1] as const));
}
