import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTorusError, TorusError } from '../../src/errors/torus-error.js';
import type { ErrorCode } from '../../src/errors/codes.js';
import type { MetadataService, MetadataSession, SessionEvent } from '../../src/metadata/metadata-service.js';
import type { PeerRecord, RingRecord } from '../../src/model/records.js';
import type { Clock } from '../../src/util/clock.js';

/** A clock that moves only when told to; timers fire in due order during advance(). */
export class ManualClock implements Clock {
  private wallMs: number;
  private monoMs = 1_000;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void; live: boolean }[] = [];

  constructor(wallMs = Date.UTC(2024, 0, 1)) {
    this.wallMs = wallMs;
  }

  now(): number {
    return this.wallMs;
  }

  monotonic(): number {
    return this.monoMs;
  }

  setTimeout(fn: () => void, ms: number): { cancel(): void } {
    const t = { at: this.monoMs + Math.max(0, ms), seq: this.seq++, fn, live: true };
    this.timers.push(t);
    return { cancel: () => void (t.live = false) };
  }

  /** Moves time forward by `ms`, running every timer that falls due on the way. */
  async advance(ms: number): Promise<void> {
    const end = this.monoMs + ms;
    for (;;) {
      this.timers = this.timers.filter((t) => t.live);
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (next === undefined || next.at > end) break;
      this.wallMs += next.at - this.monoMs;
      this.monoMs = next.at;
      next.live = false;
      next.fn();
      // Let promise chains started by the timer settle before the next one.
      for (let i = 0; i < 10; i++) await Promise.resolve();
    }
    this.wallMs += end - this.monoMs;
    this.monoMs = end;
  }
}

export interface MetadataHarness {
  /** A fresh, empty metadata service. */
  create(): Promise<MetadataService>;
  /** Revokes a session's lease behind its owner's back (etcdctl lease revoke). */
  revokeExternally(md: MetadataService, sessionId: string): Promise<void>;
  /** Waits for a condition; real backends poll with a bound, the twin may move its clock. */
  eventually<T>(what: string, probe: () => Promise<T | null | undefined | false>): Promise<T>;
  /** Monotonic now, in the clock the backend uses for leaseDeadline. */
  monotonic(): number;
}

export async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<TorusError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected ${code}, but the call succeeded`);
  if (!isTorusError(err)) throw new Error(`expected ${code}, got a non-TorusError: ${String(err)}`);
  expect(err.code).toBe(code);
  return err;
}

export function peerRecord(uuid: string, over: Partial<PeerRecord> = {}): PeerRecord {
  return {
    schema: 1,
    uuid,
    address: '127.0.0.1:4321',
    nbdAddress: null,
    httpAddress: null,
    capacity: 1024 ** 3,
    used: 0,
    updatedAt: new Date().toISOString(),
    hostname: 'node-1',
    pid: 42,
    version: 'test',
    ...over,
  };
}

const MiB = 1024 * 1024;

/** The behaviour both MetadataService backends must share. */
export function metadataContract(name: string, harness: () => MetadataHarness): void {
  describe(`MetadataService contract: ${name}`, () => {
    let h: MetadataHarness;
    let md: MetadataService;
    const sessions: MetadataSession[] = [];

    async function session(ttlSeconds = 10): Promise<MetadataSession> {
      const s = await md.openSession({ ttlSeconds });
      sessions.push(s);
      return s;
    }

    async function initialised(): Promise<void> {
      await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false });
    }

    beforeEach(async () => {
      h = harness();
      md = await h.create();
    });

    afterEach(async () => {
      for (const s of sessions.splice(0)) await s.close().catch(() => undefined);
      await md.close();
    });

    it('a suspended lease is resumed with its locks and tokens (kernel attach across a torusd restart)', async () => {
      await initialised();
      await md.createVolume('att', MiB);
      const first = await session();
      const lock = await first.lockVolume('att', 'torusd A');
      await first.suspend();
      const resumed = await md.resumeSession({ leaseId: first.id, ttlSeconds: 10 });
      sessions.push(resumed);
      expect(resumed.id).toBe(first.id);
      await expectCode(resumed.adoptVolumeLock('att', lock.token + 1), 'TORUS_ERR_VOLUME_LOCK_LOST');
      const adopted = await resumed.adoptVolumeLock('att', lock.token);
      expect(adopted.token).toBe(lock.token);
      // Still ours: nobody else can take it.
      const other = await session();
      await expectCode(other.lockVolume('att', 'torusd B'), 'TORUS_ERR_VOLUME_IN_USE');
      await expectCode(other.adoptVolumeLock('att', lock.token), 'TORUS_ERR_VOLUME_LOCK_LOST');
      await adopted.release();
      const taken = await other.lockVolume('att', 'torusd B');
      expect(taken.token).toBeGreaterThan(lock.token);
      // A revoked (or expired) lease cannot be resumed.
      await md.revokeStaleLease(resumed.id);
      await expectCode(md.resumeSession({ leaseId: resumed.id, ttlSeconds: 10 }), 'TORUS_ERR_SESSION_LOST');
    });

    it('init stores the config and an empty ring; re-init is refused; force re-initialises from scratch', async () => {
      expect(await md.getClusterConfig()).toBeNull();
      const cfg = await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false });
      expect(cfg).toMatchObject({ schema: 1, blockSize: MiB, replication: 2 });
      expect(await md.getClusterConfig()).toEqual(cfg);
      expect(await md.getRing()).toEqual({ schema: 1, version: 1, replication: 2, members: [] });

      const err = await expectCode(md.initCluster({ blockSize: 4096, replication: 1 }, { force: false }), 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED');
      expect(err.message).toContain('1 MiB');
      expect((await md.getClusterConfig())?.blockSize).toBe(MiB);

      await md.createVolume('old', MiB);
      const again = await md.initCluster({ blockSize: 4096, replication: 1 }, { force: true });
      expect(again).toMatchObject({ blockSize: 4096, replication: 1 });
      expect(await md.listVolumes()).toEqual([]);
      expect((await md.getRing()).replication).toBe(1);
    });

    it('init validates block size and replication', async () => {
      for (const blockSize of [0, 1000, 2048, 3 * 4096, 128 * MiB]) {
        await expectCode(md.initCluster({ blockSize, replication: 2 }, { force: false }), 'TORUS_ERR_SIZE_INVALID');
      }
      for (const replication of [0, 17, 1.5]) {
        await expectCode(md.initCluster({ blockSize: 4096, replication }, { force: false }), 'TORUS_ERR_ARG_INVALID');
      }
      expect(await md.getClusterConfig()).toBeNull();
      await md.initCluster({ blockSize: 64 * MiB, replication: 16 }, { force: false });
    });

    it('wipe deletes everything under the prefix and says how much', async () => {
      expect(await md.wipe()).toBe(0);
      await initialised();
      await md.createVolume('a', MiB);
      expect(await md.wipe()).toBeGreaterThanOrEqual(4); // config, ring, counter, volume
      expect(await md.getClusterConfig()).toBeNull();
      await expectCode(md.getRing(), 'TORUS_ERR_CLUSTER_NOT_INITIALISED');
      await expectCode(md.getVolume('a'), 'TORUS_ERR_VOLUME_NOT_FOUND');
    });

    it('creating a volume needs an initialised cluster', async () => {
      await expectCode(md.createVolume('a', MiB), 'TORUS_ERR_CLUSTER_NOT_INITIALISED');
    });

    it('creates, gets, lists and deletes volumes; ids are never reused', async () => {
      await initialised();
      const a = await md.createVolume('alpha', 10 * MiB);
      expect(a).toMatchObject({ schema: 1, id: 1, name: 'alpha', type: 'block', size: 10 * MiB, blockSize: MiB, generation: 1 });
      const b = await md.createVolume('beta.2_x-y', 512);
      expect(b.id).toBe(2);
      expect(await md.getVolume('alpha')).toEqual(a);
      expect(await md.listVolumes()).toEqual([a, b]);
      expect(await md.deleteVolume('alpha')).toEqual(a);
      await expectCode(md.getVolume('alpha'), 'TORUS_ERR_VOLUME_NOT_FOUND');
      await expectCode(md.deleteVolume('alpha'), 'TORUS_ERR_VOLUME_NOT_FOUND');
      expect(await md.listVolumes()).toEqual([b]);
      const c = await md.createVolume('alpha', MiB);
      expect(c.id).toBe(3);
    });

    it('refuses bad names and sizes with stable codes', async () => {
      await initialised();
      for (const bad of ['', '-x', '.x', 'a/b', 'a b', 'x'.repeat(129), 'é']) {
        await expectCode(md.createVolume(bad, MiB), 'TORUS_ERR_NAME_INVALID');
      }
      await md.createVolume('x'.repeat(128), MiB);
      for (const size of [0, -512, 1000, 513, 1.5 * 512, Number.NaN, 2 ** 60]) {
        await expectCode(md.createVolume('ok', size), 'TORUS_ERR_SIZE_INVALID');
      }
      expect((await md.listVolumes()).length).toBe(1);
    });

    it('refuses a duplicate name without using up an id', async () => {
      await initialised();
      await md.createVolume('pad', MiB);
      const err = await expectCode(md.createVolume('pad', 2 * MiB), 'TORUS_ERR_VOLUME_EXISTS');
      expect(err.message).toContain('"pad"');
      expect((await md.getVolume('pad')).size).toBe(MiB);
      expect((await md.createVolume('next', MiB)).id).toBe(2);
    });

    it('a second writer is refused with a message naming the holder', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const s2 = await session();
      const lock = await s1.lockVolume('pad', 'torusd 3f2a on node-1 (pid 42)');
      expect(lock.volume).toEqual(vol);
      expect(lock.holder).toBe('torusd 3f2a on node-1 (pid 42)');
      expect(lock.token).toBe(1);
      const rec = await md.getVolumeLock(vol.id);
      expect(rec).toMatchObject({ schema: 1, volumeId: vol.id, holder: 'torusd 3f2a on node-1 (pid 42)', token: 1 });
      for (const s of [s1, s2]) {
        const err = await expectCode(s.lockVolume('pad', 'someone else'), 'TORUS_ERR_VOLUME_IN_USE');
        expect(err.message).toMatch(/^volume "pad" is in use by torusd 3f2a on node-1 \(pid 42\) since \d{4}-/);
      }
      await expectCode(s1.lockVolume('nope', 'x'), 'TORUS_ERR_VOLUME_NOT_FOUND');
    });

    it('fencing tokens strictly increase across release, re-lock, other sessions and lost leases', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const other = await md.createVolume('other', MiB);
      const s1 = await session();
      const tokens: number[] = [];
      const l1 = await s1.lockVolume('pad', 'one');
      tokens.push(l1.token);
      await l1.release();
      await l1.release(); // idempotent
      expect(await md.getVolumeLock(vol.id)).toBeNull();
      const l2 = await s1.lockVolume('pad', 'one');
      tokens.push(l2.token);
      await l2.release();
      const s2 = await session();
      const l3 = await s2.lockVolume('pad', 'two');
      tokens.push(l3.token);
      await s2.close(); // the lock dies with the lease
      await h.eventually('lock released by revoke', async () => (await md.getVolumeLock(vol.id)) === null);
      const s3 = await session();
      const l4 = await s3.lockVolume('pad', 'three');
      tokens.push(l4.token);
      expect(tokens).toEqual([1, 2, 3, 4]);
      // Tokens are per volume.
      expect((await s3.lockVolume('other', 'three')).token).toBe(1);
      expect(other.id).not.toBe(vol.id);
    });

    it('releasing a stale lock never removes a newer holder', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const stale = await s1.lockVolume('pad', 'old');
      await h.revokeExternally(md, s1.id);
      await h.eventually('old lock gone', async () => (await md.getVolumeLock(vol.id)) === null);
      const s2 = await session();
      const fresh = await s2.lockVolume('pad', 'new');
      await stale.release().catch(() => undefined);
      expect(await md.getVolumeLock(vol.id)).toMatchObject({ holder: 'new', token: fresh.token });
      expect(fresh.token).toBeGreaterThan(stale.token);
    });

    it('delete is refused while the volume is locked, naming the holder', async () => {
      await initialised();
      await md.createVolume('pad', MiB);
      const s = await session();
      const lock = await s.lockVolume('pad', 'torusd abc on host (pid 7)');
      const err = await expectCode(md.deleteVolume('pad'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(err.message).toContain('torusd abc on host (pid 7)');
      expect((await md.getVolume('pad')).name).toBe('pad');
      await lock.release();
      await md.deleteVolume('pad');
      await expectCode(md.getVolume('pad'), 'TORUS_ERR_VOLUME_NOT_FOUND');
    });

    it('a peer record lives as long as its session', async () => {
      const s = await session();
      await s.putPeer(peerRecord('peer-a', { used: 5 }));
      await s.putPeer(peerRecord('peer-a', { used: 6 })); // refresh
      const peers = await md.listPeers();
      expect(peers).toHaveLength(1);
      expect(peers[0]).toMatchObject({ uuid: 'peer-a', used: 6 });
      await s.close();
      await h.eventually('peer record gone', async () => (await md.listPeers()).length === 0);
      await expectCode(s.putPeer(peerRecord('peer-a')), 'TORUS_ERR_SESSION_LOST');
    });

    it('an externally revoked lease is reported lost and takes its records with it', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s = await session(3); // etcd reports the revoke at the next keepalive, TTL/3 later
      const events: SessionEvent[] = [];
      s.on((e) => events.push(e));
      await s.putPeer(peerRecord('peer-b'));
      await s.lockVolume('pad', 'b');
      await h.revokeExternally(md, s.id);
      await h.eventually('lost event', async () => events.some((e) => e.type === 'lost'));
      const lost = events.find((e) => e.type === 'lost');
      expect(lost?.type === 'lost' && isTorusError(lost.err, 'TORUS_ERR_SESSION_LOST')).toBe(true);
      expect(await md.listPeers()).toEqual([]);
      expect(await md.getVolumeLock(vol.id)).toBeNull();
      await expectCode(s.putPeer(peerRecord('peer-b')), 'TORUS_ERR_SESSION_LOST');
      await expectCode(s.lockVolume('pad', 'b'), 'TORUS_ERR_SESSION_LOST');
    });

    it('leaseDeadline lies within one TTL of now', async () => {
      const before = h.monotonic();
      const s = await session(5);
      const deadline = s.leaseDeadline();
      expect(deadline).toBeGreaterThan(before);
      expect(deadline).toBeLessThanOrEqual(h.monotonic() + 5000);
      expect(deadline).toBeGreaterThanOrEqual(before + 5000 - 1000);
    });

    it('sessions validate their TTL', async () => {
      await expectCode(md.openSession({ ttlSeconds: 0 }), 'TORUS_ERR_ARG_INVALID');
      await expectCode(md.openSession({ ttlSeconds: 1.5 }), 'TORUS_ERR_ARG_INVALID');
    });

    it('setRing is a compare-and-swap on the version', async () => {
      await expectCode(md.getRing(), 'TORUS_ERR_CLUSTER_NOT_INITIALISED');
      await initialised();
      const r1 = await md.getRing();
      const r2: RingRecord = { ...r1, version: 2, members: [{ uuid: 'a', weight: 100 }] };
      await md.setRing(r2);
      expect(await md.getRing()).toEqual(r2);
      await expectCode(md.setRing({ ...r1, version: 2 }), 'TORUS_ERR_CLUSTER_CONFLICT');
      await expectCode(md.setRing({ ...r1, version: 4 }), 'TORUS_ERR_CLUSTER_CONFLICT');
      await expectCode(
        md.setRing({ ...r2, version: 3, members: [{ uuid: 'a', weight: 1 }, { uuid: 'a', weight: 1 }] }),
        'TORUS_ERR_ARG_INVALID',
      );
      await expectCode(md.setRing({ ...r2, version: 3, members: [{ uuid: 'b', weight: 0 }] }), 'TORUS_ERR_ARG_INVALID');
      expect(await md.getRing()).toEqual(r2);
    });

    it('watchRing starts with the current ring and sees each change once', async () => {
      await initialised();
      const seen: RingRecord[] = [];
      const stop = await md.watchRing((r) => seen.push(r));
      expect(seen.map((r) => r.version)).toEqual([1]);
      const r1 = await md.getRing();
      await md.setRing({ ...r1, version: 2, members: [{ uuid: 'x', weight: 3 }] });
      await h.eventually('ring v2 seen', async () => seen.length === 2);
      expect(seen[1]).toEqual({ schema: 1, version: 2, replication: 2, members: [{ uuid: 'x', weight: 3 }] });
      await md.setRing({ ...seen[1]!, version: 3, replication: 1 });
      await h.eventually('ring v3 seen', async () => seen.length === 3);
      await stop();
      await md.setRing({ ...seen[2]!, version: 4 });
      await md.getRing(); // a round trip in which a live watch would have fired
      expect(seen.map((r) => r.version)).toEqual([1, 2, 3]);
    });

    it('volumeIdsForGc names live ids and the last id handed out; deletions are watched', async () => {
      await initialised();
      expect(await md.volumeIdsForGc()).toEqual({ live: [], lastId: 0 });
      const a = await md.createVolume('a', MiB);
      const b = await md.createVolume('b', MiB);
      let deletes = 0;
      const stop = await md.watchVolumeDeletes(() => deletes++);
      await md.deleteVolume('b');
      await h.eventually('delete seen', async () => deletes === 1);
      // The newest volume is gone, yet its id stays at or below lastId: GC may free it.
      expect(await md.volumeIdsForGc()).toEqual({ live: [a.id], lastId: b.id });
      await stop();
      await md.deleteVolume('a');
      await md.getRing();
      expect(deletes).toBe(1);
    });

    it('getVolumeLock of an unknown volume is null', async () => {
      await initialised();
      expect(await md.getVolumeLock(12345)).toBeNull();
    });
  });
}
