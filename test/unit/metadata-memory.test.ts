import { describe, expect, it } from 'vitest';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { SessionEvent } from '../../src/metadata/metadata-service.js';
import { expectCode, ManualClock, metadataContract, peerRecord, type MetadataHarness } from '../helpers/metadata-contract.js';

function memoryHarness(): MetadataHarness {
  const clock = new ManualClock();
  return {
    create: async () => new MemoryMetadata({ clock }),
    revokeExternally: async (md, id) => (md as MemoryMetadata).revokeLease(id),
    async eventually(what, probe) {
      for (let i = 0; i < 100; i++) {
        const v = await probe();
        if (v) return v;
        await clock.advance(100);
      }
      throw new Error(`never happened: ${what}`);
    },
    monotonic: () => clock.monotonic(),
  };
}

metadataContract('memory twin', memoryHarness);

describe('MemoryMetadata leases', () => {
  it('keeps a lease alive while "etcd" answers, however long', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock });
    const s = await md.openSession({ ttlSeconds: 3 });
    await s.putPeer(peerRecord('p1'));
    await clock.advance(60_000);
    expect((await md.listPeers()).map((p) => p.uuid)).toEqual(['p1']);
    expect(s.leaseDeadline()).toBeGreaterThan(clock.monotonic());
    await md.close();
  });

  it('an outage shorter than the TTL degrades the session, then it recovers', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock });
    const s = await md.openSession({ ttlSeconds: 3 });
    const events: SessionEvent['type'][] = [];
    s.on((e) => events.push(e.type));
    md.setAvailable(false);
    await expectCode(md.listPeers(), 'TORUS_ERR_ETCD_UNAVAILABLE');
    await clock.advance(1_100);
    expect(events).toEqual(['degraded']);
    md.setAvailable(true);
    await clock.advance(1_100);
    expect(events).toEqual(['degraded', 'healthy']);
    await md.close();
  });

  it('an outage past the deadline loses the lease and its records', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock });
    await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
    const vol = await md.createVolume('pad', 4096);
    const s = await md.openSession({ ttlSeconds: 2 });
    const events: SessionEvent['type'][] = [];
    s.on((e) => events.push(e.type));
    await s.putPeer(peerRecord('p1'));
    const lock = await s.lockVolume('pad', 'me');
    md.setAvailable(false);
    const deadline = s.leaseDeadline();
    await clock.advance(deadline - clock.monotonic() + 700);
    expect(events).toEqual(['degraded', 'lost']);
    md.setAvailable(true);
    expect(await md.listPeers()).toEqual([]);
    expect(await md.getVolumeLock(vol.id)).toBeNull();
    const s2 = await md.openSession({ ttlSeconds: 2 });
    expect((await s2.lockVolume('pad', 'next')).token).toBe(lock.token + 1);
    await md.close();
  });

  it('lists peers in uuid order and closes every session on close', async () => {
    const md = new MemoryMetadata({ clock: new ManualClock() });
    const s = await md.openSession({ ttlSeconds: 5 });
    await s.putPeer(peerRecord('b'));
    await s.putPeer(peerRecord('a'));
    expect((await md.listPeers()).map((p) => p.uuid)).toEqual(['a', 'b']);
    await md.close();
    expect(md.leaseIds()).toEqual([]);
    await expectCode(md.listPeers(), 'TORUS_ERR_ETCD_UNAVAILABLE');
  });
});
