import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { MetadataSession, VolumeLock } from '../metadata/metadata-service.js';
import { VolumeJobs } from '../replication/block-jobs.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { VolumeCoordinator } from '../replication/coordinator.js';
import { VolumeReader } from '../replication/reader.js';
import type { WriteLevel } from '../replication/settings.js';
import { rethrowAssertion } from '../util/invariant.js';
import { readOnlyIo, Volume } from '../volume/volume.js';
import { releaseLock, type ReleasableLock } from './lock-release.js';

export type OpenMode = 'rw' | 'ro';

export interface OpenVolume {
  readonly name: string;
  readonly mode: OpenMode;
  readonly volume: Volume;
  /** The writer's coordinator (null for readers). */
  readonly coordinator: VolumeCoordinator | null;
  readonly jobs: VolumeJobs | null;
  /** Connections (or other users) holding it open. */
  users: number;
  lock: VolumeLock | null;
  /** Set when the lease under the lock was lost; changes are refused until it is taken again. */
  lockLost: boolean;
  /**
   * Set when, while our lease was gone, someone else took a token on the
   * volume (another node wrote it, or maintained it): what this process
   * still holds (a kernel's page cache, queued writes) predates their
   * changes, so changes stay refused for good.
   */
  fenced: boolean;
  /** Set once a fenced open stopped being shared: new users got a fresh open; this one ends with its last user. */
  retired?: boolean;
  /** Set when its close began: a relock that ends after it lets go of the lock it took. */
  closing?: boolean;
}

export interface VolumeManagerOptions {
  readonly ctx: ClusterContext;
  /** The current etcd session (replaced after a lost lease). */
  readonly session: () => MetadataSession | null;
  /** Who we are, for lock records: `torusd <uuid> on <host> (pid N)`. */
  readonly holder: string;
  readonly writeLevel?: WriteLevel;
  readonly logger: Logger;
  /** A lock release that etcd did not answer is tried again after this long (doubling up to 5 s). Default 200 ms. */
  readonly releaseRetryMs?: number;
}

/**
 * Opens volumes for the NBD server. Opening for writing takes the volume's
 * lock in etcd under this process's lease and makes this process the
 * volume's coordinator (docs/replication.md); every connection of this
 * process shares the one open volume, and the lock is released (after a
 * flush) when the last one goes. Opening read-only needs no lock.
 */
export class VolumeManager {
  private readonly opts: VolumeManagerOptions;
  private readonly log: Logger;
  private readonly open = new Map<string, Promise<OpenVolume>>();
  /** Volumes whose last user left and that are flushing and unlocking now. */
  private readonly closing = new Map<string, Promise<void>>();
  /** beginStop() was called: the process is stopping and its lease ends with it. */
  private stopping = false;
  /** Resolved by beginStop(): lock releases waiting to try again give up then. */
  private readonly stopBegun: Promise<void>;
  private markStopBegun!: () => void;
  private readonly relocking = new Map<OpenVolume, Promise<void>>();
  /** Sessions lost so far (leaseLost()): a relock that spans one took its lock under a dead lease. */
  private leasesLost = 0;

  constructor(opts: VolumeManagerOptions) {
    this.opts = opts;
    this.log = opts.logger.child({ module: 'volumes' });
    this.stopBegun = new Promise<void>((resolve) => (this.markStopBegun = resolve));
  }

  /**
   * The process is stopping (its lease is revoked at the end, or kept for
   * kernel attachments, whose next run resumes it): a lock release that
   * etcd did not answer is not tried again, so a volume closed as the stop
   * begins (its last NBD client left) does not hold the stop for as long
   * as etcd is unreachable. Idempotent; closeAll() calls it too.
   */
  beginStop(): void {
    this.stopping = true;
    this.markStopBegun();
  }

  /**
   * `adoptToken` (kernel attach, src/attach/): take over the lock this
   * process's lease already holds under that token, from before a torusd
   * restart, instead of taking a new one. The lock is then renewed at once
   * (a newer token, the same lock) so that the new coordinator's versions
   * never repeat the previous run's.
   */
  async acquire(name: string, mode: OpenMode, opts: { adoptToken?: number; writeLevel?: WriteLevel } = {}): Promise<OpenVolume> {
    const key = `${mode}:${name}`;
    // A client that reconnects right after disconnecting must not race our
    // own lock release (it would find the lock still held by this process).
    while (!this.open.has(key) && this.closing.has(key)) await this.closing.get(key);
    let p = this.open.get(key);
    if (p) {
      // An open fenced for good is never handed to a new user: its writes
      // would all be refused (a client would reconnect into the same dead
      // open). Its users keep it until they let go; the newcomer opens afresh.
      const existing = await p.catch(() => null);
      // An open that lost its lock with the lease is not handed out as it
      // is: it tries to take the lock again first (another holder having
      // taken it fences it for good, below).
      if (existing !== null && existing.lockLost && !existing.fenced) await this.relockOne(existing);
      if (existing !== null && (existing.fenced || existing.coordinator?.fencedBy != null)) {
        if (this.open.get(key) === p) this.open.delete(key);
        existing.retired = true;
        this.log.info({ volume: name, mode }, 'the open volume is fenced for good; a new user opens it afresh');
        p = this.open.get(key);
      }
    }
    if (!p) {
      p = this.openVolume(name, mode, opts.adoptToken, opts.writeLevel);
      this.open.set(key, p);
      p.catch(() => this.open.delete(key));
    }
    const ov = await p;
    ov.users++;
    return ov;
  }

  async release(ov: OpenVolume): Promise<void> {
    ov.users--;
    if (ov.users > 0) return;
    const key = `${ov.mode}:${ov.name}`;
    if (ov.retired === true) {
      // No longer the shared open: the key belongs to its successor.
      await this.closeVolume(ov);
      return;
    }
    this.open.delete(key);
    const done = this.closeVolume(ov);
    const settled: Promise<void> = done.then(
      () => undefined,
      () => undefined,
    );
    this.closing.set(key, settled);
    void settled.then(() => {
      if (this.closing.get(key) === settled) this.closing.delete(key);
    });
    await done;
  }

  /** Open volumes, for status and the background scheduler. */
  async list(): Promise<OpenVolume[]> {
    const all = await Promise.allSettled([...this.open.values()]);
    return all.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  }

  /** Is this process the writer of the volume? (Maintenance leaves it alone then.) */
  async writes(volumeId: number): Promise<boolean> {
    return (await this.list()).some((ov) => ov.mode === 'rw' && ov.volume.record.id === volumeId);
  }

  /** The lease is gone: its locks may be someone else's now. */
  async leaseLost(): Promise<void> {
    this.leasesLost++;
    for (const ov of await this.list()) {
      if (ov.mode === 'rw' && ov.lock) {
        ov.lockLost = true;
        this.log.error({ volume: ov.name, token: ov.lock.token }, 'volume lock lost with the etcd lease; changes are refused until it is taken again');
      }
    }
  }

  /**
   * After a new session: take the locks of open volumes again (newer tokens,
   * published to the peers), but only where no one else took a token since
   * our last one. Tokens are handed out one after another, so the new lock's
   * token is our last + 1 exactly when nobody held the volume in between;
   * otherwise another node may have written it, and resuming would let our
   * stale writes land on top of theirs.
   */
  async relock(): Promise<void> {
    for (const ov of await this.list()) await this.relockOne(ov);
  }

  /** One relock at a time per open: a second would find the lock held by the first and take it for another holder's. */
  private relockOne(ov: OpenVolume): Promise<void> {
    let p = this.relocking.get(ov);
    if (p === undefined) {
      p = this.relockNow(ov).finally(() => this.relocking.delete(ov));
      this.relocking.set(ov, p);
    }
    return p;
  }

  private async relockNow(ov: OpenVolume): Promise<void> {
    const session = this.opts.session();
    if (!session) return;
    if (ov.mode !== 'rw' || !ov.lockLost || ov.fenced || ov.closing === true) return;
    const last = ov.coordinator?.currentLock.token ?? ov.lock?.token ?? 0;
    const leasesLost = this.leasesLost;
    try {
      const lock = await session.lockVolume(ov.name, this.opts.holder);
      if (lock.token !== last + 1) {
        await this.releaseLock(lock, session, ov.name);
        this.fenceForGood(ov, { lastToken: last, newToken: lock.token });
        return;
      }
      try {
        await ov.coordinator!.renewToken(lock);
      } catch (err) {
        // Not ours to keep: nothing would ever let it go (seed 556).
        await this.releaseLock(lock, session, ov.name);
        throw err;
      }
      if (this.leasesLost !== leasesLost || this.opts.session() !== session) {
        // The session this lock was taken under was lost while its token
        // was being published: the lock went with its lease. Changes stay
        // refused until the next relock, under the new session (seed 2600:
        // clearing lockLost here left the open holding a dead lease for
        // good, every change refused with nothing to take the lock again).
        this.log.warn({ volume: ov.name, token: lock.token }, 'the etcd session was lost while the volume lock was being taken again; taking it again under the new one');
        return;
      }
      ov.lockLost = false;
      this.log.info({ volume: ov.name, token: lock.token }, 'volume lock taken again; changes resume');
    } catch (err) {
      rethrowAssertion(err);
      const heldToken = isTorusError(err, 'TORUS_ERR_VOLUME_IN_USE') ? err.details?.['token'] : undefined;
      if (typeof heldToken === 'number' && heldToken > last) {
        // Another holder has the lock under a token newer than ours:
        // resuming can never be safe (readers take no token: not this
        // case). Fenced for good, so that a new user is not handed this
        // open (it would look like the writer).
        this.fenceForGood(ov, { err, lastToken: last, newToken: heldToken });
        return;
      }
      this.log.error({ err, volume: ov.name }, 'could not take the volume lock again; changes stay refused');
    }
  }

  private fenceForGood(ov: OpenVolume, fields: Record<string, unknown>): void {
    ov.fenced = true;
    this.log.error({ ...fields, volume: ov.name }, 'the volume was taken by another holder while our lease was gone; our changes stay refused for good (detach and attach again)');
  }

  /**
   * `keepLock` (kernel attach): volumes whose lock must outlive this process,
   * because a restarted torusd resumes the lease and the lock with it. They
   * are flushed, not unlocked.
   */
  async closeAll(opts: { keepLock?: (ov: OpenVolume) => boolean } = {}): Promise<void> {
    this.beginStop();
    for (const ov of await this.list()) {
      this.open.delete(`${ov.mode}:${ov.name}`);
      await this.closeVolume(ov, opts.keepLock?.(ov) ?? false).catch((err) => this.log.error({ err, volume: ov.name }, 'closing volume failed'));
    }
  }

  /** `writeLevel` (a CSI StorageClass's) overrides this process's own for the volume while it is open; users that share it later share its level. */
  private async openVolume(name: string, mode: OpenMode, adoptToken?: number, writeLevel?: WriteLevel): Promise<OpenVolume> {
    const ctx = this.opts.ctx;
    if (mode === 'ro') {
      const record = await ctx.metadata.getVolume(name);
      const reader = await VolumeReader.open(ctx, record);
      this.log.info({ volume: name, id: record.id, mode }, 'volume opened');
      return { name, mode, users: 0, lock: null, lockLost: false, fenced: false, coordinator: null, jobs: null, volume: new Volume(record, readOnlyIo(reader, name), this.opts.logger) };
    }
    const session = this.opts.session();
    if (!session) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `cannot lock volume "${name}" for writing: no etcd session`);
    let lock = adoptToken === undefined ? await session.lockVolume(name, this.opts.holder) : await session.adoptVolumeLock(name, adoptToken);
    if (adoptToken !== undefined) lock = await lock.renew();
    const holder: { ov: OpenVolume | null } = { ov: null };
    let coordinator: VolumeCoordinator;
    try {
      coordinator = await VolumeCoordinator.open({
        ctx,
        volume: lock.volume,
        lock,
        ...((writeLevel ?? this.opts.writeLevel) ? { writeLevel: writeLevel ?? this.opts.writeLevel } : {}),
        onLockChanged: (l) => {
          if (holder.ov) holder.ov.lock = l;
        },
      });
    } catch (err) {
      if (adoptToken === undefined) await this.releaseLock(lock, session, name);
      throw err;
    }
    const ov: OpenVolume = { name, mode, users: 0, lock, lockLost: false, fenced: false, coordinator, jobs: new VolumeJobs(coordinator), volume: undefined as unknown as Volume };
    holder.ov = ov;
    const io = {
      read: (i: number, o: number, l: number) => coordinator.read(i, o, l),
      allocated: (i: number) => coordinator.allocated(i),
      write: (i: number, o: number, d: Buffer, fua: boolean) => (this.checkLock(ov), coordinator.write(i, o, d, fua)),
      zero: (i: number, o: number, l: number, z: { punch: boolean; fua: boolean }) => (this.checkLock(ov), coordinator.zero(i, o, l, z)),
      flush: () => (this.checkLock(ov), coordinator.flush()),
      acknowledged: (changes: readonly (readonly [number, number])[]) => coordinator.acknowledged(changes),
    };
    (ov as { volume: Volume }).volume = new Volume(lock.volume, io, this.opts.logger);
    this.log.info({ volume: name, id: lock.volume.id, mode, token: lock.token }, 'volume opened');
    return ov;
  }

  private checkLock(ov: OpenVolume): void {
    // Refused for good is not the same answer as refused until the lock is
    // back: a client tells them apart by the code (and attaches again on
    // this one, as attach-manager does for its own attachments).
    if (ov.fenced) {
      throw new TorusError('TORUS_ERR_VOLUME_FENCED', `volume "${ov.name}": another holder took the volume while our lease was gone; changes stay refused (detach and attach again)`);
    }
    if (ov.lockLost || !ov.lock) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${ov.name}": the write lock may have expired (etcd unreachable); changes are refused until it is taken again`);
    }
  }

  private async closeVolume(ov: OpenVolume, keepLock = false): Promise<void> {
    ov.closing = true;
    // A relock under way decides whether the lock is ours again: wait for
    // it, so that the close flushes and lets go of the lock it takes (seed
    // 556: a close during the relock kept that lock for good, and the
    // volume stayed in use). No relock starts from here on.
    await this.relocking.get(ov)?.catch(() => undefined);
    try {
      if (ov.mode === 'rw') {
        // A close flushes. Without the lock nothing may be flushed on our
        // behalf any more: the close says so rather than pass for a flush.
        if (ov.lockLost) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${ov.name}" was closed without its final flush: its lock was lost with the etcd lease`);
        await ov.volume.flush();
      }
    } finally {
      await ov.coordinator?.close();
      const lock = ov.coordinator?.currentLock ?? ov.lock;
      // Not lost: the lock is on the current session's lease (a new session
      // marks every lock lost until relock() takes it again under the new one).
      const session = this.opts.session();
      if (lock && !ov.lockLost && !keepLock && session !== null) await this.releaseLock(lock, session, ov.name);
      this.log.info({ volume: ov.name, mode: ov.mode, lockKept: keepLock }, 'volume closed');
    }
  }

  /**
   * Releases a lock taken under `session`, trying again while etcd does not
   * answer (lock-release.ts): until the session is replaced (the lock went
   * with the old lease) or this process stops (its lease goes with it). A
   * client that reconnects meanwhile waits for it (acquire waits on closing).
   */
  private releaseLock(lock: ReleasableLock, session: MetadataSession, volume: string): Promise<boolean> {
    return releaseLock(lock, {
      clock: this.opts.ctx.clock,
      logger: this.log,
      session,
      stillWanted: () => !this.stopping && this.opts.session() === session,
      interrupted: this.stopBegun,
      retryMs: this.opts.releaseRetryMs ?? 200,
      fields: { volume },
    });
  }
}
