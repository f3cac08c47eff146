import type { BlockRef } from '../model/block-ref.js';
import { assert } from '../util/assert.js';

/**
 * The blocks a store holds, ordered by (volumeId, generation, index), for
 * list() with a cursor: a scan (rebalance, catch-up, scrub, GC) pages
 * through a store while writes go on, so the order must be stable under
 * inserts and deletes and a page must not cost a sort of the whole store.
 *
 * One sorted array per volume (binary search, splice): inserts cost O(n) in
 * the volume's block count (a memmove, about 1 ms per million blocks), which
 * happens once per new block, never per write.
 */
export class RefIndex<T extends { readonly ref: BlockRef }> {
  /** volumeId -> items sorted by (generation, index). */
  private readonly volumes = new Map<number, T[]>();
  /** Volume ids in ascending order. */
  private volumeOrder: number[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  add(item: T): void {
    const ref = item.ref;
    let arr = this.volumes.get(ref.volumeId);
    if (arr === undefined) {
      arr = [];
      this.volumes.set(ref.volumeId, arr);
      this.volumeOrder.splice(lowerBound(this.volumeOrder, ref.volumeId), 0, ref.volumeId);
    }
    const at = lowerBoundRef(arr, ref.generation, ref.index);
    const there = arr[at];
    assert(there === undefined || there.ref.generation !== ref.generation || there.ref.index !== ref.index, 'a block is indexed once');
    arr.splice(at, 0, item);
    this.count++;
  }

  remove(ref: BlockRef): void {
    const arr = this.volumes.get(ref.volumeId);
    assert(arr !== undefined, 'a removed block was indexed');
    const at = lowerBoundRef(arr, ref.generation, ref.index);
    const there = arr[at];
    assert(there !== undefined && there.ref.generation === ref.generation && there.ref.index === ref.index, 'a removed block was indexed');
    arr.splice(at, 1);
    this.count--;
    if (arr.length === 0) {
      this.volumes.delete(ref.volumeId);
      this.volumeOrder.splice(lowerBound(this.volumeOrder, ref.volumeId), 1);
    }
  }

  /** The items of one volume, in order (a copy: callers may change the index while they walk it). */
  ofVolume(volumeId: number): T[] {
    return [...(this.volumes.get(volumeId) ?? [])];
  }

  volumeIds(): number[] {
    return [...this.volumeOrder];
  }

  /**
   * Up to `limit` items after `after` (exclusive; null: from the start), of
   * one volume or of all, in order. `keep` filters without ending the page
   * early (it is applied before the limit counts).
   */
  list(opts: { readonly volumeId?: number; readonly after?: BlockRef | null; readonly limit: number }, keep: (item: T) => boolean = () => true): T[] {
    assert(Number.isInteger(opts.limit) && opts.limit >= 0, 'limit is a non-negative integer');
    const out: T[] = [];
    if (opts.limit === 0) return out;
    const after = opts.after ?? null;
    let vi: number;
    if (opts.volumeId !== undefined) {
      if (after !== null && after.volumeId > opts.volumeId) return out;
      vi = lowerBound(this.volumeOrder, opts.volumeId);
      if (this.volumeOrder[vi] !== opts.volumeId) return out;
    } else {
      vi = after === null ? 0 : lowerBound(this.volumeOrder, after.volumeId);
    }
    for (; vi < this.volumeOrder.length; vi++) {
      const volumeId = this.volumeOrder[vi]!;
      if (opts.volumeId !== undefined && volumeId !== opts.volumeId) break;
      const arr = this.volumes.get(volumeId)!;
      let i = 0;
      if (after !== null && after.volumeId === volumeId) {
        i = lowerBoundRef(arr, after.generation, after.index);
        const there = arr[i];
        if (there !== undefined && there.ref.generation === after.generation && there.ref.index === after.index) i++;
      }
      for (; i < arr.length; i++) {
        const item = arr[i]!;
        if (!keep(item)) continue;
        out.push(item);
        if (out.length >= opts.limit) return out;
      }
    }
    return out;
  }
}

function lowerBound(arr: readonly number[], v: number): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The first position whose (generation, index) is not below the given one. */
function lowerBoundRef(arr: readonly { readonly ref: BlockRef }[], generation: number, index: number): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const r = arr[mid]!.ref;
    if (r.generation < generation || (r.generation === generation && r.index < index)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
