import { describe, expect, it, vi } from 'vitest';
import type { TorusError } from '../../src/errors/torus-error.js';
import { MemoryEtcd } from '../../src/metadata/memory-etcd.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { SessionEvent } from '../../src/metadata/metadata-service.js';
import { expectCode, ManualClock, metadataContract, peerRecord, type MetadataHarness } from '../helpers/metadata-contract.js';

function memoryHarness(): MetadataHarness {
  const clock = new ManualClock();
  return {
    create: async () => new MemoryMetadata({ clock }),
    revokeExternally: async (md, id) => (md as MemoryMetadata).revokeLease(id),
    compact: async (md) => (md as MemoryMetadata).compact(),
    async outage(md, during) {
      const mem = md as MemoryMetadata;
      mem.setFault('unavailable');
      const other = new MemoryMetadata({ clock, server: mem.server });
      try {
        await during(other);
      } finally {
        await other.close();
        mem.setFault('none');
      }
    },
    async eventually(what, probe) {
      for (let i = 0; i < 100; i++) {
        const v = await probe();
        if (v) return v;
        await clock.advance(100);
      }
      throw new Error(`never happened: ${what}`);
    },
    monotonic: () => clock.monotonic(),
    async loseLockAnswer(md, call) {
      // The twin's lose-replies: each call takes effect, then times out on
      // the clock, which moves here until the call settles.
      const mem = md as MemoryMetadata;
      mem.setFault('lose-replies');
      try {
        let outcome: { value: unknown } | null = null;
        void call().then(
          (v) => (outcome = { value: v }),
          (e: unknown) => (outcome = { value: e }),
        );
        for (let i = 0; i < 200 && outcome === null; i++) await clock.advance(100);
        if (outcome === null) throw new Error('the lock call never settled');
        return (outcome as { value: unknown }).value;
      } finally {
        mem.setFault('none');
        // The twin's lose-replies loses keepalive answers too (the etcd
        // harness loses only the lock's): let one through before the
        // next loss, or the lease would run out across two of them.
        await clock.advance(4_000);
      }
    },
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

describe('MemoryMetadata faults and determinism (for the simulation)', () => {
  async function cluster(clock: ManualClock, md: MemoryMetadata): Promise<void> {
    await md.initCluster({ blockSize: 4096, replication: 2 }, { force: false });
    await md.createVolume('pad', 4096);
  }

  it('hang: a call fails after the call timeout of virtual time and changes nothing', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock, callTimeoutMs: 2_000 });
    await cluster(clock, md);
    md.setFault('hang');
    let settled: unknown = null;
    const p = md.createVolume('late', 4096).catch((err: unknown) => (settled = err));
    await clock.advance(1_999);
    expect(settled).toBeNull();
    await clock.advance(1);
    await p;
    expect((settled as TorusError).code).toBe('TORUS_ERR_ETCD_UNAVAILABLE');
    expect((settled as TorusError).message).toContain('did not answer create volume late within 2000 ms');
    md.setFault('none');
    expect((await md.listVolumes()).map((v) => v.name)).toEqual(['pad']);
    await md.close();
  });

  it('lose-replies: a call takes effect but its answer is lost', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock, callTimeoutMs: 1_000 });
    await cluster(clock, md);
    md.setFault('lose-replies');
    const p = expectCode(md.createVolume('ghost', 4096), 'TORUS_ERR_ETCD_UNAVAILABLE');
    await clock.advance(1_000);
    await p;
    md.setFault('none');
    expect((await md.listVolumes()).map((v) => v.name)).toEqual(['pad', 'ghost']);
    await md.close();
  });

  it('unavailable: every call fails at once; the fault toggles at runtime', async () => {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock });
    await cluster(clock, md);
    md.setFault('unavailable');
    for (const call of [() => md.getRing(), () => md.listStale(), () => md.listFences(), () => md.getClusterSecret(), () => md.openSession({ ttlSeconds: 5 })]) {
      await expectCode(call(), 'TORUS_ERR_ETCD_UNAVAILABLE');
    }
    md.setFault('none');
    expect((await md.getRing()).version).toBe(1);
    await md.close();
  });

  it('watch events arrive through the clock, in revision order, the same way on every run', async () => {
    async function run(): Promise<string[]> {
      const clock = new ManualClock();
      const md = new MemoryMetadata({ clock });
      await cluster(clock, md);
      const log: string[] = [];
      await md.watchRing((r) => log.push(`ring ${r.version}`));
      await md.watchFences(0, (id, token) => log.push(`fence ${id}=${token}`), () => log.push('resync'));
      await md.watchVolumeDeletes(() => log.push('delete'));
      const s = await md.openSession({ ttlSeconds: 10 });
      const r = await md.getRing();
      await md.setRing({ ...r, version: 2 });
      await (await s.lockVolume('pad', 'w')).release();
      await md.setRing({ ...r, version: 3 });
      await md.createVolume('tmp', 4096);
      await md.deleteVolume('tmp');
      // Nothing is delivered until the clock runs its due timers.
      expect(log).toEqual(['ring 1']);
      await clock.advance(0);
      await md.close();
      return log;
    }
    const first = await run();
    expect(first).toEqual(['ring 1', 'ring 2', 'fence 1=1', 'ring 3', 'delete']);
    expect(await run()).toEqual(first);
  });

  it('two clients on one etcd: a partitioned peer loses its lease at the TTL while the other goes on', async () => {
    const clock = new ManualClock();
    const server = new MemoryEtcd({ clock });
    const a = new MemoryMetadata({ clock, server });
    const b = new MemoryMetadata({ clock, server });
    await cluster(clock, a);
    const sa = await a.openSession({ ttlSeconds: 3 });
    const sb = await b.openSession({ ttlSeconds: 3 });
    const events: string[] = [];
    sa.on((e) => events.push(e.type));
    await sa.putPeer(peerRecord('peer-a'));
    await sb.putPeer(peerRecord('peer-b'));
    const lock = await sa.lockVolume('pad', 'a');
    const rings: number[] = [];
    await a.watchRing((r) => rings.push(r.version));
    a.setFault('unavailable');
    const r1 = await b.getRing();
    await b.setRing({ ...r1, version: 2 });
    await clock.advance(3_500);
    expect(events).toEqual(['degraded', 'lost']);
    expect((await b.listPeers()).map((p) => p.uuid)).toEqual(['peer-b']);
    expect(await lock.stillHeld().catch((e: TorusError) => e.code)).toBe('TORUS_ERR_ETCD_UNAVAILABLE');
    const next = await (await b.openSession({ ttlSeconds: 3 })).lockVolume('pad', 'b');
    expect(next.token).toBe(lock.token + 1);
    expect(rings).toEqual([1]);
    a.setFault('none');
    await clock.advance(0);
    // The watch re-read the ring when the link came back.
    expect(rings).toEqual([1, 2]);
    expect(await lock.stillHeld()).toBe(false);
    await a.close();
    await b.close();
  });

  it('history beyond its bound is compacted: a watch from before it resyncs', async () => {
    const clock = new ManualClock();
    const server = new MemoryEtcd({ clock, historyEventsMax: 4 });
    const md = new MemoryMetadata({ clock, server });
    await cluster(clock, md);
    const start = await md.listFences();
    const s = await md.openSession({ ttlSeconds: 60 });
    for (let i = 0; i < 5; i++) await (await s.lockVolume('pad', 'w')).release();
    const resyncs: number[] = [];
    await md.watchFences(start.revision, () => resyncs.push(-1), (all) => resyncs.push(all.fences.get(1)!));
    await clock.advance(0);
    expect(resyncs).toEqual([5]);
    await md.close();
  });

  it('an observer sees every commit inside it, and schedules nothing', () => {
    const clock = new ManualClock();
    const server = new MemoryEtcd({ clock });
    const timers = vi.spyOn(clock, 'setTimeout');
    const seen: string[] = [];
    const stop = server.observe((events) => seen.push(events.map((e) => `${e.type} ${e.key}@${e.revision}`).join(',')));
    server.commit([{ type: 'put', key: 'a', value: '1' }, { type: 'put', key: 'b', value: '2' }]);
    expect(seen).toEqual(['put a@2,put b@2']);
    server.commit([{ type: 'delete', key: 'zz' }]);
    expect(seen).toHaveLength(1);
    expect(timers).not.toHaveBeenCalled();
    stop();
    server.commit([{ type: 'delete', key: 'a' }]);
    expect(seen).toHaveLength(1);
  });
});
