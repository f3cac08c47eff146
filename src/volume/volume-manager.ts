import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { MetadataService, MetadataSession, VolumeLock } from '../metadata/metadata-service.js';
import type { VolumeRecord } from '../model/records.js';
import { systemClock, type Clock } from '../util/clock.js';
import { Volume, type Placement, type VolumeGuard } from './volume.js';

export type OpenMode = 'rw' | 'ro';

export interface OpenVolume {
  readonly name: string;
  readonly mode: OpenMode;
  readonly volume: Volume;
  /** Connections (or other users) holding it open. */
  users: number;
  lock: VolumeLock | null;
  /** Set when the lease under the lock was lost; writes are refused until re-locked. */
  lockLost: boolean;
}

export interface VolumeManagerOptions {
  readonly metadata: MetadataService;
  /** The current etcd session (replaced after a lost lease). */
  readonly session: () => MetadataSession | null;
  readonly placement: (record: VolumeRecord) => Placement;
  /** Who we are, for lock records: `torusd <uuid> on <host> (pid N)`. */
  readonly holder: string;
  readonly logger: Logger;
  readonly clock?: Clock;
}

/**
 * Opens volumes for the NBD server. Opening for writing takes the volume's
 * lock in etcd under this process's lease; every connection of this process
 * shares the one open volume, and the lock is released (after a flush) when
 * the last one goes. Writes carry the lock's fencing token and are refused
 * once the lease may have expired, so a writer cut off from etcd stops
 * before another may start.
 */
export class VolumeManager {
  private readonly opts: VolumeManagerOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly open = new Map<string, Promise<OpenVolume>>();
  /** Volumes whose last user left and that are flushing and unlocking now. */
  private readonly closing = new Map<string, Promise<void>>();

  constructor(opts: VolumeManagerOptions) {
    this.opts = opts;
    this.log = opts.logger.child({ module: 'volumes' });
    this.clock = opts.clock ?? systemClock;
  }

  /**
   * `adoptToken` (kernel attach, src/attach/): take over the lock this
   * process's lease already holds under that token, from before a torusd
   * restart, instead of taking a new one.
   */
  async acquire(name: string, mode: OpenMode, opts: { adoptToken?: number } = {}): Promise<OpenVolume> {
    const key = `${mode}:${name}`;
    // A client that reconnects right after disconnecting must not race our
    // own lock release (it would find the lock still held by this process).
    while (!this.open.has(key) && this.closing.has(key)) await this.closing.get(key);
    let p = this.open.get(key);
    if (!p) {
      p = this.openVolume(name, mode, opts.adoptToken);
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

  /** Open volumes, for /v1/status. */
  async list(): Promise<OpenVolume[]> {
    const all = await Promise.allSettled([...this.open.values()]);
    return all.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  }

  /** The lease is gone: stop writing everywhere at once. */
  async leaseLost(): Promise<void> {
    for (const ov of await this.list()) {
      if (ov.mode === 'rw' && ov.lock) {
        ov.lockLost = true;
        this.log.error({ volume: ov.name, token: ov.lock.token }, 'volume lock lost with the etcd lease; writes are refused until it is taken again');
      }
    }
  }

  /** After a new session: take the locks of open volumes again (new tokens). */
  async relock(): Promise<void> {
    const session = this.opts.session();
    if (!session) return;
    for (const ov of await this.list()) {
      if (ov.mode !== 'rw' || !ov.lockLost) continue;
      try {
        ov.lock = await session.lockVolume(ov.name, this.opts.holder);
        ov.lockLost = false;
        this.log.info({ volume: ov.name, token: ov.lock.token }, 'volume lock taken again; writes resume');
      } catch (err) {
        this.log.error({ err, volume: ov.name }, 'could not take the volume lock again; writes stay refused');
      }
    }
  }

  /**
   * `keepLock` (kernel attach): volumes whose lock must outlive this process,
   * because a restarted torusd resumes the lease and the lock with it. They
   * are flushed, not unlocked.
   */
  async closeAll(opts: { keepLock?: (ov: OpenVolume) => boolean } = {}): Promise<void> {
    for (const ov of await this.list()) {
      this.open.delete(`${ov.mode}:${ov.name}`);
      await this.closeVolume(ov, opts.keepLock?.(ov) ?? false).catch((err) => this.log.error({ err, volume: ov.name }, 'closing volume failed'));
    }
  }

  private async openVolume(name: string, mode: OpenMode, adoptToken?: number): Promise<OpenVolume> {
    const record = await this.opts.metadata.getVolume(name);
    let lock: VolumeLock | null = null;
    if (mode === 'rw') {
      const session = this.opts.session();
      if (!session) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `cannot lock volume "${name}" for writing: no etcd session`);
      lock = adoptToken === undefined ? await session.lockVolume(name, this.opts.holder) : await session.adoptVolumeLock(name, adoptToken);
    }
    const ov: OpenVolume = {
      name,
      mode,
      users: 0,
      lock,
      lockLost: false,
      volume: undefined as unknown as Volume,
    };
    const guard: VolumeGuard = {
      writeToken: () => {
        if (mode === 'ro') throw new TorusError('TORUS_ERR_VOLUME_READ_ONLY', `volume "${name}" is open read-only`);
        const s = this.opts.session();
        if (ov.lockLost || !ov.lock || !s || this.clock.monotonic() > s.leaseDeadline()) {
          throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}": the write lock may have expired (etcd unreachable); writes are refused until it is taken again`);
        }
        return ov.lock.token;
      },
    };
    (ov as { volume: Volume }).volume = new Volume(record, this.opts.placement(record), guard, this.opts.logger);
    this.log.info({ volume: name, id: record.id, mode, token: lock?.token ?? null }, 'volume opened');
    return ov;
  }

  private async closeVolume(ov: OpenVolume, keepLock = false): Promise<void> {
    try {
      if (ov.mode === 'rw') await ov.volume.flush();
    } finally {
      if (ov.lock && !ov.lockLost && !keepLock) await ov.lock.release().catch((err) => this.log.warn({ err, volume: ov.name }, 'releasing the volume lock failed; it ends with the lease'));
      this.log.info({ volume: ov.name, mode: ov.mode, lockKept: keepLock }, 'volume closed');
    }
  }
}
