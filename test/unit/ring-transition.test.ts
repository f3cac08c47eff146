import { describe, expect, it } from 'vitest';
import { validateRing } from '../../src/metadata/validate.js';
import { blockRef } from '../../src/model/block-ref.js';
import type { RingMember, RingRecord } from '../../src/model/records.js';
import { replicasOf } from '../../src/ring/placement.js';
import { ownersOf as blockOwners } from '../../src/replication/owners.js';
import { advanceRing, completePlacement, minReplicasDefault, ownersOf, planRingChange, ringPhase, samePlacement } from '../../src/ring/transition.js';
import { expectCode } from '../helpers/metadata-contract.js';

const NOW = Date.parse('2024-06-01T10:00:00Z');
const m = (...uuids: string[]): RingMember[] => uuids.map((uuid) => ({ uuid, weight: 100 }));

function stable(members: RingMember[], replication = 2, version = 5): RingRecord {
  return { schema: 2, version, replication, minReplicas: minReplicasDefault(replication), members, transition: null };
}

function plan(ring: RingRecord, members: RingMember[], replication = ring.replication, min = ring.minReplicas, reason = 'test'): RingRecord | null {
  const next = planRingChange(ring, members, replication, min, reason, NOW);
  if (next !== null) validateRing(next); // every plan is a ring setRing accepts
  return next;
}

describe('minReplicasDefault', () => {
  it('is R - floor(R/2)', () => {
    expect([1, 2, 3, 4, 5, 16].map(minReplicasDefault)).toEqual([1, 1, 2, 2, 3, 8]);
  });

  it('refuses non-positive replication', async () => {
    await expectCode(Promise.resolve().then(() => minReplicasDefault(0)), 'TORUS_ERR_ARG_INVALID');
  });
});

describe('planRingChange', () => {
  it('from stable: a moving transition from the current placement, keyed by the new version', () => {
    const ring = stable(m('a', 'b'));
    const next = plan(ring, m('a', 'b', 'c'), 2, 1, 'peer add c')!;
    expect(next).toEqual({
      schema: 2,
      version: 6,
      replication: 2,
      minReplicas: 1,
      members: m('a', 'b', 'c'),
      transition: { from: { members: m('a', 'b'), replication: 2 }, phase: 'moving', startedVersion: 6, startedAt: '2024-06-01T10:00:00.000Z', reason: 'peer add c' },
    });
    expect(ringPhase(next)).toBe('moving');
  });

  it('during moving: a new moving transition from the same from, carrying the replaced target', () => {
    const moving = plan(stable(m('a', 'b')), m('a', 'b', 'c'))!;
    const next = plan(moving, m('a', 'b', 'c', 'd'), 2, 1, 'peer add d')!;
    expect(next.version).toBe(7);
    expect(next.transition).toMatchObject({ from: { members: m('a', 'b'), replication: 2 }, carried: [{ members: m('a', 'b', 'c'), replication: 2 }], phase: 'moving', startedVersion: 7, reason: 'peer add d' });
    expect(next.members).toEqual(m('a', 'b', 'c', 'd'));
  });

  it('carried owners stay owners (asked, never read on their own) until the new transition is stable', () => {
    const moving = plan(stable(m('a', 'b')), m('a', 'b', 'c'))!;
    const next = plan(moving, m('a', 'b'))!;
    let seen = 0;
    for (let i = 0; i < 64; i++) {
      const ref = blockRef(1, 1, i);
      const o = blockOwners(next, ref);
      expect(o.old).toEqual(replicasOf({ members: m('a', 'b'), replication: 2 }, ref));
      for (const u of replicasOf({ members: m('a', 'b', 'c'), replication: 2 }, ref)) expect(o.all).toContain(u);
      expect(o.carried.every((u) => u === 'c')).toBe(true);
      seen += o.carried.length;
    }
    expect(seen).toBeGreaterThan(0); // c owned some of the 64 blocks under the replaced target
    expect(blockOwners(advanceRing(advanceRing(next)), blockRef(1, 1, 0)).carried).toEqual([]);
  });

  it('carries at most four replaced targets, then refuses until the transition settles', async () => {
    let ring = plan(stable(m('a', 'b')), m('a', 'b', 'c'))!;
    for (const x of ['d', 'e', 'f', 'g']) ring = plan(ring, [...ring.members, ...m(x)])!;
    expect(ring.transition!.carried).toHaveLength(4);
    await expectCode(Promise.resolve().then(() => plan(ring, [...ring.members, ...m('h')])), 'TORUS_ERR_RING_TRANSITION');
  });

  it('during settled: a new moving transition from the settled placement', () => {
    const settled = advanceRing(plan(stable(m('a', 'b')), m('a', 'b', 'c'))!);
    expect(ringPhase(settled)).toBe('settled');
    const next = plan(settled, m('b', 'c'), 2, 1, 'peer remove a')!;
    expect(next.transition).toMatchObject({ from: { members: m('a', 'b', 'c'), replication: 2 }, phase: 'moving', startedVersion: settled.version + 1 });
  });

  it('a change of minReplicas alone bumps the version and keeps placement and transition', () => {
    const ring = stable(m('a', 'b', 'c'), 3);
    expect(plan(ring, m('a', 'b', 'c'), 3, 2)).toBeNull();
    expect(plan(ring, m('c', 'b', 'a'), 3, 2)).toBeNull(); // member order does not matter
    expect(plan(ring, m('a', 'b', 'c'), 3, 3)).toEqual({ ...ring, version: 6, minReplicas: 3 });
    const moving = plan(ring, m('a', 'b'), 2, 1)!;
    const min2 = plan(moving, m('a', 'b'), 2, 2)!;
    expect(min2).toEqual({ ...moving, version: moving.version + 1, minReplicas: 2 });
  });

  it('going back to the complete placement while moving is a transition that carries the replaced target (seed 1375), not stable at once', () => {
    const ring = stable(m('a', 'b'));
    const moving = plan(ring, m('a', 'b', 'c'))!;
    const back = plan(moving, m('a', 'b'))!;
    expect(back.members).toEqual(m('a', 'b'));
    expect(back.transition).toMatchObject({ from: { members: m('a', 'b'), replication: 2 }, carried: [{ members: m('a', 'b', 'c'), replication: 2 }], phase: 'moving', startedVersion: 7 });
    // Once settled and stable, nothing is carried any more.
    expect(advanceRing(advanceRing(back)).transition).toBeNull();
  });

  it('from an empty ring the change is stable at once (no block has a copy to move)', () => {
    const empty = stable([], 2, 1);
    expect(plan(empty, m('a'))).toEqual({ ...empty, version: 2, members: m('a') });
  });

  it('a change of replication or weight is a transition', () => {
    const ring = stable(m('a', 'b', 'c'), 2);
    expect(plan(ring, m('a', 'b', 'c'), 3, 2)!.transition).toMatchObject({ from: { replication: 2 }, phase: 'moving' });
    expect(plan(ring, [{ uuid: 'a', weight: 50 }, ...m('b', 'c')])!.transition?.phase).toBe('moving');
  });

  it('refuses minReplicas outside 1..replication', async () => {
    const ring = stable(m('a', 'b'));
    for (const min of [0, 3, 1.5]) await expectCode(Promise.resolve().then(() => plan(ring, m('a', 'b'), 2, min)), 'TORUS_ERR_ARG_INVALID');
  });

  it('cuts long reasons', () => {
    const next = plan(stable(m('a')), m('a', 'b'), 2, 1, 'x'.repeat(1000))!;
    expect(next.transition!.reason.length).toBe(256);
  });
});

describe('advanceRing', () => {
  it('moving -> settled -> stable, one version each, keeping the start', () => {
    const moving = plan(stable(m('a', 'b')), m('a', 'c'))!;
    const settled = advanceRing(moving);
    expect(settled).toEqual({ ...moving, version: moving.version + 1, transition: { ...moving.transition!, phase: 'settled' } });
    validateRing(settled);
    const done = advanceRing(settled);
    expect(done).toEqual({ ...settled, version: settled.version + 1, transition: null });
    validateRing(done);
  });

  it('refuses a stable ring', async () => {
    await expectCode(Promise.resolve().then(() => advanceRing(stable(m('a')))), 'TORUS_ERR_RING_TRANSITION');
  });
});

describe('ownersOf', () => {
  it('stable: only new owners, the ring replicas', () => {
    const ring = stable(m('a', 'b', 'c'));
    const ref = blockRef(1, 1, 7);
    expect(ownersOf(ring, ref)).toEqual({ old: null, new: replicasOf(ring, ref) });
  });

  it('during a transition: old owners under from, new owners under the ring', () => {
    const from = stable(m('a', 'b', 'c'));
    const moving = plan(from, m('a', 'b', 'c', 'd', 'e'), 3, 2)!;
    let moved = 0;
    for (let i = 0; i < 500; i++) {
      const ref = blockRef(3, 1, i);
      const o = ownersOf(moving, ref);
      expect(o.old).toEqual(replicasOf(from, ref));
      expect(o.new).toEqual(replicasOf(moving, ref));
      expect(o.new).toHaveLength(3);
      if (o.old!.join() !== o.new.join()) moved++;
    }
    expect(moved).toBeGreaterThan(0);
    expect(completePlacement(moving)).toEqual({ members: m('a', 'b', 'c'), replication: 2 });
    expect(completePlacement(advanceRing(moving))).toEqual({ members: moving.members, replication: 3 });
  });

  it('samePlacement ignores member order but not weights or replication', () => {
    expect(samePlacement({ members: m('a', 'b'), replication: 2 }, { members: m('b', 'a'), replication: 2 })).toBe(true);
    expect(samePlacement({ members: m('a', 'b'), replication: 2 }, { members: m('a', 'b'), replication: 1 })).toBe(false);
    expect(samePlacement({ members: m('a'), replication: 1 }, { members: [{ uuid: 'a', weight: 1 }], replication: 1 })).toBe(false);
    expect(samePlacement({ members: m('a'), replication: 1 }, { members: m('b'), replication: 1 })).toBe(false);
  });
});
