import { describe, expect, it } from 'vitest';
import { admits, availableVolumeBytes, capacityView, createVolume, readCapacity, validateOvercommit } from '../../src/admin/volumes.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { PeerRecord, RingRecord, VolumeRecord } from '../../src/model/records.js';
import { expectCode, ManualClock, peerRecord } from '../helpers/metadata-contract.js';

const MiB = 1024 * 1024;
const ring = (members: string[], replication: number): RingRecord => ({ schema: 2, version: 2, replication, minReplicas: 1, members: members.map((uuid) => ({ uuid, weight: 1 })), transition: null });
const vol = (id: number, size: number): VolumeRecord => ({ schema: 1, id, name: `v${id}`, type: 'block', size, blockSize: MiB, generation: 1, createdAt: 't' });
const peer = (uuid: string, capacity: number): PeerRecord => peerRecord(uuid, { capacity });

describe('capacity reservations (pure)', () => {
  it('raw capacity is the live ring members\' capacity; a volume reserves size x R', () => {
    const view = capacityView(ring(['a', 'b', 'c'], 2), [peer('a', 100 * MiB), peer('b', 60 * MiB), peer('x', 1000 * MiB)], [vol(1, 10 * MiB), vol(2, 5 * MiB)]);
    // c is down (no record), x is not a member.
    expect(view).toEqual({ replication: 2, members: 3, liveMembers: 2, rawBytes: 160 * MiB, reservedRawBytes: 30 * MiB, volumes: 2 });
    // (160 - 30) / 2 = 65 MiB of volume left.
    expect(availableVolumeBytes(view, 1, MiB)).toBe(65 * MiB);
    expect(admits(view, 65 * MiB, 1)).toBe(true);
    expect(admits(view, 66 * MiB, 1)).toBe(false);
    // Overcommit 2: (320 - 30) / 2 = 145 MiB.
    expect(availableVolumeBytes(view, 2, MiB)).toBe(145 * MiB);
    expect(admits(view, 145 * MiB, 2)).toBe(true);
    // Rounded down to whole blocks.
    expect(availableVolumeBytes(capacityView(ring(['a'], 2), [peer('a', 3 * MiB)], []), 1, MiB)).toBe(MiB);
    // Over-reserved (a member went down): nothing, never negative.
    expect(availableVolumeBytes(capacityView(ring(['a'], 1), [], [vol(1, MiB)]), 1, MiB)).toBe(0);
  });

  it('GetCapacity\'s figure is always one CreateVolume accepts', () => {
    for (let i = 0; i < 200; i++) {
      const r = 1 + (i % 3);
      const view = capacityView(ring(['a', 'b'], r), [peer('a', (i * 7919) % (500 * MiB)), peer('b', (i * 104729) % (300 * MiB))], [vol(1, ((i * 31) % 50) * MiB)]);
      const oc = [0.5, 1, 1.7, 3][i % 4]!;
      const avail = availableVolumeBytes(view, oc, MiB);
      if (avail > 0) expect(admits(view, avail, oc)).toBe(true);
      expect(admits(view, avail + MiB, oc)).toBe(false);
    }
  });

  it('overcommit ratios are positive and bounded', () => {
    expect(validateOvercommit(1.5)).toBe(1.5);
    for (const bad of [0, -1, NaN, Infinity, 1001]) expect(() => validateOvercommit(bad)).toThrow(/overcommit/);
  });
});

describe('createVolume with a reservation (memory twin)', () => {
  it('refuses beyond the capacity with TORUS_ERR_CAPACITY_EXHAUSTED and concurrent creates never overshoot', async () => {
    const md = new MemoryMetadata({ clock: new ManualClock() });
    await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false });
    const s = await md.openSession({ ttlSeconds: 30 });
    await s.putPeer(peer('a', 40 * MiB));
    await md.setRing({ ...ring(['a'], 2), version: 2 });
    // 40 MiB raw, R = 2: 20 MiB of volumes.
    const refused = await expectCode(createVolume(md, 'big', 21 * MiB, { overcommit: 1 }), 'TORUS_ERR_CAPACITY_EXHAUSTED');
    expect(refused.message).toMatch(/would reserve 42 MiB raw \(replication 2\)/);
    const results = await Promise.allSettled([1, 2, 3, 4, 5].map((i) => createVolume(md, `v${i}`, 5 * MiB, { overcommit: 1 })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(4);
    expect((await readCapacity(md)).view.reservedRawBytes).toBe(40 * MiB);
    // Thin (no reservation) still works, as torusctl does by default.
    await createVolume(md, 'thin', 100 * MiB, { overcommit: null });
    await md.close();
  });
});
