import type { Logger } from 'pino';
import { isTorusError } from '../errors/torus-error.js';
import type { VolumeRecord } from '../model/records.js';
import { VolumeJobs } from '../replication/block-jobs.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { VolumeCoordinator } from '../replication/coordinator.js';
import type { VolumeManager } from './volume-manager.js';
import type { MetadataSession } from '../metadata/metadata-service.js';
import { releaseLock } from './lock-release.js';
import { withTimeout } from '../util/timeout.js';
import { isAssertionFailure } from '../util/invariant.js';

export interface MaintenanceOptions {
  readonly node: { readonly volumes: VolumeManager; readonly isLive: boolean; currentSession(): MetadataSession | null };
  readonly ctx: ClusterContext;
  readonly logger: Logger;
  readonly holder: string;
  /** Volumes this peer maintains in one pass at most. */
  readonly volumesMax: number;
  /** A lock release that etcd did not answer is tried again after this long (doubling up to 5 s). */
  readonly releaseRetryMs: number;
  /**
   * A volume whose last lock expired with its lease is taken only once this
   * long has passed since this peer first found it so (the session TTL):
   * its writer, back after an etcd outage, takes it again first.
   */
  readonly expiredGraceMs: number;
}

/** Volumes whose expired lock a peer keeps waiting on at most (more are forgotten and their wait starts again). */
const EXPIRED_SEEN_MAX = 4096;

/**
 * Work on volumes that no one writes (docs/replication.md, "Maintenance"):
 * catch-up of peers named by stale records, moves during a ring
 * transition, and scrubs that are due. For each such volume a peer takes
 * the maintenance lock (a fencing token, refused while a writer holds the
 * volume) and runs the same coordinator code a writer runs. A writer that
 * opens the volume meanwhile gets a newer token, which fences the
 * maintainer off at the peers.
 */
export class Maintenance {
  private readonly log: Logger;
  /** Set by stop(): no pass starts and no further volume is taken. */
  private stopping = false;
  /** Passes under way (a test or the simulation may run one beside the timer's). */
  private readonly running = new Set<Promise<boolean>>();
  /** Coordinators of the volumes being maintained (stop() closes them). */
  private readonly active = new Set<VolumeCoordinator>();
  /** Volumes found with an expired lock: its token, and when this peer first found it (monotonic ms). */
  private readonly expiredSeen = new Map<number, { readonly token: number; readonly since: number }>();

  constructor(private readonly opts: MaintenanceOptions) {
    this.log = opts.logger.child({ module: 'maintenance' });
  }

  /** One pass; true when no volume needed maintenance. */
  run(): Promise<boolean> {
    if (this.stopping) return Promise.resolve(true);
    const pass = this.pass();
    this.running.add(pass);
    const done = () => void this.running.delete(pass);
    pass.then(done, done);
    return pass;
  }

  /**
   * For an orderly stop, before the session goes: ends the passes under
   * way at their next block (closing the coordinator is what a writer's
   * close does too) and waits up to `waitMs` for them, so that their locks
   * are released cleanly. A lock that vanishes with the lease instead counts
   * as expired, and the volume's next holder must then record every peer
   * that misses its token stale for the whole volume (coordinator.ts,
   * "fencing").
   */
  async stop(waitMs: number): Promise<void> {
    this.stopping = true;
    if (this.running.size === 0) return;
    for (const c of this.active) void c.close();
    const ended = await withTimeout(Promise.allSettled([...this.running]), waitMs, this.opts.ctx.clock, 'maintenance pass').then(
      () => true,
      () => false,
    );
    if (!ended) this.log.warn({ waitMs }, 'a maintenance pass did not end in time for the stop; its lock goes with the lease');
  }

  private async pass(): Promise<boolean> {
    const { ctx } = this.opts;
    const session = this.opts.node.currentSession();
    if (session === null) return false;
    const md = ctx.metadata;
    const ring = ctx.ring();
    const [volumes, stale, health] = await Promise.all([md.listVolumes(), md.listStale(), md.listVolumeHealth()]);
    const moves = ring.transition?.phase === 'moving' ? await md.listVolumeMoves(ring.transition.startedVersion) : [];
    const moved = new Set(moves.filter((m) => m.done).map((m) => m.volumeId));
    const stalePeers = new Map<number, Set<string>>();
    for (const r of stale) {
      let s = stalePeers.get(r.volumeId);
      if (s === undefined) stalePeers.set(r.volumeId, (s = new Set()));
      s.add(r.peer);
    }
    const checked = new Map(health.map((h) => [h.volumeId, h]));
    const scrubEvery = ctx.settings.scrubIntervalMs;
    const due: { v: VolumeRecord; scrub: 'deep' | 'scan' | undefined; suspect: boolean }[] = [];
    for (const v of volumes) {
      if (await this.opts.node.volumes.writes(v.id)) continue;
      const peers = [...(stalePeers.get(v.id) ?? [])];
      const suspect = ring.members.some((m) => ctx.health.usable(m.uuid) && ctx.suspectVolumesOf(m.uuid).includes(v.id));
      const catchUp = peers.some((p) => ctx.health.usable(p) && ctx.replica(p) !== null) || suspect;
      const move = ring.transition?.phase === 'moving' && !moved.has(v.id);
      const h = checked.get(v.id);
      // A check at the current ring version backs `Balanced: true`; a deep scrub repeats at the interval.
      const stable = ring.transition === null;
      const deep = stable && scrubEvery > 0 && h !== undefined && ctx.clock.now() - Date.parse(h.checkedAt) >= scrubEvery;
      const scan = stable && (h === undefined || h.ringVersion !== ring.version);
      const scrub = deep ? ('deep' as const) : scan ? ('scan' as const) : undefined;
      if (catchUp || move || scrub !== undefined) due.push({ v, scrub, suspect });
    }
    // Peers pick in their own random order, so they spread over the volumes.
    for (let i = due.length - 1; i > 0; i--) {
      const j = ctx.random.int(i + 1);
      [due[i], due[j]] = [due[j]!, due[i]!];
    }
    let taken = 0;
    this.forgetExpired(new Set(due.map((d) => d.v.id)));
    if (due.length === 0) return true;
    for (const { v, scrub, suspect } of due) {
      if (taken >= this.opts.volumesMax || this.stopping) break;
      let lock;
      try {
        // Suspect copies (a replica stopped uncleanly) are checked at once,
        // grace or not: until then a read-only opener cannot read them,
        // and the holder of an expired lock was most likely that process.
        lock = await session.lockVolumeForMaintenance(v.id, `${this.opts.holder} (maintenance)`, { expired: suspect ? 'take' : this.expiredTaken(v.id) });
      } catch (err) {
        if (isTorusError(err, 'TORUS_ERR_VOLUME_LOCK_EXPIRED')) {
          this.sawExpired(v, err.details?.['token']);
          continue;
        }
        if (isTorusError(err, 'TORUS_ERR_VOLUME_IN_USE') || isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT') || isTorusError(err, 'TORUS_ERR_VOLUME_NOT_FOUND')) continue;
        throw err;
      }
      this.expiredSeen.delete(v.id);
      taken++;
      let c: VolumeCoordinator | null = null;
      try {
        c = await VolumeCoordinator.open({ ctx, volume: lock.volume, lock });
        this.active.add(c);
        if (!this.stopping) {
          const report = await new VolumeJobs(c).runOnce(scrub === undefined ? {} : { scrub });
          this.log.info({ volume: v.name, ...report }, 'maintenance pass');
        }
      } catch (err) {
        // stop() closing the coordinator under the pass is no failure.
        const stopped = this.stopping && isTorusError(err, 'TORUS_ERR_VOLUME_LOCK_LOST');
        // A broken invariant is reported at once: the process stops before the release below, as in a crash.
        if (isAssertionFailure(err)) ctx.invariantBroken(err, { module: 'maintenance', volume: v.name });
        else if (!isTorusError(err, 'TORUS_ERR_VOLUME_FENCED') && !stopped) this.log.warn({ err, volume: v.name }, 'maintenance of a volume failed');
      } finally {
        if (c !== null) {
          // Closed before the release in every case: its stale records settle first.
          await c.close();
          this.active.delete(c);
        }
        // A maintenance key left on our lease would refuse every other
        // maintainer the volume for as long as this process runs (a ring
        // transition waiting for the volume to move would never end).
        await releaseLock(lock, {
          clock: ctx.clock,
          logger: this.log,
          session,
          stillWanted: () => this.opts.node.isLive && this.opts.node.currentSession() === session,
          retryMs: this.opts.releaseRetryMs,
          fields: { volume: v.name },
        });
      }
    }
    return false;
  }

  /**
   * The expired token this peer takes for the volume: the one whose grace
   * is over, else none ('refuse'). A writer whose lease ran out during an
   * etcd outage takes its lock again as soon as it has a new session
   * (volume-manager.ts, relock); a maintainer that took the volume first
   * would fence it off for good, and its client would see I/O errors until
   * it attached again. Only background work waits: a writer opening the
   * volume does not, and nothing about safety depends on the wait.
   */
  private expiredTaken(volumeId: number): 'refuse' | number {
    const seen = this.expiredSeen.get(volumeId);
    if (seen === undefined || this.opts.ctx.clock.monotonic() - seen.since < this.opts.expiredGraceMs) return 'refuse';
    return seen.token;
  }

  private sawExpired(v: VolumeRecord, token: unknown): void {
    if (typeof token !== 'number') return;
    const seen = this.expiredSeen.get(v.id);
    if (seen !== undefined && seen.token === token) return;
    if (this.expiredSeen.size >= EXPIRED_SEEN_MAX) this.expiredSeen.clear();
    this.expiredSeen.set(v.id, { token, since: this.opts.ctx.clock.monotonic() });
    this.log.info({ volume: v.name, token, graceMs: this.opts.expiredGraceMs }, 'the last lock of a volume due for maintenance expired; its holder gets time to take it again');
  }

  /** Drops the waits of volumes no longer due (done by someone else, deleted, or taken by a writer). */
  private forgetExpired(due: ReadonlySet<number>): void {
    for (const id of this.expiredSeen.keys()) if (!due.has(id)) this.expiredSeen.delete(id);
  }
}
