import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { compareCopies, type BlockMeta } from '../model/block-meta.js';
import { blockRef, type BlockRef } from '../model/block-ref.js';
import type { VolumeMoveRecord, VolumeRecord } from '../model/records.js';
import { mayBeHalfWay, VERSION_ABSENT, type Version } from '../model/version.js';
import { unlessAssertion } from '../util/invariant.js';
import { withTimeout } from '../util/timeout.js';
import type { ClusterContext } from './cluster-context.js';
import { classifyFailure } from './coordinator.js';
import { ownersOf } from './owners.js';
import { StaleBook } from './stale-book.js';

/** Whether any of the answers is a suspect copy (one that is not compared). */
function someSuspect(got: ReadonlyMap<string, BlockMeta>): boolean {
  for (const m of got.values()) if (m.suspect) return true;
  return false;
}

/** Blocks whose newest seen version a reader remembers (so it never goes back in time). */
const FLOORS_MAX = 65_536;

/**
 * Reads of a volume by a process that is not its coordinator (a read-only
 * opener): it did not make the changes, so it asks every trusted owner for
 * the block's version alongside the read and uses the newest. When an
 * owner does not answer, or answers with a suspect copy (not compared), it
 * re-reads the stale records from etcd first: a
 * degraded write's record is durable before that write was acknowledged,
 * so an owner that missed it is never taken for current
 * (docs/replication.md, "The read path").
 */
export class VolumeReader {
  /** The stale records as etcd held them at the last reload (and the records this reader made since). */
  private stale: StaleBook;
  private readonly log: Logger;
  private readonly floors = new Map<number, Version>();
  private movedVersion = 0;
  /** The volume's newest token recorded as ended without a clean release (VolumeLock.expiredToken), as last read. */
  private expired = 0;
  /** Reads begun so far: each takes the next number (see `reloadFor`). */
  private readsBegun = 0;
  /** Every read numbered up to this began before a reload that has finished. */
  private covered = 0;
  /** The reload in flight, and the reads it covers (those begun before it). */
  private reloading: { covers: number; done: Promise<void> } | null = null;
  private reloadsStarted = 0;
  private reloadInstalled = 0;

  private constructor(
    private readonly ctx: ClusterContext,
    readonly volume: VolumeRecord,
  ) {
    this.log = ctx.logger.child({ module: 'reader', volume: volume.name });
    this.stale = new StaleBook(volume.id, ctx.metadata, ctx.clock, this.log);
  }

  static async open(ctx: ClusterContext, volume: VolumeRecord): Promise<VolumeReader> {
    const r = new VolumeReader(ctx, volume);
    await r.reloadFor(++r.readsBegun);
    return r;
  }

  /**
   * Makes what this reader knows of etcd (the stale records, the expired
   * token) at least as new as the moment read `mark` began: a degraded
   * change acknowledged before that read began had its record durable
   * before its acknowledgement, so the read then never trusts an owner
   * that missed it. What was known is replaced, not added to: a record a
   * catch-up cleared since must not keep its owner, now the holder of
   * newer changes, out of the reads (seed 429 with --readers: the reader
   * had recorded the writer's own node stale for a block it did not
   * answer for in time, knew nothing of the other owner's newer record,
   * and read that owner's older copy after a newer change was
   * acknowledged). Reads that need it at once share one etcd read.
   */
  private reloadFor(mark: number): Promise<void> {
    if (this.covered >= mark) return Promise.resolve();
    const inFlight = this.reloading;
    if (inFlight !== null && inFlight.covers >= mark) return inFlight.done;
    const covers = this.readsBegun;
    const seq = ++this.reloadsStarted;
    const done = (async () => {
      const book = new StaleBook(this.volume.id, this.ctx.metadata, this.ctx.clock, this.log);
      await book.refresh();
      const expired = await this.ctx.metadata.getVolumeExpired(this.volume.id);
      // Reloads may finish out of order: the one that began last wins.
      if (seq > this.reloadInstalled) {
        this.reloadInstalled = seq;
        this.stale = book;
        this.expired = expired;
      }
      this.covered = Math.max(this.covered, covers);
    })();
    this.reloading = { covers, done };
    const clear = (): void => {
      if (this.reloading?.done === done) this.reloading = null;
    };
    done.then(clear, clear);
    return done;
  }

  private refOf(index: number): BlockRef {
    return blockRef(this.volume.id, this.volume.generation, index);
  }

  async read(index: number, offset: number, length: number): Promise<Buffer> {
    const { meta, data } = await this.readBlock(index, offset, length);
    void meta;
    return data;
  }

  async allocated(index: number): Promise<boolean> {
    const newest = await this.newestMeta(index, ++this.readsBegun);
    return newest.meta.state === 'data';
  }

  private async readBlock(index: number, offset: number, length: number): Promise<{ meta: BlockMeta; data: Buffer }> {
    const ref = this.refOf(index);
    const mark = ++this.readsBegun;
    for (let attempt = 0; attempt < 2; attempt++) {
      const { meta, holders } = await this.newestMeta(index, mark);
      for (const u of holders) {
        const api = this.ctx.replica(u);
        if (api === null) continue;
        try {
          const reply = await withTimeout(api.read(this.ctx.requestContext(), ref, offset, length), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `read on peer ${u}`);
          if (reply.meta.version < meta.version) continue;
          this.raiseFloor(index, reply.meta.version);
          return reply;
        } catch (err) {
          const kind = classifyFailure(err);
          if (kind === 'outdated') await this.ctx.refreshRing(this.ctx.ring().version + 1);
          else if (kind === 'peer') this.ctx.health.failed(u);
        }
      }
    }
    throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: no owner holding its newest version is reachable`, { details: { block: index } });
  }

  /**
   * The newest trusted copy's metadata and the owners holding it (local
   * first), for read number `mark`. Only the owners that answer are
   * compared, so the stale records must be new enough to tell whether
   * those missed a change: they are read again from etcd when an owner
   * is left out by a record (which may be cleared since) or does not
   * answer or answers with a suspect copy (docs/replication.md, "The read
   * path").
   */
  private async newestMeta(index: number, mark: number): Promise<{ meta: BlockMeta; holders: string[] }> {
    const ref = this.refOf(index);
    for (let attempt = 0; attempt < 2; attempt++) {
      await this.refreshMoved();
      const ring = this.ctx.ring();
      const owners = ownersOf(ring, ref);
      const set = owners.phase === 'stable' ? owners.now : owners.phase === 'settled' || this.movedVersion === ring.transition?.startedVersion ? owners.placed : owners.old!;
      if (set.some((u) => this.stale.isStale(u, index))) await this.reloadFor(mark);
      const trusted = set.filter((u) => !this.stale.isStale(u, index));
      const got = new Map<string, BlockMeta>();
      const silent: string[] = [];
      await Promise.all(
        trusted.map(async (u) => {
          const api = this.ctx.replica(u);
          if (api === null) {
            silent.push(u);
            return;
          }
          try {
            const [m] = await withTimeout(api.meta(this.ctx.requestContext(), [ref]), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `meta on peer ${u}`);
            got.set(u, m!);
          } catch (err) {
            silent.push(u);
            const kind = classifyFailure(err);
            if (kind === 'outdated') await this.ctx.refreshRing(this.ctx.ring().version + 1);
            else if (kind === 'peer') this.ctx.health.failed(u);
          }
        }),
      );
      // An owner we cannot ask may hold a newer version, and so may one whose
      // copy is suspect (it restarted and may have lost changes it took):
      // only etcd can say whether the owners left to compare missed them.
      // Without the re-read, an owner that missed an acknowledged write (its
      // record made after this reader last read etcd) is taken for current
      // when the only owner that took it now answers suspect (seed 25342
      // with --readers).
      if ((silent.length > 0 || someSuspect(got)) && attempt === 0) {
        await this.reloadFor(mark);
        continue;
      }
      let newest: BlockMeta | null = null;
      for (const m of got.values()) if (!m.suspect && (newest === null || compareCopies(m, newest) > 0)) newest = m;
      const floor = this.floors.get(index) ?? VERSION_ABSENT;
      if (newest === null || newest.version < floor) break;
      // As a coordinator does; a reader holds no token, so the record is
      // unfenced (it only makes owners less trusted until a catch-up). Every
      // trusted owner without the newest copy is recorded: a silent one, and
      // one that answered with an older or suspect copy. Leaving the latter
      // trusted would let a later holder read its older copy once the owners
      // with this one are gone: back in time, as in seed 9069.
      const holders = [...got.entries()].filter(([, m]) => !m.suspect && compareCopies(m, newest!) === 0).map(([u]) => u);
      if (mayBeHalfWay(newest.version, this.expired)) {
        const lacking = [...silent, ...[...got.keys()].filter((u) => !holders.includes(u))];
        if (lacking.length > 0) await this.stale.recordLacking(lacking, index, this.volume.name);
      }
      const self = this.ctx.selfUuid;
      holders.sort((a, b) => (a === self ? -1 : b === self ? 1 : 0));
      return { meta: newest, holders };
    }
    throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: no owner with its newest copy answered`, { details: { block: index } });
  }

  /** During a moving transition, a volume whose move is done may be read from its new owners too. */
  private async refreshMoved(): Promise<void> {
    const t = this.ctx.ring().transition;
    if (t === null || t.phase !== 'moving' || this.movedVersion === t.startedVersion) return;
    const records: VolumeMoveRecord[] = await this.ctx.metadata.listVolumeMoves(t.startedVersion).catch(unlessAssertion([]));
    if (records.some((r) => r.volumeId === this.volume.id && r.done)) this.movedVersion = t.startedVersion;
  }

  private raiseFloor(index: number, v: Version): void {
    const cur = this.floors.get(index) ?? VERSION_ABSENT;
    this.floors.delete(index);
    this.floors.set(index, Math.max(cur, v));
    if (this.floors.size > FLOORS_MAX) {
      const oldest = this.floors.keys().next().value;
      if (oldest !== undefined) this.floors.delete(oldest);
    }
  }
}
