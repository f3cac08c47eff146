import type { Logger } from 'pino';
import { isTorusError } from '../errors/torus-error.js';
import type { PeerRecord, RingRecord } from '../model/records.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { checkDownOut, downOutShares, type DownOutCheck, type DownOutShares, type PeerFigures } from '../ring/down-out.js';
import { advanceRing, planRingChange } from '../ring/transition.js';
import { rethrowAssertion } from '../util/invariant.js';

export interface TransitionDriverOptions {
  readonly node: { ringAcknowledged(version: number, clients: boolean): Promise<boolean> };
  readonly ctx: ClusterContext;
  readonly logger: Logger;
  /** A member DOWN this long is taken out of the ring; 0 never. */
  readonly downOutIntervalMs: number;
}

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
  /**
   * Member → capacity and usage of its last peer record seen: a DOWN
   * member's record is gone from etcd with its lease, and its last `used`
   * is the best figure of what it held.
   */
  private readonly lastSeen = new Map<string, PeerFigures>();
  /** Member → why its down-out is held back (reason and survivor): logged when it changes, not every pass. */
  private readonly held = new Map<string, string>();
  /** downOutShares of one member under one ring version (placement over many refs: not every pass). */
  private shares: { ringVersion: number; value: DownOutShares } | null = null;

  constructor(private readonly opts: TransitionDriverOptions) {
    this.log = opts.logger.child({ module: 'transitions' });
  }

  /** The live peer records, from the node's heartbeat. */
  observePeers(records: readonly PeerRecord[]): void {
    const now = this.opts.ctx.clock.monotonic();
    const ring = this.opts.ctx.ring();
    const live = new Map(records.map((p) => [p.uuid, p]));
    for (const m of ring.members) {
      const p = live.get(m.uuid);
      if (p !== undefined) {
        this.downSince.delete(m.uuid);
        this.held.delete(m.uuid);
        this.lastSeen.set(m.uuid, { capacity: p.capacity, used: p.used });
      } else if (!this.downSince.has(m.uuid)) this.downSince.set(m.uuid, now);
    }
    const member = (u: string): boolean => ring.members.some((m) => m.uuid === u);
    for (const map of [this.downSince, this.held, this.lastSeen]) for (const u of [...map.keys()]) if (!member(u)) map.delete(u);
  }

  /** Members DOWN past the interval whose down-out this peer holds back (the torus_ring_down_out_held gauge). */
  downOutHeld(): number {
    return this.held.size;
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

  /**
   * Takes out a member DOWN past the interval, unless fewer than R members
   * would remain or a survivor would end past 85 % (ring/down-out.ts).
   */
  private async downOut(ring: RingRecord): Promise<void> {
    const every = this.opts.downOutIntervalMs;
    if (every <= 0) return;
    const now = this.opts.ctx.clock.monotonic();
    let figures: Map<string, PeerFigures> | null = null;
    for (const [u, since] of this.downSince) {
      if (now - since < every) continue;
      if (!ring.members.some((m) => m.uuid === u)) continue;
      if (figures === null) {
        // Fresh records for the live members; the last ones seen for the others.
        const live = await this.opts.ctx.metadata.listPeers();
        figures = new Map(this.lastSeen);
        for (const p of live) if (ring.members.some((m) => m.uuid === p.uuid)) figures.set(p.uuid, { capacity: p.capacity, used: p.used });
      }
      const check = checkDownOut({ ring, member: u, shares: this.sharesOf(ring, u), peers: figures });
      if (!check.ok) {
        this.hold(u, now - since, check);
        continue;
      }
      const next = planRingChange(ring, ring.members.filter((m) => m.uuid !== u), ring.replication, ring.minReplicas, `down-out ${u}`, this.opts.ctx.clock.now());
      if (next === null) continue;
      try {
        await this.opts.ctx.metadata.setRing(next);
        this.held.delete(u);
        this.log.warn(
          { peer: u, downForMs: now - since, ringVersion: next.version, estimatedBytes: check.estimate.bytes, fullestAfter: Math.max(0, ...check.survivors.map((f) => f.fillAfter)) },
          'member DOWN past the down-out interval: taken out of the ring; its blocks are re-replicated',
        );
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT')) throw err;
      }
      return;
    }
  }

  private sharesOf(ring: RingRecord, member: string): DownOutShares {
    const c = this.shares;
    if (c !== null && c.ringVersion === ring.version && c.value.member === member) return c.value;
    const value = downOutShares(ring, member);
    this.shares = { ringVersion: ring.version, value };
    return value;
  }

  /** Logs a held-back down-out once per reason (and survivor): the gauge says it goes on. */
  private hold(member: string, downForMs: number, check: Exclude<DownOutCheck, { ok: true }>): void {
    const key = check.reason === 'replication' ? 'replication' : check.reason === 'unknown' ? `unknown ${check.survivor}` : `fill ${check.worst.uuid}`;
    if (this.held.get(member) === key) return;
    this.held.set(member, key);
    if (check.reason === 'replication') {
      this.log.warn(
        { peer: member, downForMs, reason: check.reason, survivors: check.survivors, replication: check.replication },
        'down-out held back: removing the DOWN member would leave fewer members than the replication',
      );
    } else if (check.reason === 'unknown') {
      this.log.warn(
        { peer: member, downForMs, reason: check.reason, survivor: check.survivor },
        'down-out held back: a survivor has reported no capacity or usage to this peer, so its fill cannot be checked',
      );
    } else {
      const w = check.worst;
      this.log.warn(
        {
          peer: member,
          downForMs,
          reason: check.reason,
          survivor: w.uuid,
          usedBytes: w.usedBytes,
          addedBytes: Math.round(w.addedBytes),
          capacityBytes: w.capacityBytes,
          fillAfter: w.fillAfter,
          fillMax: check.fillMax,
          survivorsOver: check.over,
          estimatedBytes: check.estimate.bytes,
          estimateFromRecord: check.estimate.fromRecord,
          estimateFromShare: Math.round(check.estimate.fromShare),
        },
        'down-out held back: re-replicating the DOWN member would fill a survivor past 85 %',
      );
    }
  }
}
