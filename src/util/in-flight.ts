import { assert } from './assert.js';

/**
 * Work in flight (requests, background tasks), so that a flush or a close
 * can wait for whatever runs at that moment. A Set would do, but adding
 * and deleting an item per request makes V8 rebuild a long-lived Set's
 * table in the old generation every few dozen requests (util/recency.ts
 * says why that matters); here an item takes a slot that is reused once it
 * is let go, so the arrays grow to the most ever in flight and stay there.
 */
export class InFlight<T> {
  private readonly slots: (T | null)[] = [];
  /** Free slot numbers, a stack: free[0 .. freeTop). */
  private readonly free: number[] = [];
  private freeTop = 0;
  private count = 0;

  /** Tracks `item`; returns its slot, for delete(). */
  add(item: T): number {
    const slot = this.freeTop > 0 ? this.free[--this.freeTop]! : this.slots.length;
    this.slots[slot] = item;
    this.count++;
    return slot;
  }

  delete(slot: number): void {
    assert(this.slots[slot] !== null && this.slots[slot] !== undefined, 'an in-flight slot is let go once');
    this.slots[slot] = null;
    this.free[this.freeTop++] = slot;
    this.count--;
  }

  get size(): number {
    return this.count;
  }

  /** The items in flight now (a new array). */
  values(): T[] {
    const out: T[] = [];
    for (const item of this.slots) if (item !== null) out.push(item);
    return out;
  }
}

/** Waits until every promise in flight now has settled (ones added later are not waited for). */
export function allSettledNow(inFlight: InFlight<Promise<unknown>>): Promise<unknown> {
  return Promise.allSettled(inFlight.values());
}

/** Tracks `p` in `inFlight` until it settles. */
export function trackUntilSettled(inFlight: InFlight<Promise<unknown>>, p: Promise<unknown>): void {
  const slot = inFlight.add(p);
  const done = (): void => inFlight.delete(slot);
  p.then(done, done);
}
