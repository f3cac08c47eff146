import type { Logger } from 'pino';
import { isTorusError } from '../errors/torus-error.js';
import type { MetadataService } from '../metadata/metadata-service.js';
import { compareCopies, type BlockMeta, type ListedBlock } from '../model/block-meta.js';
import { blockRefKey, type BlockRef } from '../model/block-ref.js';
import { staleContains } from '../model/ranges.js';
import type { RingRecord, StaleRecord } from '../model/records.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { ownersOf } from '../replication/owners.js';
import type { Replica } from '../replication/replica.js';
import type { LocalBlockStore } from '../store/local-store.js';
import { rethrowAssertion } from '../util/invariant.js';
import { withTimeout } from '../util/timeout.js';

export interface GarbageCollectorOptions {
  readonly node: { readonly uuid: string; readonly replica: Replica | null; currentRing(): RingRecord; readonly isLive: boolean };
  readonly store: LocalBlockStore;
  readonly metadata: MetadataService;
  /** How the owners of a leftover are asked to check their copies. */
  readonly ctx: Pick<ClusterContext, 'replica' | 'health' | 'settings' | 'clock' | 'requestContext'>;
  readonly logger: Logger;
}

/** Why a leftover copy was kept this pass (counted per reason in the pass's log line). */
type KeptBecause = 'owner unreachable' | 'owner copy failed its check' | 'owner copy suspect' | 'owners behind and apart' | 'owners behind and recorded stale';

/** Blocks looked at per page of the local store's listing. */
const GC_PAGE_BLOCKS = 4096;

/**
 * Frees space, and only what is certainly unneeded (docs/replication.md,
 * "Garbage collection"): blocks of volumes etcd said are deleted, and
 * copies of blocks this peer does not own under a stable ring. A failed
 * read of etcd frees nothing. A leftover is dropped only once every owner
 * has read its own copy back whole and found it good (verify) at a version
 * at least as new: otherwise the leftover may be the last good copy. The
 * drop happens inside the block's order, after checking the ring has not
 * moved since the pass began.
 */
export class GarbageCollector {
  private readonly log: Logger;
  private running = false;

  constructor(private readonly opts: GarbageCollectorOptions) {
    this.log = opts.logger.child({ module: 'gc' });
  }

  async run(): Promise<{ volumes: number; leftovers: number }> {
    if (this.running || !this.opts.node.isLive) return { volumes: 0, leftovers: 0 };
    this.running = true;
    try {
      return { volumes: await this.deletedVolumes(), leftovers: await this.leftovers() };
    } finally {
      this.running = false;
    }
  }

  private async deletedVolumes(): Promise<number> {
    let freed = 0;
    let gc: { live: number[]; lastId: number };
    try {
      gc = await this.opts.metadata.volumeIdsForGc();
    } catch (err) {
      rethrowAssertion(err);
      this.log.warn({ err }, 'garbage collection skipped: could not list volumes');
      return 0;
    }
    const live = new Set(gc.live);
    for (const id of this.opts.store.volumeIds()) {
      // Ids above the highest handed out may belong to a volume being created.
      if (live.has(id) || id > gc.lastId) continue;
      this.log.info({ volumeId: id }, 'freeing the blocks of a deleted volume');
      await this.opts.store.deleteVolume(id);
      freed++;
    }
    return freed;
  }

  private async leftovers(): Promise<number> {
    const replica = this.opts.node.replica;
    const planned = this.opts.node.currentRing();
    if (replica === null || planned.transition !== null) return 0;
    const self = this.opts.node.uuid;
    const notOwner = (ref: BlockRef): boolean => {
      const ring = this.opts.node.currentRing();
      return ring.version === planned.version && !ownersOf(ring, ref).all.includes(self);
    };
    let dropped = 0;
    const kept = new Map<KeptBecause, number>();
    // Each volume's stale records, read once a pass when first needed (null: etcd did not answer).
    const staleOf = new Map<number, Promise<StaleRecord[] | null>>();
    const records = (volumeId: number): Promise<StaleRecord[] | null> => {
      let p = staleOf.get(volumeId);
      if (p === undefined) {
        p = this.opts.metadata.getStale(volumeId).catch((err: unknown) => {
          rethrowAssertion(err);
          this.log.debug({ err, volumeId }, 'could not read stale records: leftovers ahead of their owners are kept');
          return null;
        });
        staleOf.set(volumeId, p);
      }
      return p;
    };
    let after: BlockRef | null = null;
    for (;;) {
      const page = this.opts.store.list({ after, limit: GC_PAGE_BLOCKS });
      if (page.length === 0) break;
      for (const b of page) {
        if (!notOwner(b.ref)) continue;
        const why = await this.ownersLack(b, planned, records);
        if (why !== null) {
          kept.set(why, (kept.get(why) ?? 0) + 1);
          continue;
        }
        if (await replica.dropLeftover(b.ref, planned.version, () => notOwner(b.ref))) dropped++;
      }
      after = page[page.length - 1]!.ref;
      if (page.length < GC_PAGE_BLOCKS) break;
    }
    if (dropped > 0) this.log.info({ blocks: dropped, ringVersion: planned.version }, 'dropped copies of blocks this peer no longer owns');
    if (kept.size > 0) this.log.info({ kept: Object.fromEntries(kept), ringVersion: planned.version }, 'kept copies of blocks this peer no longer owns until their owners\' copies check out');
    return dropped;
  }

  /**
   * Null when the leftover is certainly not needed; else why it may be.
   * Every owner must answer with a copy it has just read back whole
   * against its CRCs (verify) and that is not suspect. Their copies must
   * also be at least as new as the leftover, or else all at one version:
   * owners that agree with each other under a settled ring hold what was
   * acknowledged, so a newer leftover holds a change no owner took, never
   * acknowledged (at write levels one and local, one that may be lost by
   * contract), and would otherwise be kept for good (simulation seed 473).
   * Owners at different versions, one behind the leftover, wait: the behind
   * one may be stale, and the leftover then one of the current copies. So
   * do owners that agree behind it while etcd records one of them stale or
   * unsure for the block: each may have missed a change the leftover holds,
   * one a read may have returned already, and a writer that finds every
   * owner behind what it read takes a former owner's copy (docs/
   * replication.md, "Lost changes"). An absent leftover (a suspect record,
   * no bytes) has nothing to lose. One owner at a time: a pass after a big
   * move reads every moved block once on each owner, like a deep scrub.
   */
  private async ownersLack(b: ListedBlock, ring: RingRecord, records: (volumeId: number) => Promise<StaleRecord[] | null>): Promise<KeptBecause | null> {
    if (b.state === 'absent') return null;
    const ctx = this.opts.ctx;
    const theirs: BlockMeta[] = [];
    for (const u of ownersOf(ring, b.ref).all) {
      const api = ctx.replica(u);
      if (api === null || !ctx.health.usable(u)) return 'owner unreachable';
      let m: BlockMeta;
      try {
        m = await withTimeout(api.verify(ctx.requestContext(), b.ref), ctx.settings.replicaTimeoutMs, ctx.clock, `verify on peer ${u}`);
      } catch (err) {
        rethrowAssertion(err);
        if (!isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH')) return 'owner unreachable';
        this.log.warn({ block: blockRefKey(b.ref), owner: u }, 'an owner\'s copy failed its check: keeping this peer\'s leftover copy');
        return 'owner copy failed its check';
      }
      if (m.suspect) return 'owner copy suspect';
      theirs.push(m);
    }
    if (theirs.every((m) => compareCopies(m, b) >= 0)) return null;
    if (!theirs.every((m) => compareCopies(m, theirs[0]!) === 0)) return 'owners behind and apart';
    const recorded = await records(b.ref.volumeId);
    const owners = ownersOf(ring, b.ref).all;
    if (recorded === null || recorded.some((r) => owners.includes(r.peer) && staleContains(r, b.ref.index))) return 'owners behind and recorded stale';
    return null;
  }
}
