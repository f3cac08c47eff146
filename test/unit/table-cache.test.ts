import { describe, expect, it } from 'vitest';
import { TableCache, type TableHolder } from '../../src/store/table-cache.js';

interface Item extends TableHolder {
  readonly id: number;
  pinned: boolean;
}

function items(n: number): Item[] {
  return Array.from({ length: n }, (_, id) => ({ id, pinned: false, crc: null, tableUsed: false }));
}

function cache(max: number, dropped: number[] = []): TableCache<Item> {
  return new TableCache<Item>(
    max,
    (e) => !e.pinned,
    (e) => void dropped.push(e.id),
  );
}

describe('TableCache', () => {
  it('keeps at most max tables, dropping those unused since the last sweep first', async () => {
    const dropped: number[] = [];
    const c = cache(8, dropped);
    const all = items(8);
    for (const e of all) c.hold(e, new Uint32Array(4));
    expect(c.size).toBe(8);
    // As after a sweep (which clears every use bit); items 0-3 are used again since.
    for (const e of all) e.tableUsed = false;
    for (const e of all.slice(0, 4)) c.use(e);
    const fresh = items(2).map((e) => ({ ...e, id: 100 + e.id }));
    for (const e of fresh) c.hold(e, new Uint32Array(4));
    // The first over max sweeps down to 7/8 of it, the unused ones (4-7)
    // going first, oldest first; the second fits again.
    expect(dropped).toEqual([4, 5]);
    expect(c.size).toBe(8);
    for (const e of all.slice(0, 4)) expect(e.crc).not.toBeNull();
    for (const e of all) if (dropped.includes(e.id)) expect(e.crc).toBeNull();
  });

  it('never drops a table the store says must stay, and does not sweep again on every hold when it cannot shrink', async () => {
    const dropped: number[] = [];
    const c = cache(4, dropped);
    const all = items(12);
    for (const e of all) {
      e.pinned = true;
      c.hold(e, new Uint32Array(1));
    }
    expect(c.size).toBe(12);
    expect(dropped).toEqual([]);
    // Unpinned (their headers durable): the next sweep brings the cache back under max.
    for (const e of all) e.pinned = false;
    c.sweep();
    expect(c.size).toBeLessThanOrEqual(4);
    expect(all.filter((e) => e.crc !== null).length).toBe(c.size);
  });

  it('never drops the table it was just asked to hold, even when nothing else can go', () => {
    const c = cache(2);
    const [a, b, n] = items(3) as [Item, Item, Item];
    for (const e of [a, b]) {
      e.pinned = true;
      c.hold(e, new Uint32Array(1));
    }
    const t = new Uint32Array(1);
    c.hold(n, t);
    expect(c.use(n)).toBe(t);
    expect(c.size).toBe(3);
  });

  it('use() marks a held table and answers null for one not in memory; release() forgets it', () => {
    const c = cache(2);
    const [a] = items(1) as [Item];
    expect(c.use(a)).toBeNull();
    const t = new Uint32Array(2);
    c.hold(a, t);
    a.tableUsed = false;
    expect(c.use(a)).toBe(t);
    expect(a.tableUsed).toBe(true);
    c.release(a);
    expect(a.crc).toBeNull();
    expect(c.size).toBe(0);
  });
});
