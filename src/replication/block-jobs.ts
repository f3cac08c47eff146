import type { Logger } from 'pino';
import { isTorusError } from '../errors/torus-error.js';
import type { ListedBlock } from '../model/block-meta.js';
import { LIST_BLOCKS_MAX } from '../model/replica-api.js';
import { transitionPeers } from '../ring/transition.js';
import { reportAssertion, rethrowAssertion, unlessAssertion } from '../util/invariant.js';
import { eachLimited, indexesBelow } from '../util/each-limited.js';
import { withTimeout } from '../util/timeout.js';
import type { VolumeCoordinator } from './coordinator.js';
import { planCatchUp } from './catch-up-plan.js';
import { ownersOf, ringPeers } from './owners.js';

/** What one pass of background work did, for logs, metrics and tests. */
export interface JobReport {
  readonly caughtUp: number;
  readonly moved: number;
  readonly scrubbed: number;
  readonly repaired: number;
  /** Blocks that could not be fixed this pass (an owner or every source unreachable). */
  readonly pending: number;
  /** True when nothing is left to do for now. */
  readonly idle: boolean;
}

/** Block indexes a move goes through between two progress records. */
const MOVE_PROGRESS_EVERY_BLOCKS = 256;
/** Blocks a move or a catch-up copies at once. */
export const BLOCKS_IN_FLIGHT = 4;

/**
 * Background work of one coordinator (docs/replication.md, "Maintenance"):
 * catch-up of owners named by stale records, moving blocks to their new
 * owners during a ring transition, and scrub. Every copy goes through the
 * coordinator's syncBlock (under the block's order alone) and the shared
 * copy budget.
 */
export class VolumeJobs {
  private readonly log: Logger;
  private running: Promise<JobReport> | null = null;
  /** A writer's first deep scrub comes one interval after it opened the volume, not at once. */
  private lastScrubAt: number;
  /** The ring version of the last check of every copy that this coordinator made or read back. */
  private checkedRing = -1;

  /** For a stale record cleared in passing (nobody awaits it): a failure is dropped, a broken invariant reported. */
  private readonly dropped: (err: unknown) => void;

  constructor(private readonly c: VolumeCoordinator) {
    this.log = c.log.child({ job: 'background' });
    this.lastScrubAt = c.ctx.clock.monotonic();
    this.dropped = reportAssertion(c.ctx.invariantBroken, { module: 'coordinator', volume: c.volume.name, job: 'background' });
  }

  /**
   * One pass of everything that is due. Concurrent callers share the pass.
   * `scrub`: 'deep' reads every page of every copy, 'scan' compares copies
   * by version and digest only; by default a deep scrub runs at the scrub
   * interval and a scan whenever the last check of the volume is from an
   * older ring (it backs `Balanced: true`).
   */
  runOnce(opts: { scrub?: 'deep' | 'scan' } = {}): Promise<JobReport> {
    if (this.running === null) {
      this.running = this.pass(opts).finally(() => (this.running = null));
    }
    return this.running;
  }

  private async pass(opts: { scrub?: 'deep' | 'scan' }): Promise<JobReport> {
    const report = { caughtUp: 0, moved: 0, scrubbed: 0, repaired: 0, pending: 0, idle: true };
    try {
      await this.c.stale.refresh();
    } catch (err) {
      rethrowAssertion(err);
      this.log.debug({ err }, 'could not refresh stale records; working from memory');
    }
    await this.catchUp(report);
    await this.repairSuspects(report);
    await this.move(report);
    const kind = opts.scrub ?? (this.scrubDue() ? 'deep' : (await this.scanDue()) ? 'scan' : null);
    if (kind !== null) await this.scrub(report, kind === 'deep');
    const stats = this.c.ctx.stats;
    stats.caughtUp += report.caughtUp;
    stats.moved += report.moved;
    stats.scrubbed += report.scrubbed;
    stats.repaired += report.repaired;
    report.idle = report.pending === 0 && this.c.stale.stalePeers().length === 0 && this.c.ctx.ring().transition?.phase !== 'moving';
    return report;
  }

  private budget = (bytes: number): Promise<void> => this.c.ctx.throttle.take(bytes);

  // ------------------------------------------------------------ catch-up

  /** Copies to each reachable stale peer exactly the blocks it missed. */
  private async catchUp(report: { caughtUp: number; pending: number }): Promise<void> {
    const c = this.c;
    for (const peer of c.stale.stalePeers()) {
      const api = c.replica(peer);
      if (api === null || !c.ctx.health.usable(peer)) {
        report.pending++;
        continue;
      }
      try {
        // It must refuse older coordinators before it can be trusted again.
        await withTimeout(api.fence(c.ctx.requestContext(), c.volume.id, c.currentToken), c.ctx.settings.replicaTimeoutMs, c.ctx.clock, `fence on peer ${peer}`);
      } catch (err) {
        if (isTorusError(err, 'TORUS_ERR_VOLUME_FENCED')) throw err;
        rethrowAssertion(err);
        c.ctx.health.failed(peer);
        report.pending++;
        continue;
      }
      if (c.stale.missed(peer) === 'all') await this.narrowWhole(peer);
      if (c.isClosed || c.fencedBy) return;
      if (!(await this.catchUpPeer(report, peer))) return;
    }
  }

  /**
   * catchUp() for one reachable peer, fenced already: copies each block it
   * missed, then clears or narrows its record. False when the pass stopped
   * (volume closed or fenced off).
   */
  private async catchUpPeer(report: { caughtUp: number; pending: number }, peer: string): Promise<boolean> {
    const c = this.c;
    const missed = c.stale.missed(peer);
    // A whole-volume record stands until the end of the pass: a change
    // to a block already copied skips the peer and records nothing new,
    // so clearing the record would trust the peer's older copy (seed
    // 78604: a write acknowledged on the other owner alone, then a
    // takeover read the caught-up peer's copy and installed it over the
    // newer one). The blocks changed meanwhile stay recorded.
    const watch = missed === 'all' ? c.watchChanges() : null;
    try {
      const generation = c.stale.generation(peer);
      const indexes = missed === 'all' ? range(c.blockCount) : missed;
      let allFixed = true;
      let copied = 0;
      // BLOCKS_IN_FLIGHT at a time, as a move (each under its own order).
      const catchUpOne = async (index: number): Promise<boolean> => {
        if (c.isClosed || c.fencedBy) return false;
        const owners = ownersOf(c.ctx.ring(), c.refOf(index));
        if (!owners.all.includes(peer)) {
          // No longer an owner of this block: nothing to catch up.
          if (missed !== 'all') void c.stale.clear(peer, [index], c.currentToken).catch(this.dropped);
          return true;
        }
        const r = await c.syncBlock(index, [peer], this.budget, (fixed) => {
          if (fixed.includes(peer) && missed !== 'all') void c.stale.clear(peer, [index], c.currentToken).catch(this.dropped);
        });
        if (r.fixed.includes(peer)) copied++;
        else {
          allFixed = false;
          report.pending++;
        }
        return true;
      };
      if (!(await eachLimited(indexes, BLOCKS_IN_FLIGHT, catchUpOne))) {
        // Each block copied was cleared on its own: the next coordinator goes on from here.
        if (copied > 0) this.log.info({ peer, blocks: copied, of: indexes.length, whole: missed === 'all' }, 'catch-up interrupted (volume closed or fenced off); the blocks copied stay caught up');
        report.caughtUp += copied;
        return false;
      }
      if (watch !== null && allFixed) {
        const changed = [...watch.changed];
        if (changed.length === 0) {
          const cleared = await c.stale.clearAll(peer, generation, c.currentToken).catch(unlessAssertion(false));
          if (!cleared) report.pending++;
        } else {
          // Caught up but for the blocks changed since the pass began: the
          // record narrows to them, and the next pass copies them one by one.
          const narrowed = await c.stale.narrow(peer, changed, c.currentToken).catch((err: unknown) => {
            rethrowAssertion(err);
            this.log.debug({ err, peer }, 'could not narrow a whole-volume stale record');
            return false;
          });
          if (narrowed) this.log.info({ peer, behind: changed.length, of: c.blockCount }, 'caught a replica up but for the blocks changed meanwhile; its record narrows to them');
          report.pending++;
        }
      }
      report.caughtUp += copied;
      if (copied > 0) this.log.info({ peer, blocks: copied, of: indexes.length, whole: missed === 'all' }, 'caught a replica up');
      return true;
    } finally {
      watch?.stop();
    }
  }

  /**
   * Narrows a whole-volume stale record to the blocks the peer may still
   * lack, found by comparing complete listings (src/replication/
   * catch-up-plan.ts). Without it only one coordinator's complete pass
   * could clear the record, and a volume whose writer changes every few
   * seconds (a client that reconnects) would never see one. Any listing
   * that fails keeps the blocks it concerns; the peer's own keeps all.
   */
  private async narrowWhole(peer: string): Promise<void> {
    const c = this.c;
    const ring = c.ctx.ring();
    // A change sent while the listings are taken skips the peer (its
    // whole-volume record stands) and may reach the other owners after
    // their listing: the blocks changed meanwhile (and those in flight now)
    // are kept too, or the peer would be trusted again for a block whose
    // newest change it never got (seed 2124).
    const watch = c.watchChanges();
    try {
      const own = await this.listAll(peer);
      if (own === null) return;
      const listings = new Map<string, Map<number, ListedBlock>>();
      for (const u of ringPeers(ring)) {
        if (u === peer) continue;
        const listed = await this.listAll(u);
        if (listed !== null) listings.set(u, new Map(listed.map((b) => [b.ref.index, b])));
      }
      if (c.isClosed || c.fencedBy || c.ctx.ring().version !== ring.version) return;
      const keep = planCatchUp({
        blockCount: c.blockCount,
        peer,
        peerCopies: new Map(own.map((b) => [b.ref.index, b])),
        listings,
        ownersOf: (index) => ownersOf(ring, c.refOf(index)).all,
        trustedOf: (index) => c.trustedOwners(index, ownersOf(ring, c.refOf(index))),
      });
      for (const i of watch.changed) if (!keep.includes(i)) keep.push(i);
      const narrowed = await c.stale.narrow(peer, keep, c.currentToken).catch((err: unknown) => {
        rethrowAssertion(err);
        this.log.debug({ err, peer }, 'could not narrow a whole-volume stale record');
        return false;
      });
      if (narrowed) this.log.info({ peer, behind: keep.length, of: c.blockCount }, 'planned a catch-up from the listings');
    } finally {
      watch.stop();
    }
  }

  /**
   * Copies a peer marked suspect (an unclean stop, a checksum failure, a
   * gap), found through the volumes its peer record names: each is
   * compared with a current copy, confirmed in place if equal, replaced
   * otherwise (or adopted, if every copy is suspect).
   */
  private async repairSuspects(report: { repaired: number; pending: number }): Promise<void> {
    const c = this.c;
    const ring = c.ctx.ring();
    for (const peer of ringPeers(ring)) {
      if (!c.ctx.suspectVolumesOf(peer).includes(c.volume.id)) continue;
      const blocks = await this.listAll(peer);
      if (blocks === null) {
        report.pending++;
        continue;
      }
      for (const b of blocks) {
        if (!b.suspect || c.isClosed || c.fencedBy) continue;
        const r = await c.syncBlock(b.ref.index, [peer], this.budget, (fixed) => {
          if (fixed.includes(peer) && c.stale.isStale(peer, b.ref.index)) void c.stale.clear(peer, [b.ref.index], c.currentToken).catch(this.dropped);
        });
        if (r.fixed.includes(peer)) report.repaired++;
        else report.pending++;
      }
    }
  }

  // ------------------------------------------------------------ moves

  /**
   * During a moving transition: every block of the volume that exists
   * reaches all its new owners. Blocks whose old owners are all unreachable
   * keep the move from finishing (their copies may be there).
   */
  private async move(report: { moved: number; pending: number }): Promise<void> {
    const c = this.c;
    const ring = c.ctx.ring();
    const t = ring.transition;
    if (t === null || t.phase !== 'moving') return;
    const v = t.startedVersion;
    const records = await c.ctx.metadata.listVolumeMoves(v).catch(unlessAssertion(null));
    if (records === null) {
      report.pending++;
      return;
    }
    if (records.some((r) => r.volumeId === c.volume.id && r.done)) {
      // Done: by this coordinator, or by an earlier one, which this one
      // learnt before its first change (coordinator.ts, learnMoves). A
      // change sent to the old owners alone while the volume was not known
      // moved would be missing on a new owner the record makes trusted
      // (seed 546): should there be one, its block goes there first.
      for (const index of c.changedUnmoved(v)) {
        if (c.isClosed || c.fencedBy) return;
        const cur = c.ctx.ring();
        if (cur.transition?.startedVersion !== v) return;
        const r = await this.moveBlock(index, ownersOf(cur, c.refOf(index)).now, v);
        if (r.unavailable || r.failed.length > 0) {
          report.pending++;
          return;
        }
        report.moved += r.fixed.length;
      }
      // More such changes came in meanwhile: the next pass takes them.
      if (c.changedUnmoved(v).length > 0) {
        report.pending++;
        return;
      }
      c.markAllMoved(v);
      return;
    }
    if (!(await c.ctx.ringAcknowledged(ring.version))) {
      // A peer still places with the old ring: copies could miss its writes.
      report.pending++;
      return;
    }
    // Changes sent from before the listing until a block is marked moved
    // reach only the old owners (new ones take changes once it moved): a
    // block such a change created is not in the listing, yet exists.
    const watch = c.watchChanges();
    try {
      await this.moveListed(v, watch.changed, report);
    } finally {
      watch.stop();
    }
  }

  private async moveListed(v: number, changed: ReadonlySet<number>, report: { moved: number; pending: number }): Promise<void> {
    const c = this.c;
    const t = c.ctx.ring().transition;
    if (t === null || t.phase !== 'moving' || t.startedVersion !== v) return;
    const listed = new Set<number>();
    const listedFrom = new Set<string>();
    for (const u of transitionPeers(t)) {
      const blocks = await this.listAll(u);
      if (blocks === null) continue;
      listedFrom.add(u);
      for (const b of blocks) listed.add(b.ref.index);
    }
    const recorded = c.stale.allRecordedBlocks();
    const everything = c.stale.anyAll();
    let scanned = 0;
    let copied = 0;
    let unavailable = 0;
    // Blocks move BLOCKS_IN_FLIGHT at a time, each under its own order
    // (moveBlock), all through the one copy budget. One at a time, a block's
    // learn, read and durable install (round trips and an fdatasync each)
    // left both the budget and the disks mostly idle: 72-87 MB/s against
    // cp's 1110 on the same disk.
    const moveOne = async (index: number): Promise<boolean> => {
      if (c.isClosed || c.fencedBy) return false;
      if (index > 0 && index % MOVE_PROGRESS_EVERY_BLOCKS === 0) await this.progress(v, { scanned, copied, unavailable, reached: index }, false);
      const cur = c.ctx.ring();
      if (cur.transition?.startedVersion !== v) return false; // a newer change: start again under it
      const owners = ownersOf(cur, c.refOf(index));
      if (!listed.has(index) && !recorded.has(index) && !everything && !changed.has(index)) {
        // An old owner that answered, is trusted and does not hold it: it does not exist.
        const known = owners.old!.some((u) => listedFrom.has(u) && !c.stale.isStale(u, index));
        if (known) c.markMoved(index, v);
        else unavailable++;
        return true;
      }
      scanned++;
      const r = await this.moveBlock(index, owners.now, v);
      if (!r.unavailable && r.failed.length === 0) copied += r.fixed.length;
      else unavailable++;
      return true;
    };
    if (!(await eachLimited(indexesBelow(c.blockCount), BLOCKS_IN_FLIGHT, moveOne))) return;
    report.moved += copied;
    report.pending += unavailable;
    await this.progress(v, { scanned, copied, unavailable, reached: c.blockCount }, unavailable === 0);
    if (unavailable === 0) {
      c.markAllMoved(v);
      this.log.info({ ringVersion: v, blocks: scanned }, 'volume moved to its new owners');
    } else {
      this.log.warn({ ringVersion: v, unavailable }, 'some blocks could not be moved yet (their owners are unreachable); will retry');
    }
  }

  /**
   * Brings a block's new owners to its newest copy in the transition `v`.
   * It is marked moved while syncBlock still holds the block's order: a
   * change that waited for the order is then sent to the new owners too.
   * Marked after the order is released, a change could slip in between
   * (its continuation runs first), reach the old owners only, and leave a
   * new owner trusted without it.
   */
  private moveBlock(index: number, newOwners: readonly string[], v: number): ReturnType<VolumeCoordinator['syncBlock']> {
    const c = this.c;
    return c.syncBlock(index, newOwners, this.budget, (fixed) => {
      for (const u of fixed) if (c.stale.isStale(u, index)) void c.stale.clear(u, [index], c.currentToken).catch(this.dropped);
      if (newOwners.every((u) => fixed.includes(u))) c.markMoved(index, v);
    });
  }

  private async progress(ringVersion: number, n: { scanned: number; copied: number; unavailable: number; reached: number }, done: boolean): Promise<void> {
    const c = this.c;
    await c.ctx.metadata
      .putVolumeMove(
        { schema: 1, ringVersion, volumeId: c.volume.id, done, ...n, updatedAt: new Date(c.ctx.clock.now()).toISOString() },
        c.currentToken,
      )
      .catch((err: unknown) => {
        rethrowAssertion(err);
        this.log.warn({ err }, 'could not record move progress');
        if (done) throw err;
      });
  }

  // ------------------------------------------------------------ scrub

  private scrubDue(): boolean {
    const every = this.c.ctx.settings.scrubIntervalMs;
    return every > 0 && this.c.ctx.ring().transition === null && this.c.ctx.clock.monotonic() - this.lastScrubAt >= every;
  }

  /** The ring is stable and the volume's last check was made under another ring version. */
  private async scanDue(): Promise<boolean> {
    const ring = this.c.ctx.ring();
    if (ring.transition !== null || this.checkedRing === ring.version) return false;
    const health = await this.c.ctx.metadata.listVolumeHealth().catch(unlessAssertion(null));
    if (health === null) return false;
    const h = health.find((x) => x.volumeId === this.c.volume.id);
    if (h !== undefined && h.ringVersion === ring.version) {
      this.checkedRing = ring.version;
      return false;
    }
    return true;
  }

  /**
   * Compares every owner's copy of every block: missing, behind or suspect
   * copies are brought up to date; every page of every current copy is
   * checked against its CRC, and a copy that fails is replaced.
   */
  private async scrub(report: { scrubbed: number; repaired: number; pending: number }, deep: boolean): Promise<void> {
    const c = this.c;
    const ring = c.ctx.ring();
    const indexes = new Set<number>(c.stale.allRecordedBlocks());
    const members = ring.members.map((m) => m.uuid);
    for (const u of members) {
      const blocks = await this.listAll(u);
      if (blocks === null) {
        report.pending++;
        continue;
      }
      for (const b of blocks) indexes.add(b.ref.index);
    }
    let short = 0;
    let repaired = 0;
    let divergent = 0;
    const sorted = [...indexes].sort((a, b) => a - b);
    for (const index of sorted) {
      if (c.isClosed || c.fencedBy) return;
      const owners = ownersOf(c.ctx.ring(), c.refOf(index));
      const before = c.lagging(index);
      const r = await c.syncBlock(index, owners.now, this.budget, (fixed) => {
        for (const u of fixed) if (c.stale.isStale(u, index)) void c.stale.clear(u, [index], c.currentToken).catch(this.dropped);
      });
      if (r.unavailable || r.failed.length > 0) short++;
      repaired += r.fixed.filter((u) => before.includes(u)).length;
      // Every page of every copy against its CRC (a deep scrub only). The
      // checks run after the block's order is released, so a client write
      // may land between two of them: only copies at one version must have
      // one digest.
      const digests = new Map<number, Set<number>>();
      for (const u of deep ? r.fixed : []) {
        const api = c.replica(u);
        if (api === null) continue;
        try {
          const meta = await withTimeout(api.verify(c.ctx.requestContext(), c.refOf(index)), c.ctx.settings.replicaTimeoutMs, c.ctx.clock, `verify on peer ${u}`);
          if (meta.state === 'data') {
            let atVersion = digests.get(meta.version);
            if (atVersion === undefined) digests.set(meta.version, (atVersion = new Set()));
            atVersion.add(meta.digest);
          }
        } catch (err) {
          if (isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH') || isTorusError(err, 'TORUS_ERR_REPLICA_STALE')) {
            this.log.warn({ block: index, peer: u }, 'scrub found a corrupt copy; replacing it');
            await c.stale.record(u, [index]).catch(rethrowAssertion);
            const again = await c.syncBlock(index, [u], this.budget, (fixed) => {
              if (fixed.includes(u)) void c.stale.clear(u, [index], c.currentToken).catch(this.dropped);
            });
            if (again.fixed.includes(u)) repaired++;
            else short++;
          }
        }
      }
      if ([...digests.values()].some((d) => d.size > 1)) {
        divergent++;
        c.ctx.stats.divergent++;
        this.log.error({ block: index }, 'copies at one version differ in content (a bug or silent corruption the CRCs did not catch)');
      }
      report.scrubbed++;
    }
    report.repaired += repaired;
    report.pending += short;
    if (deep) this.lastScrubAt = c.ctx.clock.monotonic();
    if (short === 0) this.checkedRing = ring.version;
    await c.ctx.metadata
      .putVolumeHealth({ schema: 1, volumeId: c.volume.id, ringVersion: ring.version, blocks: sorted.length, short, repaired, divergent, checkedAt: new Date(c.ctx.clock.now()).toISOString() })
      .catch((err: unknown) => {
        rethrowAssertion(err);
        this.log.warn({ err }, 'could not record the scrub result');
      });
    this.log.info({ blocks: sorted.length, short, repaired, divergent, deep }, deep ? 'scrub done' : 'copies checked');
  }

  /** Every block of the volume a peer holds, or null if it could not be listed completely. */
  private async listAll(u: string): Promise<ListedBlock[] | null> {
    const c = this.c;
    const api = c.replica(u);
    if (api === null || !c.ctx.health.usable(u)) return null;
    const out: ListedBlock[] = [];
    let after = null as ListedBlock['ref'] | null;
    try {
      for (;;) {
        const page = await withTimeout(api.list(c.ctx.requestContext(), c.volume.id, after, LIST_BLOCKS_MAX), c.ctx.settings.replicaTimeoutMs, c.ctx.clock, `list on peer ${u}`);
        for (const b of page.blocks) if (b.ref.generation === c.volume.generation) out.push(b);
        if (!page.more || page.blocks.length === 0) return out;
        after = page.blocks[page.blocks.length - 1]!.ref;
      }
    } catch (err) {
      rethrowAssertion(err);
      this.log.debug({ err, peer: u }, 'could not list a peer\'s blocks');
      return null;
    }
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
