/**
 * Each checker on hand-made states: it accepts the good one and names the
 * bad one. (The variants prove the same on whole runs; these pin down each
 * rule on its own, cheaply.)
 */
import { describe, expect, it } from 'vitest';
import { blockRef } from '../../src/model/block-ref.js';
import type { RingRecord } from '../../src/model/records.js';
import { makeVersion } from '../../src/model/version.js';
import { replicasOf } from '../../src/ring/placement.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { Checker, type StoreView } from './checker.js';
import { VolumeModel } from './model.js';
import { encodeSectors } from './sectors.js';

const BS = 4096;
const SPB = BS / 512;

function setup(n: number) {
  const views: StoreView[] = Array.from({ length: n }, (_, i) => ({ uuid: `peer-${i}-0000-0000-0000-000000000000`, alive: true, store: new MemoryBlockStore({ blockSize: BS, capacity: 1 << 20 }) }));
  const checker = new Checker(BS, () => views);
  const model = new VolumeModel('v', 1, 4 * SPB);
  return { views, checker, model };
}

const ring = (members: string[], replication: number): RingRecord => ({
  schema: 2,
  version: 3,
  replication,
  minReplicas: 1,
  members: members.map((uuid) => ({ uuid, weight: 1 })),
  transition: null,
});

describe('Checker', () => {
  it('G1/G4: a read of an older value or of garbage is named', () => {
    const { checker, model } = setup(1);
    model.acked({ op: 7, value: 7, handle: 1, doneSeq: 1 }, 0, SPB);
    expect(checker.checkRead(model, 0, encodeSectors(1, 7, 0, SPB))).toBeNull();
    expect(checker.checkRead(model, 0, Buffer.alloc(BS))?.guarantee).toBe('G1/G4');
    expect(checker.checkRead(model, 0, encodeSectors(1, 7, 1, SPB))?.message).toMatch(/garbage/);
  });

  it('G3: a write acknowledged with fewer copies than minReplicas, and a flush without durable copies', async () => {
    const { views, checker, model } = setup(3);
    const ref = blockRef(1, 1, 0);
    const data = Buffer.alloc(BS);
    encodeSectors(1, 5, 0, SPB).copy(data);
    await views[0]!.store.write(ref, 0, data, makeVersion(1, 1), { fua: false });
    model.acked({ op: 5, value: 5, handle: 1, doneSeq: 1 }, 0, SPB);
    const cand = model.allowed(0)[0]!;
    const all = () => new Set(views.map((v) => v.uuid));
    expect(checker.checkWriteAck(model, cand, 0, SPB, 1, all)).toBeNull();
    expect(checker.checkWriteAck(model, cand, 0, SPB, 2, all)?.guarantee).toBe('G3');
    // A copy on a peer that does not own the block does not count.
    expect(checker.checkWriteAck(model, cand, 0, SPB, 1, () => new Set([views[1]!.uuid]))?.guarantee).toBe('G3');
    const moved = model.flushed(1, 2);
    expect(checker.checkFlushAck(model, moved, 1)?.message).toMatch(/0 durable copies/);
    await views[0]!.store.flush();
    expect(checker.checkFlushAck(model, moved, 1)).toBeNull();
  });

  it('after a crash, only the owners given count as holding a value (a settled move\'s old owner does not)', async () => {
    const { views, checker, model } = setup(2);
    const ref = blockRef(1, 1, 0);
    const older = Buffer.alloc(BS);
    encodeSectors(1, 3, 0, SPB).copy(older);
    const newer = Buffer.alloc(BS);
    encodeSectors(1, 4, 0, SPB).copy(newer);
    await views[0]!.store.write(ref, 0, older, makeVersion(1, 1), { fua: true });
    await views[1]!.store.write(ref, 0, newer, makeVersion(1, 2), { fua: false });
    const all = checker.heldValues(model);
    expect([...all(0)].sort()).toEqual([3, 4]);
    const owners = checker.heldValues(model, () => new Set([views[0]!.uuid]));
    expect([...owners(0)]).toEqual([3]);
  });

  it('G6: a change with an older token after a newer one, unless the peer is recorded stale', () => {
    const { checker } = setup(1);
    expect(checker.checkApplied('a', 1, 3, 'write', () => false)).toBeNull();
    expect(checker.checkApplied('b', 1, 2, 'write', () => true)).toBeNull();
    expect(checker.checkApplied('b', 1, 2, 'write', () => false)?.guarantee).toBe('G6');
    expect(checker.checkApplied('c', 2, 1, 'write', () => false)).toBeNull();
  });

  it('G5: exactly the owners hold equal copies; leftovers, missing owners, suspects and rotten bytes are named', async () => {
    const { views, checker } = setup(3);
    const uuids = views.map((v) => v.uuid);
    const r = ring(uuids, 2);
    const ref = blockRef(1, 1, 0);
    const owners = replicasOf(r, ref);
    const other = uuids.find((u) => !owners.includes(u))!;
    const data = Buffer.alloc(BS, 9);
    const vols = [{ id: 1, name: 'v', blocks: 1 }];
    const put = (u: string) => views.find((v) => v.uuid === u)!.store.install(ref, data, makeVersion(1, 1), { fua: true });
    await put(owners[0]!);
    expect(checker.checkPlacement(r, vols)?.message).toMatch(/hold no copy/);
    await put(owners[1]!);
    expect(checker.checkPlacement(r, vols)).toBeNull();
    await put(other);
    expect(checker.checkPlacement(r, vols)?.message).toMatch(/leftover/);
    await views.find((v) => v.uuid === other)!.store.drop(ref);
    views.find((v) => v.uuid === owners[1])!.store.corrupt(ref, 0);
    expect(checker.checkPlacement(r, vols)?.message).toMatch(/different bytes/);
    views.find((v) => v.uuid === owners[1])!.store.markSuspect(ref);
    expect(checker.checkPlacement(r, vols)?.message).toMatch(/suspect/);
    expect(checker.checkPlacement({ ...r, transition: { from: { members: r.members, replication: 2 }, phase: 'moving', startedVersion: 3, startedAt: '', reason: '' } }, vols)?.message).toMatch(/transition/);
  });
});
