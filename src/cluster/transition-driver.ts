import type { Logger } from 'pino';
import { isTorusError } from '../errors/torus-error.js';
import type { RingRecord } from '../model/records.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { advanceRing, planRingChange } from '../ring/transition.js';
import { rethrowAssertion } from '../util/invariant.js';

export interface TransitionDriverOptions {
  readonly node: { ringAcknowledged(version: number, clients: boolean): Promise<boolean> };
  readonly ctx: ClusterContext;
  readonly logger: Logger;
  /** A member DOWN this long is taken out of the ring; 0 never. */
  readonly downOutIntervalMs: number;
}

/** A survivor is not filled past this share of its capacity by a down-out. */
const DOWN_OUT_FILL_MAX = 0.85;

/**
 * Moves ring transitions through their phases (docs/replication.md, "Ring
 * transitions"), on every torusd; compare-and-swap on the ring version
 * lets one win. moving → settled once every volume has moved; settled →
 * stable once every process doing I/O acknowledged settled. Also takes
 * members that stayed DOWN past the down-out interval out of the ring.
 */
export class TransitionDriver {
  private readonly log: Logger;
  /** Member → monotonic time this peer first saw it DOWN. */
  private readonly downSince = new Map<string, number>();

  constructor(private readonly opts: TransitionDriverOptions) {
    this.log = opts.logger.child({ module: 'transitions' });
  }

  /** The live peer records, from the node's heartbeat. */
  observePeers(live: ReadonlySet<string>): void {
    const now = this.opts.ctx.clock.monotonic();
    const ring = this.opts.ctx.ring();
    for (const m of ring.members) {
      if (live.has(m.uuid)) this.downSince.delete(m.uuid);
      else if (!this.downSince.has(m.uuid)) this.downSince.set(m.uuid, now);
    }
    for (const u of [...this.downSince.keys()]) if (!ring.members.some((m) => m.uuid === u)) this.downSince.delete(u);
  }

  /** One pass; true when there was nothing to drive (a stable ring and no member DOWN). */
  async run(): Promise<boolean> {
    const md = this.opts.ctx.metadata;
    const ring = await md.getRing();
    const t = ring.transition;
    if (t !== null && t.phase === 'moving') {
      const [volumes, moves] = await Promise.all([md.listVolumes(), md.listVolumeMoves(t.startedVersion)]);
      const done = new Set(moves.filter((m) => m.done).map((m) => m.volumeId));
      const left = volumes.filter((v) => !done.has(v.id));
      if (left.length === 0) await this.advance(ring, 'every volume moved');
      return false;
    }
    if (t !== null && t.phase === 'settled') {
      if (await this.opts.node.ringAcknowledged(ring.version, true)) await this.advance(ring, 'every process reads from the new owners');
      return false;
    }
    await md.pruneVolumeMoves(ring.version).catch(rethrowAssertion);
    await this.downOut(ring);
    return this.downSince.size === 0;
  }

  private async advance(ring: RingRecord, why: string): Promise<void> {
    if (ring.transition === null) return;
    const next = advanceRing(ring);
    try {
      await this.opts.ctx.metadata.setRing(next);
      this.log.info({ ringVersion: next.version, phase: next.transition?.phase ?? 'stable', why }, 'ring transition advanced');
    } catch (err) {
      if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT')) throw err;
    }
  }

  /** Takes out a member DOWN past the interval, unless too few members would remain or a survivor would fill up. */
  private async downOut(ring: RingRecord): Promise<void> {
    const every = this.opts.downOutIntervalMs;
    if (every <= 0) return;
    const now = this.opts.ctx.clock.monotonic();
    for (const [u, since] of this.downSince) {
      if (now - since < every) continue;
      if (!ring.members.some((m) => m.uuid === u)) continue;
      const survivors = ring.members.filter((m) => m.uuid !== u);
      if (survivors.length < ring.replication) {
        this.log.warn({ peer: u, members: ring.members.length, replication: ring.replication }, 'a member has been DOWN past the down-out interval, but removing it would leave fewer members than the replication');
        continue;
      }
      const peers = await this.opts.ctx.metadata.listPeers();
      const used = peers.filter((p) => survivors.some((m) => m.uuid === p.uuid));
      const capacity = used.reduce((s, p) => s + p.capacity, 0);
      const stored = peers.reduce((s, p) => s + p.used, 0);
      if (capacity > 0 && stored / capacity > DOWN_OUT_FILL_MAX) {
        this.log.warn({ peer: u, fill: stored / capacity }, 'a member has been DOWN past the down-out interval, but its data would fill the survivors past 85 %');
        continue;
      }
      const next = planRingChange(ring, survivors, ring.replication, ring.minReplicas, `down-out ${u}`, this.opts.ctx.clock.now());
      if (next === null) continue;
      try {
        await this.opts.ctx.metadata.setRing(next);
        this.log.warn({ peer: u, downForMs: now - since, ringVersion: next.version }, 'member DOWN past the down-out interval: taken out of the ring; its blocks are re-replicated');
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT')) throw err;
      }
      return;
    }
  }
}
