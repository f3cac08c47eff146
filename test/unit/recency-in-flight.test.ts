import { describe, expect, it } from 'vitest';
import { BlockOrder } from '../../src/replication/block-order.js';
import { BlockTable, type BlockEntry } from '../../src/replication/block-table.js';
import { IDLE_KEPT_MAX, IdleSweep } from '../../src/util/idle-sweep.js';
import { allSettledNow, InFlight, trackUntilSettled } from '../../src/util/in-flight.js';
import { Recency, STAMP_MAX } from '../../src/util/recency.js';

function entry(index: number, pins = 0): BlockEntry {
  return {
    index,
    version: 0,
    committed: 0,
    inflight: 0,
    drained: null,
    state: 'absent',
    digest: null,
    floor: 0,
    acked: 0,
    holders: new Map(),
    metas: new Map(),
    unsure: false,
    pins,
  };
}

describe('Recency', () => {
  it('lists keys least recently used first, a use moving a key to the end', () => {
    const r = new Recency<string>();
    for (const k of ['a', 'b', 'c', 'd']) r.use(k);
    r.use('b');
    r.use('a');
    expect(r.oldestFirst()).toEqual(['c', 'd', 'b', 'a']);
    r.forget('d');
    expect(r.oldestFirst()).toEqual(['c', 'b', 'a']);
    expect(r.size).toBe(3);
  });

  it('renumbers its stamps before they leave the small-integer range, keeping the order', () => {
    const r = new Recency<number>();
    for (let k = 0; k < 5; k++) r.use(k);
    // Jump the clock to the limit: the next use renumbers first.
    (r as unknown as { tick: number }).tick = STAMP_MAX;
    r.use(2);
    expect(r.oldestFirst()).toEqual([0, 1, 3, 4, 2]);
    const stamps = (r as unknown as { stamps: Map<number, number> }).stamps;
    expect(Math.max(...stamps.values())).toBe(6); // 1..5 renumbered, then the use
  });
});

describe('BlockTable', () => {
  it('evicts idle entries least recently used first, never a pinned one, down to 90 % of its limit', () => {
    const t = new BlockTable(20);
    for (let i = 0; i < 20; i++) t.set(entry(i, i === 0 ? 1 : 0));
    // Used again: 1 and 2 are now the most recent; 0 is pinned.
    t.get(1);
    t.get(2);
    t.set(entry(20));
    expect(t.size()).toBe(18);
    const kept = [...t.values()].map((e) => e.index).sort((a, b) => a - b);
    // The oldest idle ones went: 3, 4 and 5 (0 is pinned, 1 and 2 were used).
    expect(kept).toEqual([0, 1, 2, ...Array.from({ length: 15 }, (_, i) => i + 6)]);
  });

  it('peek does not count as a use', () => {
    const t = new BlockTable(16);
    for (let i = 0; i < 16; i++) t.set(entry(i));
    t.peek(0);
    t.set(entry(16));
    expect(t.peek(0)).toBeUndefined();
  });
});

describe('InFlight', () => {
  it('reuses the slots of items let go and counts what is in flight', () => {
    const f = new InFlight<string>();
    const a = f.add('a');
    const b = f.add('b');
    f.delete(a);
    const c = f.add('c');
    expect(c).toBe(a);
    expect(f.size).toBe(2);
    expect(f.values().sort()).toEqual(['b', 'c']);
    f.delete(b);
    f.delete(c);
    expect(f.size).toBe(0);
    expect(() => f.delete(c)).toThrow();
  });

  it('waits for what runs now, not for what starts later', async () => {
    const f = new InFlight<Promise<unknown>>();
    let finishFirst!: () => void;
    const first = new Promise<void>((r) => (finishFirst = r));
    trackUntilSettled(f, first);
    const waited = allSettledNow(f);
    trackUntilSettled(f, new Promise(() => undefined)); // never settles
    let done = false;
    void waited.then(() => (done = true));
    await Promise.resolve();
    expect(done).toBe(false);
    finishFirst();
    await waited;
    expect(f.size).toBe(1);
  });

  it('lets a rejected promise go too', async () => {
    const f = new InFlight<Promise<unknown>>();
    const p = Promise.reject(new Error('no'));
    trackUntilSettled(f, p);
    await allSettledNow(f);
    expect(f.size).toBe(0);
  });
});

describe('IdleSweep', () => {
  it('keeps idle entries until there are more than its bound, then drops every idle one, never one in use', () => {
    const m = new IdleSweep<number, string>((v) => v === 'idle', 3);
    for (let k = 0; k < 5; k++) m.entries.set(k, 'busy');
    for (const k of [0, 1, 2]) {
      m.entries.set(k, 'idle');
      m.slept();
    }
    expect(m.entries.size).toBe(5);
    expect(m.busy).toBe(2);
    m.entries.set(1, 'busy'); // in use again
    m.woke();
    m.entries.set(3, 'idle');
    m.slept();
    m.entries.set(4, 'idle');
    m.slept(); // the fourth idle one: sweep
    expect([...m.entries.keys()].sort()).toEqual([1]);
    expect(m.busy).toBe(1);
  });
});

describe('BlockOrder', () => {
  it('keeps idle slots between uses and sweeps them past its bound, counting only busy blocks', async () => {
    const o = new BlockOrder();
    for (let i = 0; i < 5000; i++) (await o.shared(i))();
    expect(o.busy()).toBe(0);
    const slots = (o as unknown as { slots: IdleSweep<number, unknown> }).slots;
    expect(slots.entries.size).toBeLessThanOrEqual(IDLE_KEPT_MAX + 1);
    const held = await o.exclusive(7);
    expect(o.busy()).toBe(1);
    let second = false;
    const waited = o.shared(7).then((r) => {
      second = true;
      r();
    });
    await Promise.resolve();
    expect(second).toBe(false);
    held();
    await waited;
    expect(second).toBe(true);
    expect(o.busy()).toBe(0);
  });

  it('gives a shared hold at once only when shared() would resolve at once, in arrival order', async () => {
    const o = new BlockOrder();
    const a = o.tryShared(3);
    expect(a).not.toBeNull();
    const b = o.tryShared(3);
    expect(b).not.toBeNull();
    expect(o.busy()).toBe(1);
    // A copy waits for the two shared holds; a later shared hold waits behind it.
    let copied = false;
    const copy = o.exclusive(3).then((r) => {
      copied = true;
      return r;
    });
    expect(o.tryShared(3)).toBeNull();
    a!();
    b!();
    const release = await copy;
    expect(copied).toBe(true);
    expect(o.tryShared(3)).toBeNull();
    release();
    const c = o.tryShared(3);
    expect(c).not.toBeNull();
    c!();
    expect(o.busy()).toBe(0);
    expect(() => c!()).toThrow(/released once/);
  });
});
