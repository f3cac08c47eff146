import { describe, expect, it } from 'vitest';
import { blockRef } from '../../src/model/block-ref.js';
import type { RingMember } from '../../src/model/records.js';
import { checkDownOut, DOWN_OUT_FILL_MAX, DOWN_OUT_SAMPLES_MAX, DOWN_OUT_SAMPLES_MIN, downOutShares, type DownOutShares, type PeerFigures } from '../../src/ring/down-out.js';
import { replicasOf } from '../../src/ring/placement.js';

const GiB = 1024 ** 3;
const members = (n: number, weight = 1): RingMember[] => Array.from({ length: n }, (_, i) => ({ uuid: `peer-${i}`, weight }));
const sum = (m: ReadonlyMap<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

/** Shares by hand, so that the check's arithmetic is exact. */
function shares(member: string, copyShare: Record<string, number>, gainShare: Record<string, number>): DownOutShares {
  return { member, samples: 0, copyShare: new Map(Object.entries(copyShare)), gainShare: new Map(Object.entries(gainShare)) };
}

function figures(f: Record<string, [capacity: number, used: number]>): Map<string, PeerFigures> {
  return new Map(Object.entries(f).map(([u, [capacity, used]]) => [u, { capacity, used }]));
}

describe('down-out shares (where a member\'s copies go without it)', () => {
  it('splits the copies of equal members evenly, and the leaving member\'s among the survivors', () => {
    const ring = { members: members(4), replication: 2 };
    const s = downOutShares(ring, 'peer-3');
    expect(sum(s.copyShare)).toBeCloseTo(1, 9);
    for (const v of s.copyShare.values()) expect(Math.abs(v - 0.25)).toBeLessThan(0.01);
    expect(sum(s.gainShare)).toBeCloseTo(1, 9);
    expect(s.gainShare.has('peer-3')).toBe(false);
    for (const v of s.gainShare.values()) expect(Math.abs(v - 1 / 3)).toBeLessThan(0.01);
    expect(downOutShares(ring, 'peer-3')).toEqual(s);
  });

  it('agrees block by block with the ring without the member (uneven weights)', () => {
    for (const [weights, replication] of [
      [[4, 1, 1, 2], 2],
      [[3, 1, 2, 1, 5], 3],
      [[1, 1, 1], 1],
    ] as const) {
      const ring = { members: weights.map((weight, i) => ({ uuid: `peer-${i}`, weight })), replication };
      const gone = 'peer-0';
      const after = { members: ring.members.filter((m) => m.uuid !== gone), replication };
      // What the placement code does with other refs than the estimate's.
      const gained = new Map<string, number>();
      let held = 0;
      let othersMoved = 0;
      for (let i = 0; i < 40_000; i++) {
        const ref = blockRef(9, 1, i);
        const before = replicasOf(ring, ref);
        if (!before.includes(gone)) continue;
        held++;
        const now = replicasOf(after, ref);
        // Only the member's copy moves: the other owners stay.
        if (!before.filter((u) => u !== gone).every((u) => now.includes(u))) othersMoved++;
        for (const u of now) if (!before.includes(u)) gained.set(u, (gained.get(u) ?? 0) + 1);
      }
      expect(othersMoved).toBe(0);
      const s = downOutShares(ring, gone);
      for (const m of after.members) expect(Math.abs((s.gainShare.get(m.uuid) ?? 0) - (gained.get(m.uuid) ?? 0) / held), `${weights.join(',')} R=${replication} ${m.uuid}`).toBeLessThan(0.02);
    }
  });

  it('spends about the same on a large ring as on a small one', () => {
    expect(downOutShares({ members: members(3), replication: 2 }, 'peer-0').samples).toBe(DOWN_OUT_SAMPLES_MAX);
    expect(downOutShares({ members: members(100), replication: 3 }, 'peer-0').samples).toBeGreaterThanOrEqual(DOWN_OUT_SAMPLES_MIN);
    expect(downOutShares({ members: members(2000), replication: 3 }, 'peer-0', 64).samples).toBe(64);
  });

  it('gives each survivor of a large ring its share without per-block noise', () => {
    const s = downOutShares({ members: members(100), replication: 3 }, 'peer-0');
    expect(sum(s.gainShare)).toBeCloseTo(1, 9);
    // 1/99 each; counted one block at a time a few samples would make it 0 or 3 %.
    for (const v of s.gainShare.values()) expect(Math.abs(v - 1 / 99)).toBeLessThan(0.004);
  });
});

describe('down-out limits', () => {
  it('holds when fewer than R members would remain', () => {
    const ring = { members: members(2), replication: 2 };
    const check = checkDownOut({ ring, member: 'peer-1', shares: downOutShares(ring, 'peer-1'), peers: figures({ 'peer-0': [GiB, 0] }) });
    expect(check).toEqual({ ok: false, reason: 'replication', survivors: 1, replication: 2 });
    const r1 = { members: members(2), replication: 1 };
    expect(checkDownOut({ ring: r1, member: 'peer-1', shares: downOutShares(r1, 'peer-1'), peers: figures({ 'peer-0': [GiB, 0] }) }).ok).toBe(true);
  });

  it('holds when a survivor never reported its figures', () => {
    const ring = { members: members(3), replication: 2 };
    const check = checkDownOut({ ring, member: 'peer-2', shares: downOutShares(ring, 'peer-2'), peers: figures({ 'peer-0': [GiB, 0] }) });
    expect(check).toEqual({ ok: false, reason: 'unknown', survivor: 'peer-1' });
  });

  it('counts the copies each survivor gains, not the survivors\' summed usage', () => {
    // The audit's case: together a and b are 40 % full, but b is small and
    // takes half of c's 30 GiB: 5 + 15 of 20 GiB is 100 %.
    const ring = { members: [{ uuid: 'a', weight: 80 }, { uuid: 'b', weight: 20 }, { uuid: 'c', weight: 50 }], replication: 2 };
    const sh = shares('c', { a: 0.4, b: 0.2, c: 0.4 }, { a: 0.5, b: 0.5 });
    const check = checkDownOut({ ring, member: 'c', shares: sh, peers: figures({ a: [80 * GiB, 35 * GiB], b: [20 * GiB, 5 * GiB], c: [50 * GiB, 30 * GiB] }) });
    expect(check.ok).toBe(false);
    if (check.ok || check.reason !== 'fill') throw new Error('expected a fill hold');
    expect(check.worst).toEqual({ uuid: 'b', capacityBytes: 20 * GiB, usedBytes: 5 * GiB, addedBytes: 15 * GiB, fillAfter: 1 });
    expect(check.over).toBe(1);
    expect(check.fillMax).toBe(DOWN_OUT_FILL_MAX);
  });

  it('allows a down-out that leaves every survivor at 85 % or less, and holds one just past it', () => {
    const ring = { members: members(3), replication: 2 };
    const sh = shares('peer-2', { 'peer-0': 0.375, 'peer-1': 0.375, 'peer-2': 0.25 }, { 'peer-0': 0.5, 'peer-1': 0.5 });
    const at = (used: number) => checkDownOut({ ring, member: 'peer-2', shares: sh, peers: figures({ 'peer-0': [100, 20], 'peer-1': [100, used], 'peer-2': [100, 60] }) });
    // Its record (60) beats its share of 75 (25): 30 bytes each; peer-1 ends at 85 exactly.
    const ok = at(55);
    expect(ok.ok).toBe(true);
    if (!ok.ok) throw new Error('expected ok');
    expect(ok.estimate).toEqual({ bytes: 60, fromRecord: 60, fromShare: 25 });
    expect(ok.survivors.map((f) => [f.uuid, f.addedBytes, f.fillAfter])).toEqual([
      ['peer-0', 30, 0.5],
      ['peer-1', 30, 0.85],
    ]);
    const held = at(55.5);
    expect(held.ok).toBe(false);
    if (held.ok || held.reason !== 'fill') throw new Error('expected a fill hold');
    expect(held.worst).toMatchObject({ uuid: 'peer-1', addedBytes: 30, fillAfter: 0.855 });
  });

  it('takes the larger of the last record and the ring share as what the member held', () => {
    const ring = { members: members(3), replication: 2 };
    const sh = shares('peer-2', { 'peer-0': 0.25, 'peer-1': 0.25, 'peer-2': 0.5 }, { 'peer-0': 0.5, 'peer-1': 0.5 });
    const estimate = (rec: number | null) => {
      const f = figures({ 'peer-0': [1000, 100], 'peer-1': [1000, 100] });
      if (rec !== null) f.set('peer-2', { capacity: 1000, used: rec });
      const c = checkDownOut({ ring, member: 'peer-2', shares: sh, peers: f });
      if (!c.ok) throw new Error('expected ok');
      return c.estimate;
    };
    expect(estimate(400)).toEqual({ bytes: 400, fromRecord: 400, fromShare: 200 });
    expect(estimate(30)).toEqual({ bytes: 200, fromRecord: 30, fromShare: 200 });
    // Never seen (this peer started after it died): its share of the ring.
    expect(estimate(null)).toEqual({ bytes: 200, fromRecord: null, fromShare: 200 });
  });

  it('does not count a survivor that gains nothing, and holds for one with no capacity that gains', () => {
    const ring = { members: members(3), replication: 1 };
    const full = figures({ 'peer-0': [100, 95], 'peer-1': [100, 10], 'peer-2': [100, 10] });
    expect(checkDownOut({ ring, member: 'peer-2', shares: shares('peer-2', { 'peer-0': 0.5, 'peer-1': 0.25, 'peer-2': 0.25 }, { 'peer-1': 1 }), peers: full }).ok).toBe(true);
    const none = figures({ 'peer-0': [0, 0], 'peer-1': [100, 10], 'peer-2': [100, 10] });
    const c = checkDownOut({ ring, member: 'peer-2', shares: shares('peer-2', { 'peer-0': 0.3, 'peer-1': 0.4, 'peer-2': 0.3 }, { 'peer-0': 0.5, 'peer-1': 0.5 }), peers: none });
    expect(!c.ok && c.reason === 'fill' && c.worst.uuid === 'peer-0' && c.worst.fillAfter === Infinity).toBe(true);
  });

  it('holds when the survivors store bytes but the ring gives them no share (nothing bounds the member\'s part)', () => {
    const ring = { members: members(2), replication: 1 };
    const c = checkDownOut({ ring, member: 'peer-1', shares: shares('peer-1', { 'peer-0': 0, 'peer-1': 1 }, { 'peer-0': 1 }), peers: figures({ 'peer-0': [100, 10] }) });
    expect(!c.ok && c.reason === 'fill' && c.estimate.bytes === Infinity).toBe(true);
  });
});
