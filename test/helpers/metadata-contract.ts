import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTorusError, TorusError } from '../../src/errors/torus-error.js';
import type { ErrorCode } from '../../src/errors/codes.js';
import type { MetadataService, MetadataSession, SessionEvent, VolumeLock } from '../../src/metadata/metadata-service.js';
import type { PeerRecord, RingRecord, VolumeHealthRecord, VolumeMoveRecord, VolumeRecord } from '../../src/model/records.js';
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

  /** Timers not yet run or cancelled. */
  pending(): number {
    return this.timers.filter((t) => t.live).length;
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
  /** Compacts the backend's whole event history (etcdctl compact <current revision>). */
  compact(md: MetadataService): Promise<void>;
  /**
   * Cuts `md`'s link to etcd (its watch streams break, its calls fail),
   * runs `during` with a second service on the same data that still reaches
   * etcd, then restores the link.
   */
  outage(md: MetadataService, during: (other: MetadataService) => Promise<void>): Promise<void>;
  /** After each test, once the service is closed. */
  cleanup?(): Promise<void>;
  /** Revokes a session's lease behind its owner's back (etcdctl lease revoke). */
  revokeExternally(md: MetadataService, sessionId: string): Promise<void>;
  /** Waits for a condition; real backends poll with a bound, the twin may move its clock. */
  eventually<T>(what: string, probe: () => Promise<T | null | undefined | false>): Promise<T>;
  /** Monotonic now, in the clock the backend uses for leaseDeadline. */
  monotonic(): number;
  /**
   * Runs `call` (a lock call of a session of `md`) with the answer to its
   * lock transaction lost: etcd applies it, the caller sees no answer.
   * Resolves with what the call threw, or returned.
   */
  loseLockAnswer(md: MetadataService, call: () => Promise<unknown>): Promise<unknown>;
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

    /** Volume "pad" with a coordinator holding its newest token, and the token it fenced off. */
    async function fencedOffAndCurrent(): Promise<{ vol: VolumeRecord; s: MetadataSession; old: VolumeLock; lock: VolumeLock }> {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s = await session();
      const old = await s.lockVolume('pad', 'old');
      await old.release();
      const lock = await s.lockVolume('pad', 'coordinator');
      return { vol, s, old, lock };
    }

    beforeEach(async () => {
      h = harness();
      md = await h.create();
    });

    afterEach(async () => {
      for (const s of sessions.splice(0)) await s.close().catch(() => undefined);
      await md.close();
      await h.cleanup?.();
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

    it('a resumed lease lets go of the locks the earlier run left on it and keeps the ones this run took back or took since', async () => {
      await initialised();
      const kept = await md.createVolume('kept', MiB);
      await md.createVolume('served', MiB);
      const maint = await md.createVolume('maint', MiB);
      const read = await md.createVolume('read', MiB);
      const later = await md.createVolume('later', MiB);
      const first = await session();
      // The earlier run: a kernel device's lock, an NBD client's, a
      // maintenance pass's and a reader's, all on one lease, then killed.
      const attached = await first.lockVolume('kept', 'torusd A');
      await first.lockVolume('served', 'torusd A');
      await first.lockVolumeForMaintenance(maint.id, 'torusd A');
      await first.lockVolumeForReading('read', 'torusd A');
      await first.suspend();
      const resumed = await md.resumeSession({ leaseId: first.id, ttlSeconds: 10 });
      sessions.push(resumed);
      // This run: the device taken back (adopted and renewed), a lock taken anew.
      const adopted = await (await resumed.adoptVolumeLock('kept', attached.token)).renew();
      const taken = await resumed.lockVolume('later', 'torusd A, second run');
      // Asked for while etcd does not answer: done by the next reclaim (each heartbeat).
      await h.outage(md, async () => {
        await expectCode(resumed.releaseLocksOfEarlierRun(), 'TORUS_ERR_ETCD_UNAVAILABLE');
      });
      expect(await resumed.reclaimUnansweredLocks()).toBe(3);
      const other = await session();
      // What nothing held is free, the maintainer's and the reader's too.
      // Let go as by a holder that died: the next holder does not count
      // the earlier run's token as released cleanly (a catch-up follows).
      expect((await other.lockVolume('served', 'torusd B')).previousReleased).toBe(false);
      expect((await other.lockVolumeForMaintenance(maint.id, 'torusd B')).volume.id).toBe(maint.id);
      expect((await other.lockVolume('read', 'torusd B')).volume.id).toBe(read.id);
      // What this run holds stays held.
      await expectCode(other.lockVolume('kept', 'torusd B'), 'TORUS_ERR_VOLUME_IN_USE');
      await expectCode(other.lockVolume('later', 'torusd B'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(adopted.volume.id).toBe(kept.id);
      expect(taken.volume.id).toBe(later.id);
      // Nothing more to let go; a session of its own never has anything.
      expect(await resumed.releaseLocksOfEarlierRun()).toBe(0);
      expect(await other.releaseLocksOfEarlierRun()).toBe(0);
    });

    it('init stores the config and an empty ring; re-init is refused; force re-initialises from scratch', async () => {
      expect(await md.getClusterConfig()).toBeNull();
      const cfg = await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false });
      expect(cfg).toMatchObject({ schema: 1, blockSize: MiB, replication: 2 });
      expect(await md.getClusterConfig()).toEqual(cfg);
      expect(await md.getRing()).toEqual({ schema: 2, version: 1, replication: 2, minReplicas: 1, members: [], transition: null });

      const err = await expectCode(md.initCluster({ blockSize: 4096, replication: 1 }, { force: false }), 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED');
      expect(err.message).toContain('1 MiB');
      expect((await md.getClusterConfig())?.blockSize).toBe(MiB);

      await md.createVolume('old', MiB);
      const again = await md.initCluster({ blockSize: 4096, replication: 1 }, { force: true });
      expect(again).toMatchObject({ blockSize: 4096, replication: 1 });
      expect(await md.listVolumes()).toEqual([]);
      expect(await md.getRing()).toMatchObject({ replication: 1, minReplicas: 1, version: 1 });
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

    it('deleteVolume by name and id never deletes a later volume that took the name', async () => {
      await initialised();
      const old = await md.createVolume('pvc-1', MiB);
      await md.deleteVolume('pvc-1', { id: old.id });
      const reborn = await md.createVolume('pvc-1', MiB);
      await expectCode(md.deleteVolume('pvc-1', { id: old.id }), 'TORUS_ERR_VOLUME_NOT_FOUND');
      expect((await md.getVolume('pvc-1')).id).toBe(reborn.id);
      expect((await md.deleteVolume('pvc-1', { id: reborn.id })).id).toBe(reborn.id);
    });

    it('refuses a duplicate name without using up an id', async () => {
      await initialised();
      await md.createVolume('pad', MiB);
      const err = await expectCode(md.createVolume('pad', 2 * MiB), 'TORUS_ERR_VOLUME_EXISTS');
      expect(err.message).toContain('"pad"');
      expect((await md.getVolume('pad')).size).toBe(MiB);
      expect((await md.createVolume('next', MiB)).id).toBe(2);
    });

    it('createVolume admits by a check over every volume, read in the same compare-and-swap: concurrent creates never overshoot', async () => {
      await initialised();
      await md.createVolume('first', MiB);
      let seen: string[] = [];
      const v = await md.createVolume('second', 2 * MiB, { admit: (vols) => void (seen = vols.map((x) => x.name).sort()) });
      expect(seen).toEqual(['first']);
      expect(v.size).toBe(2 * MiB);
      const limit = (vols: readonly { size: number }[]) => {
        if (vols.reduce((n, x) => n + x.size, 0) + MiB > 6 * MiB) throw new TorusError('TORUS_ERR_ARG_INVALID', 'full');
      };
      const refused = await expectCode(md.createVolume('big', 4 * MiB, { admit: (vols) => limit([...vols, { size: 3 * MiB }]) }), 'TORUS_ERR_ARG_INVALID');
      expect(refused.message).toBe('full');
      // A refusal uses up no id.
      expect((await md.volumeIdsForGc()).lastId).toBe(2);
      // An existing name is "exists", whatever admit would say.
      await expectCode(md.createVolume('first', MiB, { admit: () => { throw new Error('not asked'); } }), 'TORUS_ERR_VOLUME_EXISTS');
      // 3 MiB used, 6 MiB allowed: of six concurrent 1 MiB creates, exactly three get in.
      const results = await Promise.allSettled([0, 1, 2, 3, 4, 5].map((i) => md.createVolume(`c${i}`, MiB, { admit: limit })));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
      for (const r of results) if (r.status === 'rejected') expect((r.reason as TorusError).message).toBe('full');
      expect((await md.listVolumes()).reduce((n, x) => n + x.size, 0)).toBe(6 * MiB);
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

    it('a lock whose answer was lost is let go by its session; until then the volume is held', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const err = await h.loseLockAnswer(md, () => s1.lockVolume('pad', 'unanswered'));
      expect(isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE'), String(err)).toBe(true);
      // It took effect: held under s1's lease, by no lock object.
      expect(await md.getVolumeLock(vol.id)).toMatchObject({ holder: 'unanswered', token: 1 });
      const s2 = await session();
      await expectCode(s2.lockVolume('pad', 'other'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(await s1.reclaimUnansweredLocks()).toBe(1);
      expect(await md.getVolumeLock(vol.id)).toBeNull();
      expect(await s1.reclaimUnansweredLocks()).toBe(0);
      const lock = await s2.lockVolume('pad', 'other');
      expect(lock.token).toBe(2);
      // Not let go cleanly: the next holder must not take it for a clean release.
      expect(lock.previousReleased).toBe(false);
      expect(await s1.reclaimUnansweredLocks()).toBe(0);
      expect(await lock.stillHeld()).toBe(true);
    });

    it('the session whose lock call went unanswered lets go of that lock before its next lock call, of any kind', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      expect(await h.loseLockAnswer(md, () => s1.lockVolume('pad', 'first'))).toBeInstanceOf(Error);
      const lock = await s1.lockVolume('pad', 'second');
      expect(lock.token).toBe(2);
      expect(await md.getVolumeLock(vol.id)).toMatchObject({ holder: 'second', token: 2 });
      await lock.release();
      const lost = await h.loseLockAnswer(md, () => s1.lockVolumeForMaintenance(vol.id, 'maint'));
      expect(isTorusError(lost, 'TORUS_ERR_ETCD_UNAVAILABLE'), String(lost)).toBe(true);
      const s2 = await session();
      await expectCode(s2.lockVolumeForMaintenance(vol.id, 'm2'), 'TORUS_ERR_VOLUME_IN_USE');
      const reader = await s1.lockVolumeForReading('pad', 'reader'); // lets go of the maintenance lock first
      expect((await s2.lockVolumeForMaintenance(vol.id, 'm2')).token).toBe(4);
      await reader.release();
    });

    it('a reader lock whose answer was lost keeps writers out until its session lets go of it, and never a reader lock taken since', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      expect(await h.loseLockAnswer(md, () => s1.lockVolumeForReading('pad', 'r1'))).toBeInstanceOf(Error);
      expect(await md.listVolumeReaders(vol.id)).toHaveLength(1);
      const s2 = await session();
      await expectCode(s2.lockVolume('pad', 'w'), 'TORUS_ERR_VOLUME_IN_USE');
      // Taken again under the same key: the unanswered one goes first, the new one stays.
      const reader = await s1.lockVolumeForReading('pad', 'r2');
      expect(await s1.reclaimUnansweredLocks()).toBe(0);
      expect(await reader.stillHeld()).toBe(true);
      expect((await md.listVolumeReaders(vol.id)).map((r) => r.holder)).toEqual(['r2']);
      await reader.release();
      expect((await s2.lockVolume('pad', 'w')).token).toBe(1);
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

    it('previousReleased: a first lock and one after a fenced clean release say so; after an expiry, an unfenced release or a live maintainer they do not, and expiredToken keeps the newest such token for every later holder', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const first = await s1.lockVolume('pad', 'one');
      expect(first.previousReleased).toBe(true); // never locked before
      expect(first.expiredToken).toBe(0);
      expect(await md.getVolumeExpired(vol.id)).toBe(0);
      first.markFenced();
      await first.release();
      const second = await s1.lockVolume('pad', 'one');
      expect(second.token).toBe(2);
      expect(second.previousReleased).toBe(true);
      expect(second.expiredToken).toBe(0);
      // Renewed: the previous token was ours, held without a gap.
      const renewed = await second.renew();
      expect(renewed.previousReleased).toBe(true);
      // Let go without being marked fenced (an open that failed): it does not count.
      await renewed.release();
      const third = await s1.lockVolume('pad', 'one');
      expect(third.previousReleased).toBe(false);
      expect(third.expiredToken).toBe(renewed.token);
      third.markFenced();
      await third.release();
      // An expiry (the lease revoked behind its owner's back, as a TTL running out does).
      const s2 = await session(3);
      const expired = await s2.lockVolume('pad', 'two');
      expect(expired.previousReleased).toBe(true);
      expect(expired.expiredToken, 'kept past a clean release').toBe(renewed.token);
      expired.markFenced();
      await h.revokeExternally(md, s2.id);
      await h.eventually('expired lock gone', async () => (await md.getVolumeLock(vol.id)) === null);
      await expired.release().catch(() => undefined); // no longer ours: records nothing
      const s3 = await session();
      const after = await s3.lockVolume('pad', 'three');
      expect(after.token).toBe(expired.token + 1);
      expect(after.previousReleased).toBe(false);
      expect(after.expiredToken).toBe(expired.token);
      expect(await md.getVolumeExpired(vol.id), 'what a process without a lock reads').toBe(expired.token);
      expect((await after.renew()).expiredToken, 'a renewal keeps it').toBe(expired.token);
      after.markFenced();
      await after.release();
      // Maintenance locks read and record the same way.
      const maint = await s3.lockVolumeForMaintenance(vol.id, 'm');
      expect(maint.previousReleased).toBe(false); // after renewed, unfenced
      maint.markFenced();
      await maint.release();
      const maint2 = await s3.lockVolumeForMaintenance(vol.id, 'm');
      expect(maint2.previousReleased).toBe(true);
      expect(maint2.expiredToken).toBe(maint.token - 1);
      maint2.markFenced();
      // A writer overriding a maintainer still at work: not released.
      const writer = await s1.lockVolume('pad', 'four');
      expect(writer.previousReleased).toBe(false);
      expect(writer.expiredToken).toBe(maint2.token);
      await maint2.release(); // its token is no longer the newest: records nothing
      writer.markFenced();
      await writer.release();
      const last = await s3.lockVolumeForMaintenance(vol.id, 'm');
      expect(last.previousReleased).toBe(true);
      expect(last.expiredToken).toBe(maint2.token);
      // Per volume: another volume's first lock.
      await md.createVolume('other', MiB);
      const other = await s3.lockVolume('other', 'x');
      expect(other.previousReleased).toBe(true);
      expect(other.expiredToken).toBe(0);
    });

    it('a maintenance lock asked to refuse an expired lock is refused while the last lock expired, and taken for that token only', async () => {
      await initialised();
      const vol = await md.createVolume('grace', MiB);
      const s1 = await session(3);
      const s2 = await session();
      // Never locked, and after a clean release: nothing expired, taken at once.
      const first = await s2.lockVolumeForMaintenance(vol.id, 'm', { expired: 'refuse' });
      first.markFenced();
      await first.release();
      const writer = await s1.lockVolume('grace', 'w');
      writer.markFenced();
      // A lock held is in use, not expired, whatever the option.
      await expectCode(s2.lockVolumeForMaintenance(vol.id, 'm', { expired: 'refuse' }), 'TORUS_ERR_VOLUME_IN_USE');
      await h.revokeExternally(md, s1.id);
      await h.eventually('expired lock gone', async () => (await md.getVolumeLock(vol.id)) === null);
      const refused = await expectCode(s2.lockVolumeForMaintenance(vol.id, 'm', { expired: 'refuse' }), 'TORUS_ERR_VOLUME_LOCK_EXPIRED');
      expect(refused.details?.['token'], 'names the expired token').toBe(writer.token);
      expect(await md.getFence(vol.id), 'nothing drawn').toBe(writer.token);
      // Another token's grace does not take this one.
      await expectCode(s2.lockVolumeForMaintenance(vol.id, 'm', { expired: writer.token - 1 }), 'TORUS_ERR_VOLUME_LOCK_EXPIRED');
      // The writer is back first: it takes the next token, as if no one had come between.
      const s3 = await session();
      const back = await s3.lockVolume('grace', 'w again');
      expect(back.token).toBe(writer.token + 1);
      back.markFenced();
      await back.release();
      // Released cleanly: taken with any option.
      const maint = await s2.lockVolumeForMaintenance(vol.id, 'm', { expired: 'refuse' });
      expect(maint.token).toBe(back.token + 1);
      maint.markFenced();
      await maint.release();
      // Expired again, and the grace for that token over: taken, counted expired.
      const w2 = await s3.lockVolume('grace', 'w');
      w2.markFenced();
      await h.revokeExternally(md, s3.id);
      await h.eventually('expired lock gone', async () => (await md.getVolumeLock(vol.id)) === null);
      const taken = await s2.lockVolumeForMaintenance(vol.id, 'm', { expired: w2.token });
      expect(taken.previousReleased).toBe(false);
      expect(taken.expiredToken).toBe(w2.token);
      await taken.release();
    });

    it('a lock marked unsettled is let go without a clean release: the next holder counts its token as expired', async () => {
      await initialised();
      await md.createVolume('uns', MiB);
      const s = await session();
      const l1 = await s.lockVolume('uns', 'a');
      l1.markFenced();
      l1.markUnsettled();
      await l1.release();
      const l2 = await s.lockVolume('uns', 'a');
      expect(l2.previousReleased).toBe(false);
      expect(l2.expiredToken).toBe(l1.token);
    });

    it('an adopted lock reports whether its predecessor was let go', async () => {
      await initialised();
      await md.createVolume('att', MiB);
      const s = await session();
      const l1 = await s.lockVolume('att', 'a');
      l1.markFenced();
      await l1.release();
      const l2 = await s.lockVolume('att', 'a');
      expect((await s.adoptVolumeLock('att', l2.token)).previousReleased).toBe(true);
      await l2.release(); // unfenced
      const l3 = await s.lockVolume('att', 'a');
      const adopted = await s.adoptVolumeLock('att', l3.token);
      expect(adopted.previousReleased).toBe(false);
      // The run that wrote under the adopted token is gone: it counts as expired, for later holders too.
      expect(adopted.expiredToken).toBe(l3.token);
      adopted.markFenced();
      await adopted.release();
      const l4 = await s.lockVolume('att', 'a');
      expect(l4.previousReleased).toBe(true);
      expect(l4.expiredToken).toBe(l3.token);
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
      expect(seen[1]).toEqual({ schema: 2, version: 2, replication: 2, minReplicas: 1, members: [{ uuid: 'x', weight: 3 }], transition: null });
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

    // ---------------------------------------------------------------- replication metadata

    it('the cluster secret: created at init (or before, by the first peer), kept by init, new after a forced init', async () => {
      expect(await md.getClusterSecret()).toBeNull();
      const early = await md.ensureClusterSecret();
      expect(early).toMatch(/^[0-9a-f]{64}$/);
      expect(await md.ensureClusterSecret()).toBe(early);
      await initialised();
      expect(await md.getClusterSecret()).toBe(early);
      await md.initCluster({ blockSize: MiB, replication: 2 }, { force: true });
      const fresh = await md.getClusterSecret();
      expect(fresh).toMatch(/^[0-9a-f]{64}$/);
      expect(fresh).not.toBe(early);
      // Racing peers all end with the one secret that was stored.
      await md.wipe();
      const raced = await Promise.all([md.ensureClusterSecret(), md.ensureClusterSecret(), md.ensureClusterSecret()]);
      expect(new Set(raced).size).toBe(1);
      expect(await md.getClusterSecret()).toBe(raced[0]);
    });

    it('setRing takes schema-2 rings with a transition and refuses bad minReplicas and transition shapes', async () => {
      await initialised();
      const r1 = await md.getRing();
      const moving: RingRecord = {
        ...r1,
        version: 2,
        members: [{ uuid: 'a', weight: 1 }, { uuid: 'b', weight: 1 }],
        transition: { from: { members: [{ uuid: 'a', weight: 1 }], replication: 2 }, phase: 'moving', startedVersion: 2, startedAt: '2024-01-01T00:00:00.000Z', reason: 'peer add b' },
      };
      await md.setRing(moving);
      expect(await md.getRing()).toEqual(moving);
      const bad: RingRecord[] = [
        { ...moving, version: 3, minReplicas: 0 },
        { ...moving, version: 3, minReplicas: 3 },
        { ...moving, version: 3, transition: { ...moving.transition!, startedVersion: 4 } },
        { ...moving, version: 3, transition: { ...moving.transition!, phase: 'done' as 'moving' } },
        { ...moving, version: 3, transition: { ...moving.transition!, from: { members: [{ uuid: 'a', weight: 0 }], replication: 1 } } },
        { ...moving, version: 3, transition: { ...moving.transition!, from: { members: [], replication: 0 } } },
        { ...moving, version: 3, schema: 1 as 2 },
      ];
      for (const r of bad) await expectCode(md.setRing(r), 'TORUS_ERR_ARG_INVALID');
      expect(await md.getRing()).toEqual(moving);
    });

    it('fences: each lock bumps the volume token; listFences reads them all with the revision', async () => {
      await initialised();
      const a = await md.createVolume('a', MiB);
      const b = await md.createVolume('b', MiB);
      expect(await md.getFence(a.id)).toBe(0);
      expect((await md.listFences()).fences.size).toBe(0);
      const s = await session();
      await (await s.lockVolume('a', 'x')).release();
      await s.lockVolume('a', 'x');
      await s.lockVolumeForMaintenance(b.id, 'm');
      expect(await md.getFence(a.id)).toBe(2);
      const all = await md.listFences();
      expect([...all.fences.entries()].sort()).toEqual([[a.id, 2], [b.id, 1]]);
      expect(all.revision).toBeGreaterThan(0);
    });

    it('watchFences delivers every token after the revision, in order, each with its revision', async () => {
      await initialised();
      await md.createVolume('a', MiB);
      const b = await md.createVolume('b', MiB);
      const s = await session();
      await (await s.lockVolume('a', 'x')).release();
      const start = await md.listFences();
      const seen: [number, number, number][] = [];
      let resyncs = 0;
      const stop = await md.watchFences(start.revision, (id, token, rev) => seen.push([id, token, rev]), () => resyncs++);
      await (await s.lockVolume('a', 'x')).release();
      await s.lockVolumeForMaintenance(b.id, 'm');
      await s.lockVolume('a', 'x');
      await h.eventually('three fences seen', async () => seen.length === 3);
      const a = (await md.getVolume('a')).id;
      expect(seen.map(([id, token]) => [id, token])).toEqual([[a, 2], [b.id, 1], [a, 3]]);
      const revs = seen.map(([, , rev]) => rev);
      expect(revs[0]).toBeGreaterThan(start.revision);
      expect([...revs].sort((x, y) => x - y)).toEqual(revs);
      expect(resyncs).toBe(0);
      await stop();
      await md.deleteVolume('b');
      await expectCode(s.lockVolumeForMaintenance(b.id, 'm'), 'TORUS_ERR_VOLUME_NOT_FOUND');
    });

    it('watchFences from a compacted revision resyncs with a fresh listing instead', async () => {
      await initialised();
      const v = await md.createVolume('a', MiB);
      const s = await session();
      const before = await md.listFences();
      await (await s.lockVolume('a', 'x')).release();
      await (await s.lockVolume('a', 'x')).release();
      await h.compact(md);
      const fences: number[] = [];
      const resyncs: { fences: Map<number, number>; revision: number }[] = [];
      const stop = await md.watchFences(before.revision, (_id, token) => fences.push(token), (all) => resyncs.push(all));
      await h.eventually('resync after compaction', async () => resyncs.length > 0);
      expect(resyncs[0]!.fences.get(v.id)).toBe(2);
      expect(resyncs[0]!.revision).toBeGreaterThan(before.revision);
      // It goes on watching from the resync's revision.
      await s.lockVolume('a', 'x');
      await h.eventually('token 3 after the resync', async () => fences.includes(3));
      expect(fences).toEqual([3]);
      await stop();
    });

    it('watches survive a lost stream with compaction meanwhile: ring re-read, fences resynced, deletes reported', async () => {
      await initialised();
      await md.createVolume('gone', MiB);
      const v = await md.createVolume('kept', MiB);
      const rings: RingRecord[] = [];
      const resyncs: Map<number, number>[] = [];
      let deletes = 0;
      const stops = [
        await md.watchRing((r) => rings.push(r)),
        await md.watchFences((await md.listFences()).revision, () => undefined, (all) => resyncs.push(all.fences)),
        await md.watchVolumeDeletes(() => deletes++),
      ];
      await h.outage(md, async (other) => {
        const r1 = await other.getRing();
        await other.setRing({ ...r1, version: 2, members: [{ uuid: 'x', weight: 1 }] });
        await other.setRing({ ...r1, version: 3, members: [{ uuid: 'y', weight: 1 }] });
        const s = await other.openSession({ ttlSeconds: 10 });
        await s.lockVolume('kept', 'other');
        await other.deleteVolume('gone');
        await h.compact(other);
        await s.close();
      });
      await h.eventually('ring v3, a fence resync and a delete after the outage', async () => rings.some((r) => r.version === 3) && resyncs.length > 0 && deletes > 0);
      expect(rings.map((r) => r.version)).toEqual([1, 3]);
      expect(resyncs[resyncs.length - 1]!.get(v.id)).toBe(1);
      // Live again: the next change arrives through the new watch.
      const r3 = await md.getRing();
      await md.setRing({ ...r3, version: 4 });
      await h.eventually('ring v4', async () => rings.some((r) => r.version === 4));
      for (const stop of stops) await stop();
    });

    it('renew keeps a lock and hands out the next token; a lock lost with its lease cannot be renewed', async () => {
      await initialised();
      await md.createVolume('renewed', MiB);
      const s = await session();
      const first = await s.lockVolume('renewed', 'writer one');
      const second = await first.renew();
      expect(second.token).toBe(first.token + 1);
      expect(second.kind).toBe('writer');
      expect(await md.getFence(first.volume.id)).toBe(second.token);
      expect(await second.stillHeld()).toBe(true);
      expect(await first.stillHeld()).toBe(false);
      const other = await session();
      await expect(other.lockVolume('renewed', 'writer two')).rejects.toMatchObject({ code: 'TORUS_ERR_VOLUME_IN_USE' });
      await s.close();
      await expect(second.renew()).rejects.toMatchObject({ code: 'TORUS_ERR_VOLUME_LOCK_LOST' });
    });

    it('maintenance locks: one maintainer, no writer; a writer overrides it with a newer token', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const s2 = await session();
      const maint = await s1.lockVolumeForMaintenance(vol.id, 'torusd m1 (maintenance)');
      expect(maint).toMatchObject({ kind: 'maintainer', token: 1, holder: 'torusd m1 (maintenance)' });
      expect(maint.volume).toEqual(vol);
      expect(await maint.stillHeld()).toBe(true);
      const other = await expectCode(s2.lockVolumeForMaintenance(vol.id, 'torusd m2'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(other.message).toContain('under maintenance by torusd m1 (maintenance)');
      // The write lock is not blocked by maintenance: its newer token fences the maintainer.
      const writer = await s2.lockVolume('pad', 'torusd w');
      expect(writer).toMatchObject({ kind: 'writer', token: 2 });
      expect(await writer.stillHeld()).toBe(true);
      expect(await md.getFence(vol.id)).toBe(2);
      expect(await md.getVolumeLock(vol.id)).toMatchObject({ holder: 'torusd w', token: 2, kind: 'writer' });
      await maint.release();
      expect(await maint.stillHeld()).toBe(false);
      const refused = await expectCode(s1.lockVolumeForMaintenance(vol.id, 'torusd m1'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(refused.message).toContain('in use by torusd w');
      await writer.release();
      expect(await writer.stillHeld()).toBe(false);
      const again = await s1.lockVolumeForMaintenance(vol.id, 'torusd m1');
      expect(again.token).toBe(3);
      await expectCode(s1.lockVolumeForMaintenance(999, 'x'), 'TORUS_ERR_VOLUME_NOT_FOUND');
      await expectCode(s1.lockVolumeForMaintenance(0, 'x'), 'TORUS_ERR_ARG_INVALID');
      await expectCode(s1.lockVolumeForMaintenance(vol.id, ''), 'TORUS_ERR_ARG_INVALID');
    });

    it('reader locks: readers share a volume; a writer and a delete are refused while any reads, a reader while a writer writes', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session();
      const s2 = await session();
      const s3 = await session();
      const r1 = await s1.lockVolumeForReading('pad', 'csi node-1');
      const r2 = await s2.lockVolumeForReading('pad', 'csi node-2');
      expect(r1).toMatchObject({ kind: 'reader', holder: 'csi node-1' });
      expect(r1.volume).toEqual(vol);
      expect(await r1.stillHeld()).toBe(true);
      expect(await r2.stillHeld()).toBe(true);
      const readers = await md.listVolumeReaders(vol.id);
      expect(readers.map((r) => [r.holder, r.kind, r.volumeId]).sort()).toEqual([
        ['csi node-1', 'reader', vol.id],
        ['csi node-2', 'reader', vol.id],
      ]);
      // Readers draw no fencing token.
      expect(await md.getFence(vol.id)).toBe(0);
      const refused = await expectCode(s3.lockVolume('pad', 'writer w'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(refused.message).toMatch(/read \(under a reader lock\) by csi node-[12] since .* and 1 other reader$/);
      expect(await md.getVolumeLock(vol.id)).toBeNull();
      expect(await md.getFence(vol.id)).toBe(0);
      await expectCode(md.deleteVolume('pad'), 'TORUS_ERR_VOLUME_IN_USE');
      // A maintainer is not blocked by readers (it copies blocks, it does not change them).
      const maint = await s3.lockVolumeForMaintenance(vol.id, 'maintainer m');
      await maint.release();
      // Taking it again on the same session keeps the one lock.
      const again = await s1.lockVolumeForReading('pad', 'csi node-1');
      expect(await again.stillHeld()).toBe(true);
      expect(await md.listVolumeReaders(vol.id)).toHaveLength(2);
      await r1.release();
      expect(await r1.stillHeld()).toBe(false);
      expect(await again.stillHeld()).toBe(false);
      await expectCode(s3.lockVolume('pad', 'writer w'), 'TORUS_ERR_VOLUME_IN_USE');
      await r2.release();
      expect(await md.listVolumeReaders(vol.id)).toEqual([]);
      const writer = await s3.lockVolume('pad', 'writer w');
      const notRead = await expectCode(s1.lockVolumeForReading('pad', 'csi node-1'), 'TORUS_ERR_VOLUME_IN_USE');
      expect(notRead.message).toContain('in use by writer w');
      expect(await md.listVolumeReaders(vol.id)).toEqual([]);
      await writer.release();
      const r3 = await s1.lockVolumeForReading('pad', 'csi node-1');
      await r3.release();
      await md.deleteVolume('pad');
      await expectCode(s1.lockVolumeForReading('pad', 'x'), 'TORUS_ERR_VOLUME_NOT_FOUND');
      await expectCode(s1.lockVolumeForReading('bad name', 'x'), 'TORUS_ERR_NAME_INVALID');
      await md.createVolume('pad2', MiB);
      await expectCode(s1.lockVolumeForReading('pad2', ''), 'TORUS_ERR_ARG_INVALID');
    });

    it('a reader lock dies with its lease, and a writer may then take the volume', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session(3);
      const reader = await s1.lockVolumeForReading('pad', 'r');
      const s2 = await session();
      await expectCode(s2.lockVolume('pad', 'w'), 'TORUS_ERR_VOLUME_IN_USE');
      await h.revokeExternally(md, s1.id);
      await h.eventually('reader lock gone', async () => !(await reader.stillHeld()));
      expect(await md.listVolumeReaders(vol.id)).toEqual([]);
      expect((await s2.lockVolume('pad', 'w')).token).toBe(1);
    });

    it('a reader and a writer racing for one volume: never both', async () => {
      await initialised();
      for (let i = 0; i < 6; i++) {
        const name = `race${i}`;
        await md.createVolume(name, MiB);
        const [sr, sw] = [await session(), await session()];
        const order = i % 2 === 0 ? [sr.lockVolumeForReading(name, 'r'), sw.lockVolume(name, 'w')] : [sw.lockVolume(name, 'w'), sr.lockVolumeForReading(name, 'r')];
        const results = await Promise.allSettled(order);
        const won = results.filter((r) => r.status === 'fulfilled').length;
        expect(won, `${name}: ${results.map((r) => r.status).join(', ')}`).toBe(1);
        for (const r of results) if (r.status === 'rejected') expect((r.reason as TorusError).code).toBe('TORUS_ERR_VOLUME_IN_USE');
      }
    });

    it('a maintenance lock dies with its lease; stillHeld says so', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s1 = await session(3);
      const maint = await s1.lockVolumeForMaintenance(vol.id, 'm');
      await h.revokeExternally(md, s1.id);
      await h.eventually('maintenance lock gone', async () => !(await maint.stillHeld()));
      const s2 = await session();
      expect((await s2.lockVolumeForMaintenance(vol.id, 'm2')).token).toBe(2);
    });

    it('deleting a volume takes its stale, move and health records and maintenance lock with it; refused while written', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const keep = await md.createVolume('keep', MiB);
      const s = await session();
      const writer = await s.lockVolume('pad', 'w');
      await md.addStale(vol.id, 'peer-a', { ranges: [[0, 4]] });
      await md.putVolumeMove({ schema: 1, ringVersion: 3, volumeId: vol.id, done: true, scanned: 4, copied: 1, unavailable: 0, updatedAt: 'now' }, writer.token);
      await md.putVolumeHealth({ schema: 1, volumeId: vol.id, ringVersion: 3, blocks: 4, short: 0, repaired: 0, divergent: 0, checkedAt: 'now' });
      const kw = await s.lockVolume('keep', 'w');
      await md.addStale(keep.id, 'peer-a', { all: true });
      await md.putVolumeMove({ schema: 1, ringVersion: 3, volumeId: keep.id, done: false, scanned: 0, copied: 0, unavailable: 0, updatedAt: 'now' }, kw.token);
      await expectCode(md.deleteVolume('pad'), 'TORUS_ERR_VOLUME_IN_USE');
      await writer.release();
      const maint = await s.lockVolumeForMaintenance(vol.id, 'm');
      await md.deleteVolume('pad'); // a maintainer does not block a delete
      expect(await maint.stillHeld()).toBe(false);
      expect(await md.getStale(vol.id)).toEqual([]);
      expect((await md.listStale()).map((r) => r.volumeId)).toEqual([keep.id]);
      expect((await md.listVolumeMoves(3)).map((r) => r.volumeId)).toEqual([keep.id]);
      expect((await md.listVolumeHealth()).map((r) => r.volumeId)).toEqual([]);
      expect(await md.getFence(vol.id)).toBe(0);
      // Nothing keyed by the dead id can come back.
      await expectCode(md.addStale(vol.id, 'peer-a', { ranges: [[0, 1]] }), 'TORUS_ERR_VOLUME_NOT_FOUND');
      await expectCode(md.putVolumeHealth({ schema: 1, volumeId: vol.id, ringVersion: 3, blocks: 4, short: 0, repaired: 0, divergent: 0, checkedAt: 'now' }), 'TORUS_ERR_VOLUME_NOT_FOUND');
      await expectCode(md.removeStale(vol.id, 'peer-a', 'all', maint.token), 'TORUS_ERR_VOLUME_FENCED');
      await expectCode(
        md.putVolumeMove({ schema: 1, ringVersion: 3, volumeId: vol.id, done: true, scanned: 0, copied: 0, unavailable: 0, updatedAt: 'now' }, maint.token),
        'TORUS_ERR_VOLUME_FENCED',
      );
    });

    it('stale records: additions merge by compare-and-swap, all absorbs ranges, volumes and peers stay apart', async () => {
      await initialised();
      const vols: number[] = [];
      const s = await session();
      for (let i = 0; i < 10; i++) {
        const v = await md.createVolume(`v${i}`, MiB);
        await (await s.lockVolume(`v${i}`, 'w')).release();
        vols.push(v.id);
      }
      const [v1, , , , , , , , , v10] = vols as [number, number, number, number, number, number, number, number, number, number];
      expect(await md.getStale(v1)).toEqual([]);
      await md.addStale(v1, 'peer-a', { ranges: [[10, 20]] });
      await md.addStale(v1, 'peer-a', { ranges: [[0, 5], [20, 25]] });
      await md.addStale(v1, 'peer-b', { ranges: [[7, 8]] });
      await md.addStale(v10, 'peer-a', { all: true });
      const recs = await md.getStale(v1);
      expect(recs.map((r) => [r.peer, r.all, r.ranges])).toEqual([
        ['peer-a', false, [[0, 5], [10, 25]]],
        ['peer-b', false, [[7, 8]]],
      ]);
      expect(recs[0]).toMatchObject({ schema: 1, volumeId: v1 });
      expect(typeof recs[0]!.updatedAt).toBe('string');
      expect((await md.getStale(v10)).map((r) => [r.peer, r.all, r.ranges])).toEqual([['peer-a', true, []]]);
      expect((await md.listStale()).length).toBe(3);
      await md.addStale(v1, 'peer-b', { all: true });
      await md.addStale(v1, 'peer-b', { ranges: [[100, 101]] });
      expect((await md.getStale(v1)).find((r) => r.peer === 'peer-b')).toMatchObject({ all: true, ranges: [] });
      // Concurrent additions all land (compare-and-swap, no lock).
      await Promise.all(Array.from({ length: 6 }, (_, i) => md.addStale(vols[2]!, 'peer-c', { ranges: [[i * 10, i * 10 + 1]] })));
      expect((await md.getStale(vols[2]!))[0]!.ranges).toEqual(Array.from({ length: 6 }, (_, i) => [i * 10, i * 10 + 1]));
      // Past the cap a record names the whole volume.
      const scattered = Array.from({ length: 1025 }, (_, i) => [i * 2, i * 2 + 1] as const);
      await md.addStale(vols[3]!, 'peer-a', { ranges: scattered });
      expect((await md.getStale(vols[3]!))[0]).toMatchObject({ all: true, ranges: [] });
      await expectCode(md.addStale(v1, 'peer-a', {}), 'TORUS_ERR_ARG_INVALID');
      await expectCode(md.addStale(v1, 'peer-a', { ranges: [[5, 5]] }), 'TORUS_ERR_ARG_INVALID');
      await expectCode(md.addStale(v1, 'bad uuid', { all: true }), 'TORUS_ERR_ARG_INVALID');
      await expectCode(md.addStale(4242, 'peer-a', { all: true }), 'TORUS_ERR_VOLUME_NOT_FOUND');
    });

    it('stale records keep unsure blocks apart from missed ones; a removal under the newest token clears both', async () => {
      await initialised();
      const vol = await md.createVolume('pad', MiB);
      const s = await session();
      const lock = await s.lockVolume('pad', 'coordinator');
      await md.addStale(vol.id, 'peer-a', { unsure: [[4, 6]] });
      expect(await md.getStale(vol.id)).toMatchObject([{ peer: 'peer-a', all: false, ranges: [], unsure: [[4, 6]] }]);
      await md.addStale(vol.id, 'peer-a', { ranges: [[0, 1]], unsure: [[6, 7]] });
      expect((await md.getStale(vol.id))[0]).toMatchObject({ ranges: [[0, 1]], unsure: [[4, 7]] });
      await md.removeStale(vol.id, 'peer-a', [[0, 5]], lock.token);
      expect((await md.getStale(vol.id))[0]).toMatchObject({ ranges: [], unsure: [[5, 7]] });
      await md.removeStale(vol.id, 'peer-a', [[5, 7]], lock.token);
      expect(await md.getStale(vol.id)).toEqual([]);
      // A record without unsure blocks has no unsure field at all.
      await md.addStale(vol.id, 'peer-b', { ranges: [[1, 2]] });
      expect((await md.getStale(vol.id))[0]!.unsure).toBeUndefined();
      await expectCode(md.addStale(vol.id, 'peer-b', { unsure: [[3, 2]] }), 'TORUS_ERR_ARG_INVALID');
    });

    it('a stale record narrows to exactly the blocks still behind, only under the newest token', async () => {
      const { vol, old, lock } = await fencedOffAndCurrent();
      await md.addStale(vol.id, 'peer-a', { all: true });
      await md.addStale(vol.id, 'peer-b', { ranges: [[0, 10], [20, 30]] });
      await expectCode(md.narrowStale(vol.id, 'peer-a', [[3, 4]], old.token), 'TORUS_ERR_VOLUME_FENCED');
      expect((await md.getStale(vol.id)).find((r) => r.peer === 'peer-a')).toMatchObject({ all: true, ranges: [] });
      await md.narrowStale(vol.id, 'peer-a', [[7, 9], [3, 4]], lock.token);
      expect((await md.getStale(vol.id)).find((r) => r.peer === 'peer-a')).toMatchObject({ all: false, ranges: [[3, 4], [7, 9]] });
      // A listed record is replaced too: what the coordinator keeps, no more, no less.
      await md.narrowStale(vol.id, 'peer-b', [[5, 25]], lock.token);
      expect((await md.getStale(vol.id)).find((r) => r.peer === 'peer-b')!.ranges).toEqual([[5, 25]]);
      // Nothing kept: the record goes; no record: one is made, fencing still checked.
      await md.narrowStale(vol.id, 'peer-a', [], lock.token);
      expect((await md.getStale(vol.id)).map((r) => r.peer)).toEqual(['peer-b']);
      await md.narrowStale(vol.id, 'peer-a', [], lock.token);
      expect((await md.getStale(vol.id)).map((r) => r.peer)).toEqual(['peer-b']);
      await md.narrowStale(vol.id, 'peer-a', [[0, 1]], lock.token);
      expect((await md.getStale(vol.id)).find((r) => r.peer === 'peer-a')).toMatchObject({ all: false, ranges: [[0, 1]] });
      await expectCode(md.narrowStale(vol.id, 'peer-c', [[0, 1]], old.token), 'TORUS_ERR_VOLUME_FENCED');
      expect((await md.getStale(vol.id)).map((r) => r.peer).sort()).toEqual(['peer-a', 'peer-b']);
      await expectCode(md.narrowStale(vol.id, 'peer-a', [], old.token), 'TORUS_ERR_VOLUME_FENCED');
      await expectCode(md.narrowStale(vol.id, 'peer-a', [[2, 1]], lock.token), 'TORUS_ERR_ARG_INVALID');
    });

    it('an addition that names a token is made only while it is the newest: a fenced-off writer cannot distrust the copies of the one that took over', async () => {
      const { vol, old, lock } = await fencedOffAndCurrent();
      const fenced = await expectCode(md.addStale(vol.id, 'peer-a', { ranges: [[0, 10]], token: old.token }), 'TORUS_ERR_VOLUME_FENCED');
      expect(fenced.message).toContain(`newest fencing token is ${lock.token}`);
      await expectCode(md.addStale(vol.id, 'peer-a', { all: true, token: old.token }), 'TORUS_ERR_VOLUME_FENCED');
      await expectCode(md.addStale(vol.id, 'peer-a', { unsure: [[3, 4]], token: lock.token + 1 }), 'TORUS_ERR_VOLUME_FENCED');
      expect(await md.getStale(vol.id)).toEqual([]);
      await md.addStale(vol.id, 'peer-a', { ranges: [[0, 10]], token: lock.token });
      await md.addStale(vol.id, 'peer-a', { unsure: [[20, 21]], token: lock.token });
      // Without a token (a peer recording its own suspect blocks) it needs only the volume.
      await md.addStale(vol.id, 'peer-b', { ranges: [[5, 6]] });
      expect((await md.getStale(vol.id)).map((r) => [r.peer, r.ranges, r.unsure ?? []])).toEqual([
        ['peer-a', [[0, 10]], [[20, 21]]],
        ['peer-b', [[5, 6]], []],
      ]);
    });

    it('stale records are removed only under the newest fencing token', async () => {
      const { vol, s, old, lock } = await fencedOffAndCurrent();
      await md.addStale(vol.id, 'peer-a', { ranges: [[0, 10], [20, 30]] });
      await md.addStale(vol.id, 'peer-b', { all: true });
      const fenced = await expectCode(md.removeStale(vol.id, 'peer-a', [[0, 10]], old.token), 'TORUS_ERR_VOLUME_FENCED');
      expect(fenced.message).toContain(`newest fencing token is ${lock.token}`);
      await expectCode(md.removeStale(vol.id, 'peer-a', 'all', lock.token + 1), 'TORUS_ERR_VOLUME_FENCED');
      expect((await md.getStale(vol.id))[0]!.ranges).toEqual([[0, 10], [20, 30]]);
      await md.removeStale(vol.id, 'peer-a', [[0, 5], [25, 40]], lock.token);
      expect((await md.getStale(vol.id))[0]!.ranges).toEqual([[5, 10], [20, 25]]);
      // Ranges leave an `all` record whole; only 'all' clears it.
      await md.removeStale(vol.id, 'peer-b', [[0, 1000]], lock.token);
      expect((await md.getStale(vol.id)).find((r) => r.peer === 'peer-b')).toMatchObject({ all: true });
      await md.removeStale(vol.id, 'peer-b', 'all', lock.token);
      await md.removeStale(vol.id, 'peer-a', [[5, 10], [20, 25]], lock.token);
      expect(await md.getStale(vol.id)).toEqual([]);
      // Nothing to remove: still a fenced coordinator learns it is fenced.
      await md.removeStale(vol.id, 'peer-a', 'all', lock.token);
      await expectCode(md.removeStale(vol.id, 'peer-a', 'all', old.token), 'TORUS_ERR_VOLUME_FENCED');
      // A maintainer's token is the newest once it holds the maintenance lock.
      await lock.release();
      const maint = await s.lockVolumeForMaintenance(vol.id, 'm');
      await md.addStale(vol.id, 'peer-a', { ranges: [[1, 2]] });
      await expectCode(md.removeStale(vol.id, 'peer-a', 'all', lock.token), 'TORUS_ERR_VOLUME_FENCED');
      await md.removeStale(vol.id, 'peer-a', 'all', maint.token);
      expect(await md.getStale(vol.id)).toEqual([]);
    });

    it('ring acknowledgements live under the session lease', async () => {
      const s1 = await session();
      const s2 = await session();
      expect(await md.listRingAcks()).toEqual([]);
      await s1.ackRing({ peer: 'peer-a', kind: 'peer', ringVersion: 3, fenceRevision: 17 });
      await s1.ackRing({ peer: 'peer-a', kind: 'peer', ringVersion: 4, fenceRevision: 20 }); // refresh
      await s2.ackRing({ peer: null, kind: 'client', ringVersion: 4, fenceRevision: 0 });
      const acks = await md.listRingAcks();
      expect(acks.map((a) => [a.lease, a.peer, a.kind, a.ringVersion, a.fenceRevision]).sort()).toEqual(
        [
          [s1.id, 'peer-a', 'peer', 4, 20],
          [s2.id, null, 'client', 4, 0],
        ].sort(),
      );
      expect(acks[0]).toMatchObject({ schema: 1 });
      await expectCode(s1.ackRing({ peer: null, kind: 'peer', ringVersion: 4, fenceRevision: 0 }), 'TORUS_ERR_ARG_INVALID');
      await expectCode(s1.ackRing({ peer: 'peer-a', kind: 'peer', ringVersion: -1, fenceRevision: 0 }), 'TORUS_ERR_ARG_INVALID');
      await s2.close();
      await h.eventually('client ack gone', async () => (await md.listRingAcks()).length === 1);
      await h.revokeExternally(md, s1.id);
      await h.eventually('peer ack gone', async () => (await md.listRingAcks()).length === 0);
      await expectCode(s1.ackRing({ peer: 'peer-a', kind: 'peer', ringVersion: 4, fenceRevision: 0 }), 'TORUS_ERR_SESSION_LOST');
    });

    it('move records: written under the fence, listed per transition, pruned below a version', async () => {
      await initialised();
      const s = await session();
      const a = await md.createVolume('a', MiB);
      const b = await md.createVolume('b', MiB);
      const la = await s.lockVolume('a', 'w');
      const lb = await s.lockVolumeForMaintenance(b.id, 'm');
      const move = (ringVersion: number, volumeId: number, done: boolean): VolumeMoveRecord => ({
        schema: 1,
        ringVersion,
        volumeId,
        done,
        scanned: 10,
        copied: 3,
        unavailable: 0,
        updatedAt: '2024-01-01T00:00:00.000Z',
      });
      await md.putVolumeMove(move(4, b.id, false), lb.token);
      await md.putVolumeMove(move(4, a.id, true), la.token);
      await md.putVolumeMove(move(4, b.id, true), lb.token); // progress overwrites
      await md.putVolumeMove(move(12, a.id, false), la.token);
      await md.putVolumeMove(move(40, a.id, false), la.token);
      expect(await md.listVolumeMoves(4)).toEqual([move(4, a.id, true), move(4, b.id, true)]);
      expect(await md.listVolumeMoves(1)).toEqual([]);
      await expectCode(md.putVolumeMove(move(4, a.id, false), la.token + 5), 'TORUS_ERR_VOLUME_FENCED');
      await expectCode(md.putVolumeMove({ ...move(4, a.id, false), scanned: -1 }, la.token), 'TORUS_ERR_ARG_INVALID');
      await md.pruneVolumeMoves(12);
      expect(await md.listVolumeMoves(4)).toEqual([]);
      expect(await md.listVolumeMoves(12)).toEqual([move(12, a.id, false)]);
      expect(await md.listVolumeMoves(40)).toEqual([move(40, a.id, false)]);
    });

    it('health records: one per volume, the last one wins', async () => {
      await initialised();
      const s = await session();
      const a = await md.createVolume('a', MiB);
      await (await s.lockVolume('a', 'w')).release();
      const rec = (short: number): VolumeHealthRecord => ({ schema: 1, volumeId: a.id, ringVersion: 7, blocks: 100, short, repaired: 1, divergent: 0, checkedAt: '2024-01-01T00:00:00.000Z' });
      expect(await md.listVolumeHealth()).toEqual([]);
      await md.putVolumeHealth(rec(5));
      await md.putVolumeHealth(rec(0));
      expect(await md.listVolumeHealth()).toEqual([rec(0)]);
      await expectCode(md.putVolumeHealth({ ...rec(0), short: 1.5 }), 'TORUS_ERR_ARG_INVALID');
    });

    it('a peer record keeps its incarnation and rebalance rate', async () => {
      const s = await session();
      await s.putPeer(peerRecord('peer-r', { incarnation: 'inc-1', rebalanceBytesPerSec: 12.5 * MiB }));
      expect((await md.listPeers())[0]).toMatchObject({ incarnation: 'inc-1', rebalanceBytesPerSec: 12.5 * MiB });
    });
  });
}
