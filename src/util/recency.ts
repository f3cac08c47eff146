import { assert } from './assert.js';

/**
 * Least-recently-used order for a bounded cache, without allocating per use.
 *
 * The usual LRU on a JS Map (delete the key and set it again, so insertion
 * order is recency order) makes V8 rebuild the Map's hash table every few
 * hundred uses: a deleted entry's slot is only reclaimed by a rebuild. The
 * table of a long-lived Map lives in the old generation and so does every
 * rebuilt one: under 4 KiB random writes the coordinator's block table and
 * the store's descriptor cache rebuilt theirs tens of times a second, most
 * of torusd's old-generation garbage (docs/perf/profile.md, "Old-generation
 * garbage"). Here a use writes a small-integer stamp into an entry that is
 * already there, which changes no table, and only the rare eviction sorts.
 */
export class Recency<K> {
  private readonly stamps = new Map<K, number>();
  private tick = 0;

  /** Marks `key` used now, adding it when it is new. */
  use(key: K): void {
    if (this.tick >= STAMP_MAX) this.renumber();
    this.stamps.set(key, ++this.tick);
  }

  forget(key: K): void {
    this.stamps.delete(key);
  }

  get size(): number {
    return this.stamps.size;
  }

  /** Every key, in no particular order. */
  keys(): IterableIterator<K> {
    return this.stamps.keys();
  }

  /** A snapshot of the keys, least recently used first (for eviction: it sorts them all). */
  oldestFirst(): K[] {
    return [...this.stamps].sort((a, b) => a[1] - b[1]).map(([k]) => k);
  }

  /** Stamps stay small integers (V8 stores them unboxed): renumbered 1..n in the same order. */
  private renumber(): void {
    const order = this.oldestFirst();
    this.tick = 0;
    for (const k of order) this.stamps.set(k, ++this.tick);
    assert(this.tick < STAMP_MAX, 'renumbered stamps fit below the limit');
  }
}

/** Below V8's small-integer limit (2^30 - 1 with pointer compression). */
export const STAMP_MAX = 2 ** 29;
