import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { VolumeLock } from '../metadata/metadata-service.js';
import { ABSENT_META, compareCopies, type BlockMeta } from '../model/block-meta.js';
import { blockRef, type BlockRef } from '../model/block-ref.js';
import { CRC_PAGE_BYTES, type ChangeStamp, type InstallOutcome, type ReplicaApi, type ReplicaWriteOptions, type RequestContext } from '../model/replica-api.js';
import type { VolumeMoveRecord, VolumeRecord } from '../model/records.js';
import { formatVersion, makeVersion, mayBeHalfWay, SEQ_MAX, VERSION_ABSENT, versionToken, type Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { releaseBuffer, retainBuffer } from '../util/buffer-pool.js';
import { crc32c, crc32cCombinePages, crc32cPages } from '../util/crc32c.js';
import { eachLimited } from '../util/each-limited.js';
import { allSettledNow, InFlight, trackUntilSettled } from '../util/in-flight.js';
import { settleEach, SETTLED_OK } from '../util/settle-each.js';
import { DeadlineRace } from '../util/deadline-race.js';
import { isAssertionFailure, rethrowAssertion, unlessAssertion } from '../util/invariant.js';
import { sleep, withTimeout } from '../util/timeout.js';
import { BlockOrder } from './block-order.js';
import { BlockTable, type BlockEntry } from './block-table.js';
import type { ClusterContext } from './cluster-context.js';
import { ownersOf, quorumOf, ringPeers, type BlockOwners } from './owners.js';
import type { WriteLevel } from './settings.js';
import { StaleBook } from './stale-book.js';

/** Versions left under a token when the coordinator renews it (changes in flight meanwhile still fit). */
const SEQ_RENEW_MARGIN = 1 << 20;
/** Reads of one replica again when a change to the block committed while the read was in flight (readNow). */
const READ_AGAIN_MAX = 3;
/**
 * Whole-block writes to every EXPECT_STRIDE-th block tell the owners of the
 * next EXPECT_AHEAD_BLOCKS blocks that writes may follow (expectAhead): a
 * sequential stream names about a stride of new blocks in one dirty-log
 * commit, far ahead of them. Far, because a commit's fdatasync queues
 * behind the data the kernel is writing back: one in fifty took 50-235 ms
 * in a prefill here (the median 0.6 ms), and a stream that reaches blocks
 * whose records are not durable yet waits for it. 16 blocks ahead covered
 * about 16 ms at 1 GB/s; 256 cover the stalls measured (docs/perf/profile.md,
 * "The prefill's lead"). The price: after a crash, up to that many named
 * blocks that were never written come back suspect (absent, compared before
 * trusted), bounded by the store's PREMARK_MAX.
 */
const EXPECT_STRIDE = 8;
const EXPECT_AHEAD_BLOCKS = 256;
/**
 * A read whose only current holders are briefly out (a peer waking from a
 * pause re-registers with etcd before it serves again) asks them again
 * this often, until the replica timeout has passed since the read began:
 * an EIO to a kernel client breaks its filesystem, a wait of a second
 * does not.
 */
const READ_RETRY_MS = 250;

/** Blocks a flush checks (and catches up) at once among those earlier flushes left short. */
export const SHORT_CHECKS_IN_FLIGHT = 8;

/**
 * A refusal that a catch-up of the owner's copy answers: the copy is
 * suspect (rotten, or a change found a gap) or failed its checksum.
 */
function mustCatchUp(err: unknown): boolean {
  return isTorusError(err, 'TORUS_ERR_REPLICA_STALE') || isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH');
}

/** The owners a failed change names as refusing it until caught up (mustCatchUp); none for any other failure. */
function catchUpFirstOf(err: unknown): readonly string[] {
  if (!isTorusError(err, 'TORUS_ERR_REPLICA_QUORUM')) return [];
  const owners = err.details?.['catchUpFirst'];
  return Array.isArray(owners) ? owners.filter((u): u is string => typeof u === 'string') : [];
}

/** How a replica's refusal or silence is taken. */
type Failure = 'outdated' | 'fenced' | 'peer' | 'block';

export function classifyFailure(err: unknown): Failure {
  if (isTorusError(err, 'TORUS_ERR_RING_OUTDATED')) return 'outdated';
  if (isTorusError(err, 'TORUS_ERR_VOLUME_FENCED')) return 'fenced';
  if (isTorusError(err, 'TORUS_ERR_ASSERTION')) throw err;
  if (
    isTorusError(err, 'TORUS_ERR_REPLICA_STALE') ||
    isTorusError(err, 'TORUS_ERR_STORE_NO_SPACE') ||
    isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH') ||
    isTorusError(err, 'TORUS_ERR_STORE_IO') ||
    isTorusError(err, 'TORUS_ERR_STORE_BUSY')
  ) {
    // The peer is alive; this block on it is not usable.
    return 'block';
  }
  return 'peer';
}

export interface CoordinatorOptions {
  readonly ctx: ClusterContext;
  readonly volume: VolumeRecord;
  readonly lock: VolumeLock;
  readonly writeLevel?: WriteLevel;
  /** The lock was renewed or taken again (a newer token): whoever records it updates. */
  readonly onLockChanged?: (lock: VolumeLock) => void;
}

/** One change to one block, as the NBD layer asks it. */
type Change = { readonly kind: 'write'; readonly offset: number; readonly data: Buffer } | { readonly kind: 'zero'; readonly offset: number; readonly length: number; readonly punch: boolean };

/**
 * The coordinator of one volume (docs/replication.md): the one process
 * that changes its blocks, holding its newest fencing token, as its writer
 * (NBD) or its maintainer (moves, catch-up, scrub while no one writes).
 *
 * It stamps every change with a version, sends it to the block's owners,
 * records in etcd the owners that did not take it before it acknowledges,
 * reads only from owners known to hold the newest version, and copies
 * blocks to owners that are behind. Background work (block-jobs.ts) runs
 * through the same per-block order and the same bookkeeping.
 */
export class VolumeCoordinator {
  readonly volume: VolumeRecord;
  readonly ctx: ClusterContext;
  readonly stale: StaleBook;
  readonly order = new BlockOrder();
  readonly blocks: BlockTable;
  readonly log: Logger;
  private token: number;
  private lock: VolumeLock;
  private renewing: Promise<void> | null = null;
  private readonly onLockChanged: ((lock: VolumeLock) => void) | undefined;
  readonly kind: 'writer' | 'maintainer';
  private readonly writeLevel: WriteLevel;
  /** Bounds changes sent to replicas that do not enforce deadlines themselves (the local one). */
  private readonly localDeadlines: DeadlineRace;
  private readonly reconciling = new Map<number, Promise<BlockEntry>>();
  /** Owner → blocks it took since its last flush (what a flush must reach). */
  private readonly unflushed = new Map<string, Set<number>>();
  /**
   * Owner → its restart count (ClusterContext.peerRestarts) when it took
   * what `unflushed` lists: a flush answered by a later incarnation does
   * not make those durable, they were lost with the restart.
   */
  private readonly unflushedEpoch = new Map<string, number>();
  /** Changes still finishing after an early acknowledgement (write levels one and local). */
  private readonly background = new InFlight<Promise<unknown>>();
  /** Blocks an owner may have lost in a restart since the last flush: the next flush checks they keep minReplicas copies. */
  private readonly lostInRestart = new Set<number>();
  /**
   * Blocks a failed flush (or a replica restart) left with fewer than
   * minReplicas durable copies. Every later flush fails while one is left:
   * a successful FLUSH covers every write completed before it (NBD spec),
   * also those an earlier failed FLUSH covered. A block leaves the set once
   * enough owners hold its newest version durably again (a catch-up or
   * repair installs with FUA; a later change is flushed by this flush).
   * Pinned, so the block table keeps what it knows of them.
   */
  private readonly shortSinceFlush = new Set<number>();
  /** Blocks moved to their new owners in the transition with this (moving) ring version. */
  private movedIn = { ringVersion: 0, blocks: new Set<number>(), all: false };
  /**
   * Blocks this coordinator changed during a moving transition before it
   * knew them moved: those changes reached the old owners only. A move
   * record another coordinator marked done does not cover them: they are
   * brought to their new owners before the volume counts as moved
   * (block-jobs.ts, move).
   */
  private unmovedChanges = { ringVersion: 0, blocks: new Set<number>() };
  /**
   * Blocks changes were sent to while a move pass runs (one set per pass):
   * a block its listing missed may have been created since, on old owners
   * only, so the pass copies it rather than take its absence as the truth.
   */
  private readonly changeWatches = new Set<Set<number>>();
  private fenced: TorusError | null = null;
  /**
   * Acknowledged changes were lost with every copy that held them (their
   * owners stopped before flushing them, and an older copy was taken).
   * Every later FLUSH of this open fails with it: a successful FLUSH would
   * say they are durable (docs/replication.md, "Lost changes").
   */
  private dataLost: TorusError | null = null;
  private closed = false;
  /** The last block the latest expectAhead hint named (-1: none yet). */
  private expectedThrough = -1;
  /**
   * Changes this coordinator made under its current token, across all
   * blocks: a version is (token, seq), so no two changes it makes to any
   * block ever share a version, even after it forgot a block's history.
   */
  private seq = 0;

  private constructor(opts: CoordinatorOptions) {
    this.ctx = opts.ctx;
    this.volume = opts.volume;
    this.token = opts.lock.token;
    this.lock = opts.lock;
    this.onLockChanged = opts.onLockChanged;
    this.kind = opts.lock.kind;
    this.writeLevel = opts.writeLevel ?? opts.ctx.settings.writeLevel;
    this.log = opts.ctx.logger.child({ module: 'coordinator', volume: opts.volume.name, volumeId: opts.volume.id, role: opts.lock.kind });
    this.blocks = new BlockTable(opts.ctx.settings.blockCacheMax);
    this.localDeadlines = new DeadlineRace(opts.ctx.clock);
    this.stale = new StaleBook(opts.volume.id, opts.ctx.metadata, opts.ctx.clock, this.log, () => this.token);
  }

  /**
   * Takes over the volume: every peer that may hold its blocks learns the
   * token (one that cannot be reached learns it from etcd or with our first
   * change), then the stale records are loaded.
   */
  static async open(opts: CoordinatorOptions): Promise<VolumeCoordinator> {
    const c = new VolumeCoordinator(opts);
    await opts.ctx.refreshPeers();
    await c.publishToken(opts.lock.previousReleased);
    await c.stale.refresh();
    return c;
  }

  get currentToken(): number {
    return this.token;
  }

  get blockSize(): number {
    return this.volume.blockSize;
  }

  get blockCount(): number {
    return Math.ceil(this.volume.size / this.volume.blockSize);
  }

  refOf(index: number): BlockRef {
    return blockRef(this.volume.id, this.volume.generation, index);
  }

  /** The lock this coordinator holds now (renewals replace it). */
  get currentLock(): VolumeLock {
    return this.lock;
  }

  /**
   * A refusal of one of our own earlier tokens, sent before a renewal and
   * refused by a peer that learnt the new one: it names no token newer than
   * ours, so no one else holds the volume (seed 18: such a refusal fenced a
   * writer off for good right after it took its lock again).
   */
  private ownOldToken(err: unknown): boolean {
    if (!isTorusError(err, 'TORUS_ERR_VOLUME_FENCED')) return false;
    const d = err.details ?? {};
    const refused = d['token'];
    const newest = d['newest'] ?? d['current'];
    return typeof refused === 'number' && refused < this.token && typeof newest === 'number' && newest <= this.token;
  }

  /** What a request sent under an earlier token of ours reports once refused for it. */
  private renewedMeanwhile(err: TorusError): TorusError {
    return new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume ${this.volume.name}: a request sent under fencing token ${String(err.details?.['token'])} was refused: the lock was taken again under token ${this.token} meanwhile; it is not acknowledged`, { cause: err });
  }

  /** A lock taken again after a lost lease, or renewed, comes with a newer token. */
  async renewToken(lock: VolumeLock): Promise<void> {
    assert(lock.token > this.token, 'a renewed lock has a newer token');
    this.lock = lock;
    this.token = lock.token;
    this.seq = 0;
    this.onLockChanged?.(lock);
    this.fenced = null;
    // Renewed (renew(): previousReleased, the lease never lapsed and every
    // change under the old token is this coordinator's own to account for),
    // or taken again with our last token + 1 after our own lease expired:
    // that lock was not let go, and counts as expired (previousReleased
    // false). Its changes that failed while etcd was away could not be
    // recorded stale or unsure (the lease was lost because etcd was away),
    // and one still queued for a peer that misses the new token may land
    // there later (simulation seed 57 with --suspend).
    await this.publishToken(lock.previousReleased);
  }

  /** `previousReleased`: the lock before ours was let go cleanly (VolumeLock.previousReleased), or was ours. */
  private async publishToken(previousReleased: boolean): Promise<void> {
    const ring = this.ctx.ring();
    const peers = ringPeers(ring);
    const results = await Promise.allSettled(
      peers.map(async (u) => {
        const api = this.ctx.replica(u);
        if (api === null) throw new TorusError('TORUS_ERR_RING_PEER_UNKNOWN', `peer ${u} has no known address`);
        await withTimeout(api.fence(this.ctx.requestContext(), this.volume.id, this.token), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `fence on peer ${u}`);
      }),
    );
    const missed: string[] = [];
    results.forEach((r, i) => {
      const u = peers[i]!;
      if (r.status === 'fulfilled') {
        this.ctx.health.succeeded(u);
        return;
      }
      if (isTorusError(r.reason, 'TORUS_ERR_VOLUME_FENCED')) throw r.reason;
      rethrowAssertion(r.reason);
      missed.push(u);
      if (classifyFailure(r.reason) === 'peer') this.ctx.health.failed(u);
    });
    // A peer that did not learn the token now learns it from etcd (its
    // fence watch, or the full re-read every peer makes before it takes
    // changes again after losing its session) or from the first change
    // this coordinator sends it, whichever comes first.
    //
    // After a clean release its copies stay trusted: the previous holder
    // closed the volume and let the lock go while it still held it, so no
    // change can come under an older token any more (an older holder that
    // expired was fenced off by the one after it: VolumeLock.markFenced).
    //
    // After an expiry, not so: the old holder may be a writer paused with
    // its clocks (a suspended VM) that wakes believing its lease still runs
    // and lands what it had queued on its own node's replica, which could
    // not hear of this token either. Such peers are recorded stale for the
    // whole volume before our first change; the catch-up then compares
    // their every copy with the trusted ones (docs/replication.md,
    // "Fencing"). If etcd does not take the record, the open fails (and the
    // lock, not marked fenced, leaves the same duty to the next holder).
    if (missed.length > 0 && !previousReleased) {
      this.log.warn({ peers: missed, token: this.token }, 'the previous lock expired and peers did not answer the fencing token; recorded stale for the whole volume until caught up');
      await Promise.all(missed.map((u) => this.stale.record(u, 'all')));
    } else if (missed.length > 0) {
      this.log.warn({ peers: missed, token: this.token }, 'peers did not answer the fencing token; they learn it from etcd or from our first change');
    }
    this.lock.markFenced();
    this.log.info({ token: this.token, peers: peers.length }, 'fencing token published');
    await this.learnMoves();
  }

  /**
   * A move of the current transition that another coordinator finished and
   * recorded done covers every block: learnt before this coordinator's first
   * change, so that its changes reach the new owners too. Sent to the old
   * owners alone, they would be missing on a new owner that the record then
   * makes trusted (seed 546, with moves of 4 blocks at once). Move records
   * are written under the volume's fence, so none becomes done later but
   * by this coordinator.
   *
   * If etcd does not answer, the token is not taken: the open (or the
   * relock) fails and is tried again. Letting the first background pass
   * learn the record instead left a hole: had the transition settled
   * before that pass, nothing would ever copy the blocks changed meanwhile
   * (move() runs only while a transition moves), and a new owner would be
   * trusted without them. Availability gives way to that here.
   */
  private async learnMoves(): Promise<void> {
    const t = this.ctx.ring().transition;
    if (t === null || t.phase !== 'moving') return;
    let records: VolumeMoveRecord[];
    try {
      records = await this.ctx.metadata.listVolumeMoves(t.startedVersion);
    } catch (err) {
      rethrowAssertion(err);
      throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `volume ${this.volume.name}: the ring is moving and the volume's move record could not be read; the volume is not taken until it is (a change sent now could miss a block's new owners)`, { cause: err });
    }
    if (!records.some((r) => r.volumeId === this.volume.id && r.done)) return;
    if (this.ctx.ring().transition?.startedVersion !== t.startedVersion || this.changedUnmoved(t.startedVersion).length > 0) return;
    this.markAllMoved(t.startedVersion);
  }

  // ------------------------------------------------------------ client I/O

  async read(index: number, offset: number, length: number): Promise<Buffer> {
    this.checkUsable();
    const release = await this.order.shared(index);
    try {
      return await this.readNow(index, offset, length);
    } finally {
      release();
    }
  }

  /** Whether a block holds data (NBD block status). */
  async allocated(index: number): Promise<boolean> {
    this.checkUsable();
    const release = await this.order.shared(index);
    try {
      const e = await this.touch(index);
      return e.state === 'data';
    } finally {
      release();
    }
  }

  /** Resolves with the version the change gave the block; the client is told only once acknowledged() is called. */
  write(index: number, offset: number, data: Buffer, fua: boolean): Promise<Version | undefined> {
    if (offset === 0 && data.length === this.blockSize) this.expectAhead(index);
    return this.change(index, { kind: 'write', offset, data }, fua);
  }

  /**
   * A whole-block write: the owners of the next blocks may prepare for
   * writes to them (ReplicaApi.expectWrites). A file store makes the
   * write-ahead records of blocks it does not hold durable now, a stride at
   * a time, so that a stream filling a new volume neither waits for one per
   * block (about 40 % of each request's time, docs/perf/profile.md) nor
   * pays an fdatasync per block in the background. Only blocks inside the
   * volume: the store keeps such a block suspect after a crash until it is
   * compared, and nothing compares blocks past the end.
   *
   * A stream that goes on names only the stride its window gained since the
   * last hint (the rest is named already), not the whole window again: 256
   * placements and refs per hint would be 32 per block written, on every
   * sequential write, overwrites included. The whole window goes again when
   * the writer jumps, and once every EXPECT_AHEAD_BLOCKS blocks: a store
   * forgets names left unclaimed at its checkpoints, and a restarted owner
   * never had them.
   */
  private expectAhead(index: number): void {
    if (this.closed || index % EXPECT_STRIDE !== 0) return;
    const last = Math.min(this.blockCount - 1, index + EXPECT_AHEAD_BLOCKS);
    if (last <= index) return;
    const goesOn = index % EXPECT_AHEAD_BLOCKS !== 0 && this.expectedThrough >= index && this.expectedThrough <= last;
    const first = goesOn ? this.expectedThrough + 1 : index + 1;
    this.expectedThrough = last;
    if (first > last) return;
    const ring = this.ctx.ring();
    const byPeer = new Map<string, BlockRef[]>();
    for (let i = first; i <= last; i++) {
      const ref = this.refOf(i);
      for (const u of ownersOf(ring, ref).placed) {
        let refs = byPeer.get(u);
        if (refs === undefined) byPeer.set(u, (refs = []));
        refs.push(ref);
      }
    }
    const ctx = this.ctx.requestContext();
    for (const [u, refs] of byPeer) this.ctx.replica(u)?.expectWrites?.(ctx, refs);
    // And learns those blocks now, off the writes' path: a write to a block
    // not known yet waits for its owners' metadata first (a round trip that
    // queues behind whole-block payloads on the same connections: 2.3 ms of
    // a 1 MiB write's 12 ms in a replicated prefill). touch() is what that
    // write would call; a failure here is only learnt again by the write.
    for (let i = first; i <= last; i++) {
      if (this.blocks.peek(i) !== undefined) continue;
      const learnt = this.touch(i).then(
        () => undefined,
        (err: unknown) => {
          if (isAssertionFailure(err)) this.ctx.invariantBroken(err, { module: 'coordinator', volume: this.volume.name, block: i });
        },
      );
      trackUntilSettled(this.background, learnt);
    }
  }

  /** Resolves with the version the change gave the block, or nothing when it changed nothing. */
  zero(index: number, offset: number, length: number, opts: { punch: boolean; fua: boolean }): Promise<Version | undefined> {
    return this.change(index, { kind: 'zero', offset, length, punch: opts.punch }, opts.fua);
  }

  /**
   * A client request whose changes these were was acknowledged (every
   * piece succeeded): learning a block again below one of them from now on
   * means an acknowledged change was lost (loseData). A request that
   * failed in any piece was never acknowledged, so none of its pieces
   * count, although some of them may have reached their owners.
   */
  acknowledged(changes: readonly (readonly [index: number, version: Version])[]): void {
    for (const [index, version] of changes) {
      const e = this.blocks.get(index);
      if (e !== undefined && e.acked < version) e.acked = version;
    }
  }

  /**
   * FLUSH: every owner that took changes since its last flush makes them
   * durable. An owner that cannot is recorded stale for those blocks; the
   * flush fails if a block is left with fewer than minReplicas durable
   * copies (docs/replication.md, "The write path").
   */
  flush(): Promise<void> {
    // Flushes run one at a time: a flush that found nothing new to flush
    // must not answer while an earlier one still makes the same changes
    // durable (NBD: a flush covers every write completed before it).
    const previous = this.flushing;
    const mine = previous.then(
      () => this.flushNow(),
      () => this.flushNow(),
    );
    this.flushing = mine.catch(() => undefined);
    return mine;
  }

  private flushing: Promise<void> = Promise.resolve();

  private async flushNow(): Promise<void> {
    this.checkUsable();
    while (this.background.size > 0) await allSettledNow(this.background);
    const batches = [...this.unflushed.entries()].filter(([, s]) => s.size > 0);
    for (const [u] of batches) this.unflushed.set(u, new Set());
    const epochs = batches.map(([u]) => this.unflushedEpoch.get(u) ?? this.restartsOf(u));
    const results = await Promise.allSettled(
      batches.map(async ([u]) => {
        const api = this.ctx.replica(u);
        if (api === null || !this.ctx.health.usable(u)) throw new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${u} is not reachable`);
        // A refusal for an outdated ring is not a replica failure: re-read
        // the ring and ask again (docs/replication.md, "Ring transitions").
        for (let attempt = 0; ; attempt++) {
          try {
            await withTimeout(api.flush(this.ctx.requestContext()), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `flush on peer ${u}`);
            return;
          } catch (err) {
            if (classifyFailure(err) !== 'outdated' || attempt >= this.ctx.settings.ringRetriesMax) throw err;
            const v = (err as TorusError).details?.['ringVersion'];
            await this.ctx.refreshRing(typeof v === 'number' ? v : this.ctx.ring().version + 1);
          }
        }
      }),
    );
    const fenced = results.find((r) => r.status === 'rejected' && classifyFailure(r.reason) === 'fenced' && !this.ownOldToken(r.reason));
    if (fenced !== undefined) {
      // Another coordinator took over: nothing of ours is recorded any more.
      this.fenced = (fenced as PromiseRejectedResult).reason as TorusError;
      throw this.fenced;
    }
    // A replica that refused one of our own earlier tokens (the lock was
    // taken again while this flush was on its way) flushed nothing: what it
    // took stays to be flushed by the next FLUSH, and this one fails.
    let renewed: TorusError | null = null;
    const records: Promise<void>[] = [];
    const short: number[] = [];
    const unconfirmed: [string, Set<number>][] = [];
    // Pins of blocks recorded stale, let go once the short ones are counted.
    const released: number[] = [];
    /** The owner lost or may lack what it took: recorded stale, no longer a holder, its blocks counted again. */
    const lost = (u: string, blocks: ReadonlySet<number>): void => {
      records.push(this.stale.record(u, [...blocks]));
      for (const b of blocks) {
        this.blocks.peek(b)?.holders.delete(u);
        short.push(b);
        released.push(b);
      }
    };
    results.forEach((r, i) => {
      const [u, blocks] = batches[i]!;
      if (r.status === 'fulfilled') this.ctx.health.succeeded(u);
      const kind = r.status === 'rejected' ? classifyFailure(r.reason) : null;
      if (kind === 'peer') this.ctx.health.failed(u);
      if (this.restartsOf(u) !== epochs[i]) {
        // It restarted since it took these changes: a later incarnation
        // that answered flushed what it holds, not what the one before it
        // lost; one that did not answer may have restarted while this
        // flush held its blocks (peerRestarted then found none to record).
        // Either way they are gone, not merely unconfirmed (seed 24435: put
        // back as unconfirmed under the new incarnation, the next flush
        // counted the lost change durable).
        const why = r.status === 'fulfilled' ? 'flush answered by a restarted replica' : 'a replica restarted during the flush';
        this.log.warn({ err: r.status === 'rejected' ? r.reason : undefined, peer: u, blocks: blocks.size }, `${why}; what it took before the restart is recorded stale`);
        lost(u, blocks);
        return;
      }
      if (r.status === 'fulfilled') {
        for (const b of blocks) this.unpin(b);
        return;
      }
      if (kind === 'fenced') renewed ??= this.renewedMeanwhile(r.reason as TorusError);
      if ((kind === 'peer' || kind === 'fenced') && this.isMember(u)) {
        // No answer (a timeout, a lost connection): the replica's copies are
        // still the newest, only their durability is unconfirmed. They stay
        // to be flushed again by the next FLUSH; if the peer restarted and
        // lost them, it marks them suspect itself and peerRestarted records
        // them stale. Recording them stale now would leave a block whose
        // every owner timed out with no trusted copy at all. A refusal of
        // our own earlier token is the same: nothing was flushed.
        const why = kind === 'fenced' ? 'flush refused under our earlier token' : 'flush got no answer from a replica';
        this.log.warn({ err: r.reason, peer: u, blocks: blocks.size }, `${why}; its changes count as not durable until a later flush confirms them`);
        unconfirmed.push([u, blocks]);
        return;
      }
      this.log.warn({ err: r.reason, peer: u, blocks: blocks.size }, 'flush failed on a replica; its unflushed blocks are recorded stale');
      lost(u, blocks);
    });
    for (const [u, blocks] of unconfirmed) {
      let s = this.unflushed.get(u);
      if (s === undefined) this.unflushed.set(u, (s = new Set()));
      for (const b of blocks) {
        // Still pinned: the pin moves back with the block.
        if (s.has(b)) this.unpin(b);
        else s.add(b);
        short.push(b);
      }
    }
    // Only blocks left with fewer than minReplicas durable copies fail the flush.
    for (let i = short.length - 1; i >= 0; i--) {
      if (this.durableCopies(short[i]!) >= this.quorumFor(short[i]!)) short.splice(i, 1);
    }
    for (const b of released) this.unpin(b);
    const recorded = await Promise.allSettled(records);
    const refused = recorded.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (refused !== undefined) {
      // etcd did not take a record (memory keeps it, to be made durable by
      // the next flush): the short blocks still count as short, or the next
      // flush would find nothing to check for them and pass on a single
      // durable copy (seed 7354 with --readers: an owner's restart was
      // found while etcd was out, and the flush after the lock was taken
      // again acknowledged a block only its writer held durably).
      for (const b of new Set(short)) this.markShort(b);
      throw refused.reason;
    }
    for (const b of this.lostInRestart) {
      if (this.durableCopies(b) < this.quorumFor(b)) short.push(b);
      this.unpin(b);
    }
    this.lostInRestart.clear();
    // What earlier flushes left short counts until it is durable again:
    // checked, and its owners caught up where they can be, a few blocks at
    // a time (each may learn the block again and copy it whole), so a flush
    // after many blocks went short waits for a fraction of their round
    // trips, with at most SHORT_CHECKS_IN_FLIGHT copies held at once.
    const counted = new Set(short);
    const earlier = [...this.shortSinceFlush].filter((b) => !counted.has(b));
    await eachLimited(earlier, SHORT_CHECKS_IN_FLIGHT, async (b) => {
      if (await this.durableEnough(b)) {
        this.shortSinceFlush.delete(b);
        this.unpin(b);
      } else short.push(b);
      return true;
    });
    for (const b of new Set(short)) this.markShort(b);
    this.checkLease();
    if (this.dataLost) throw this.dataLost;
    if (renewed !== null) throw renewed;
    if (short.length > 0) {
      const blocks = [...new Set(short)];
      this.log.warn({ blocks: blocks.slice(0, 16), count: blocks.length }, 'flush failed: blocks with fewer than minReplicas durable copies');
      throw new TorusError('TORUS_ERR_REPLICA_QUORUM', `flush of volume ${this.volume.name}: ${blocks.length} block(s) have fewer than the minimum of durable copies`, { details: { blocks: blocks.slice(0, 16) } });
    }
  }

  /** A block left with fewer than minReplicas durable copies: flushes fail until it has them (pinned until then). */
  private markShort(index: number): void {
    if (this.shortSinceFlush.has(index)) return;
    const e = this.blocks.peek(index);
    if (e !== undefined) e.pins++;
    this.shortSinceFlush.add(index);
  }

  /** Whether at least minReplicas trusted owners hold the block's newest version durably (learnt again when it seems not). */
  private async durableEnough(index: number): Promise<boolean> {
    // A change that ended short because etcd refused the record of an owner
    // it missed: until etcd has that record, other coordinators trust the
    // owner, which lacks the change (seed 725: a flush passed on the copies
    // this coordinator trusted, and a later writer read the owner's zeroes).
    try {
      await this.stale.ensureDurable(ownersOf(this.ctx.ring(), this.refOf(index)).all, index);
    } catch (err) {
      rethrowAssertion(err);
      return false;
    }
    if (this.blocks.peek(index) !== undefined && this.durableCopies(index) >= this.quorumFor(index)) return true;
    // Learnt again: owners that did not answer when the block was last
    // learnt are not known holders, though they may hold its newest copy
    // durably by now (a catch-up); a block would stay short for good.
    try {
      await this.touch(index, { fresh: true });
    } catch (err) {
      rethrowAssertion(err);
      return false;
    }
    if (this.durableCopies(index) >= this.quorumFor(index)) return true;
    // Owners learning found holding the newest copy without a flush of it
    // (bookLearnt) count once they flush it.
    await this.flushLearnt(index);
    if (this.durableCopies(index) >= this.quorumFor(index)) return true;
    // Still short, with owners that answer but missed the change (one
    // whose copy failed its CRC check refuses a change to that page):
    // they are brought up to date from a durable copy now, as a change
    // would, rather than failing the flush until the background catch-up
    // gets there (seed 16677). Installs are durable (FUA).
    try {
      await this.repairBelowQuorum(index);
    } catch (err) {
      rethrowAssertion(err);
      return false;
    }
    return this.durableCopies(index) >= this.quorumFor(index);
  }

  /**
   * Flushes the owners that hold the block's newest copy unflushed as far
   * as this coordinator knows, and books the block durable on each that
   * answers under the incarnation that took it. Best effort: one that
   * fails keeps it unflushed for the next FLUSH.
   */
  private async flushLearnt(index: number): Promise<void> {
    const e = this.blocks.peek(index);
    if (e === undefined || e.unsure) return;
    const pending = [...e.holders].filter(([u, v]) => v === e.committed && this.unflushed.get(u)?.has(index) === true).map(([u]) => u);
    await Promise.all(
      pending.map(async (u) => {
        const api = this.ctx.replica(u);
        const epoch = this.restartsOf(u);
        if (api === null || !this.ctx.health.usable(u) || this.unflushedEpoch.get(u) !== epoch) return;
        try {
          await withTimeout(api.flush(this.ctx.requestContext()), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `flush on peer ${u}`);
        } catch (err) {
          rethrowAssertion(err);
          this.log.debug({ err, block: index, peer: u }, 'could not flush an owner found holding the newest copy');
          return;
        }
        if (this.restartsOf(u) !== epoch) return;
        if (this.unflushed.get(u)?.delete(index) === true) this.unpin(index);
      }),
    );
  }

  /** Trusted owners known to hold the block's newest version with no flush of it outstanding (0 when the block is not in the table, or unsure). */
  private durableCopies(index: number): number {
    const e = this.blocks.peek(index);
    // Unsure (a change failed half way): until it is learnt again, the owners
    // that missed the change are recorded nowhere, and another coordinator
    // would trust them; no copy counts yet.
    if (e === undefined || e.unsure) return 0;
    return this.trustedHolders(e, ownersOf(this.ctx.ring(), this.refOf(index))).filter((u) => this.unflushed.get(u)?.has(index) !== true).length;
  }

  /** Whether the peer is a member of the ring (any placement of a transition). */
  private isMember(u: string): boolean {
    return ringPeers(this.ctx.ring()).includes(u);
  }

  /**
   * A peer restarted: what it took since its last flush may be gone. Those
   * blocks are recorded stale for it (it records its suspect blocks itself
   * too), and the next flush fails if one is left with fewer than
   * minReplicas durable copies.
   */
  peerRestarted(u: string): void {
    const s = this.unflushed.get(u);
    this.unflushedEpoch.set(u, this.restartsOf(u));
    if (s === undefined || s.size === 0) return;
    this.unflushed.set(u, new Set());
    const blocks = [...s];
    for (const b of blocks) {
      // Still pinned (its unflushed pin moves to lostInRestart), so the
      // next flush can tell how many durable copies are left.
      this.blocks.peek(b)?.holders.delete(u);
      if (this.lostInRestart.has(b)) this.unpin(b);
      this.lostInRestart.add(b);
    }
    this.log.warn({ peer: u, blocks: blocks.length }, 'a replica restarted with unflushed changes; they are recorded stale for it');
    const recorded = this.stale.record(u, blocks).catch((err: unknown) => {
      // Nobody awaits this record: a broken invariant is reported from here.
      if (isAssertionFailure(err)) return this.ctx.invariantBroken(err, { module: 'coordinator', volume: this.volume.name, peer: u });
      // Until etcd takes the record, another coordinator would trust the
      // owner for what it lost: flushes fail while a block's record is not
      // durable (durableEnough makes it so again). Not for good: once etcd
      // answers and the block has its copies, a flush passes (seed 16297).
      for (const b of blocks) this.markShort(b);
    });
    trackUntilSettled(this.background, recorded);
  }

  /** Restarts of peer u seen so far (0 when the transport cannot tell). */
  private restartsOf(u: string): number {
    return this.ctx.peerRestarts?.(u) ?? 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.background.size > 0) await allSettledNow(this.background);
    // A change that failed half way may have its stale or unsure record in
    // memory only (etcd did not take it then). A clean release tells the
    // next holder that etcd names every owner that missed one of our
    // changes: it is made durable first, or the lock is let go as if it
    // expired, and the next holder distrusts what silent owners may lack.
    try {
      await this.stale.settleAll();
    } catch (err) {
      rethrowAssertion(err);
      this.lock.markUnsettled();
      this.log.warn({ err }, 'records of owners that missed a change could not be made durable before the close: the lock is let go as if it expired');
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Set when a peer refused our token: a newer coordinator holds the volume. */
  get fencedBy(): TorusError | null {
    return this.fenced;
  }

  // ------------------------------------------------------------ changes

  /**
   * One change, tried again once when owners refused it only because their
   * copy of the block must be caught up first (one found rotten or behind
   * just now, after the coordinator had learnt the block) and too few took
   * it for the quorum: those owners are caught up from a copy that took the
   * failed attempt, and the change is sent again under a fresh version. The
   * client sees one write that succeeded, rather than EIO for a copy the
   * cluster can repair (seed 89579: a page rotten on one of two old owners
   * of a block while the ring moved, found by the move a moment before a
   * whole-block write to it). Both attempts write the same bytes, and
   * neither was acknowledged when the second is sent.
   */
  private async change(index: number, change: Change, fua: boolean): Promise<Version | undefined> {
    try {
      return await this.changeOnce(index, change, fua);
    } catch (err) {
      const behind = catchUpFirstOf(err);
      if (behind.length === 0 || this.closed || this.fenced !== null) throw err;
      // The catch-up is changeOnce's own first step too (the owners are
      // recorded stale now); done here to know whether it trusts one of
      // them again: if none, a second attempt would only fail the same way.
      const fixed = await this.repairBelowQuorum(index);
      if (!behind.some((u) => fixed.includes(u))) throw err;
      this.ctx.stats.retriedChanges++;
      this.log.info({ block: index, peers: behind, err }, 'owners refused a change until caught up: caught up, the change is sent again');
      return await this.changeOnce(index, change, fua);
    }
  }

  private async changeOnce(index: number, change: Change, fua: boolean): Promise<Version | undefined> {
    this.checkUsable();
    if (this.seq >= SEQ_MAX - SEQ_RENEW_MARGIN) await this.renewVersionSpace();
    // What repairBelowQuorum starts with, done here when it needs no wait:
    // a block known and trusted, with no owner recorded for it (nearly
    // every change), has nothing to repair, and a change to it need not
    // wait a turn for its order or its entry either.
    if (!trustedEntry(this.blocks.get(index)) || this.stale.anyStale(index)) await this.repairBelowQuorum(index);
    const release = this.order.tryShared(index) ?? (await this.order.shared(index));
    try {
      const ready = this.blocks.get(index);
      const e = trustedEntry(ready) ? ready : await this.touch(index);
      const ref = this.refOf(index);
      const whole = change.kind === 'write' ? change.offset === 0 && change.data.length === this.blockSize : change.offset === 0 && change.length === this.blockSize;
      // Zeroing what already reads as zeroes changes nothing (and a trim of a
      // block no trusted owner holds leaves no tombstone behind)... unless an
      // owner is recorded stale or unsure for the block: it may hold a
      // change that failed, newer than what was learnt, and a later learning
      // that trusts it again would bring that change back over this one
      // (seed 1988). Then the zero is made, under a version of its own.
      const settled = change.kind !== 'zero' || !this.stale.anyStale(index);
      if (settled && change.kind === 'zero' && !whole && e.state !== 'data') return void this.checkLease();
      if (settled && change.kind === 'zero' && whole && change.punch && e.state === 'absent') return void this.checkLease();
      // Nothing is sent past the lease deadline either: waiting for the
      // block (its order, learning it) may have taken us past it, or the
      // process was paused there; a newer coordinator may hold the volume.
      this.checkLease();
      const version = this.nextVersion(e.version);
      const stamp: ChangeStamp = { token: this.token, version, prev: e.version };
      // Assigned and sent in the same turn: concurrent changes to one block
      // leave in version order on every connection.
      e.version = version;
      e.state = change.kind === 'zero' && whole && change.punch ? 'zero' : 'data';
      e.digest = null;
      e.pins++;
      e.inflight++;
      this.noteChanged(index);
      const t = this.ctx.ring().transition;
      if (t !== null && t.phase === 'moving' && !this.isMoved(index)) {
        if (this.unmovedChanges.ringVersion !== t.startedVersion) this.unmovedChanges = { ringVersion: t.startedVersion, blocks: new Set() };
        this.unmovedChanges.blocks.add(index);
      }
      const done = this.send(e, ref, change, stamp, fua);
      if (this.writeLevel === 'all') {
        await done.finished;
      } else {
        await done.early;
        const tracked = done.finished.then(
          () => undefined,
          (err: unknown) => {
            // Acknowledged already, so nobody awaits the rest: a broken invariant is reported from here.
            if (isAssertionFailure(err)) return this.ctx.invariantBroken(err, { module: 'coordinator', volume: this.volume.name, block: index });
            // Acknowledged with fewer than minReplicas copies: every flush
            // fails until the block has them durable again (a catch-up of
            // the owners that missed it, or a later change that reaches
            // them). If the owners that took it lose it, learning the block
            // again finds the loss (loseData).
            this.log.debug({ err, block: index }, 'a change acknowledged early reached fewer than minReplicas owners; flushes fail until the block has them');
            this.markShort(index);
          },
        );
        trackUntilSettled(this.background, tracked);
      }
      this.checkLease();
      // Acknowledged to the client once every piece of its request is (acknowledged()).
      return version;
    } finally {
      release();
    }
  }

  /**
   * Too few owners hold the block's newest copy for a change to reach
   * minReplicas of them (learning found the others behind: a change that
   * failed half way left a newer copy on one owner), while owners recorded
   * stale for just this block answer: they are caught up from a current
   * copy now, rather than the change fail with every peer up and wait for
   * the background catch-up. Best effort: whatever is not fixed leaves the
   * change to fail as before. Returns the owners it found current or
   * brought there that are no longer recorded stale (trusted again).
   */
  private async repairBelowQuorum(index: number): Promise<readonly string[]> {
    // Learnt here when new (cheap when known; learning records owners found
    // behind); a failure is the change's own to report.
    const e = await this.touch(index).catch(unlessAssertion(null));
    // Nothing recorded for the block (nearly always): nothing to repair.
    if (e === null || !this.stale.anyStale(index)) return [];
    const owners = ownersOf(this.ctx.ring(), this.refOf(index));
    const plan = this.targets(index, owners);
    if (plan.skipped.length === 0 && plan.required.length === owners.all.length) return [];
    if (this.quorumMet(index, owners, plan.send)) return [];
    const behind = owners.all.filter(
      (u) => this.requiredFor(index, owners, u) && this.stale.missed(u) !== 'all' && this.stale.isStale(u, index) && this.ctx.health.usable(u) && this.ctx.replica(u) !== null,
    );
    if (behind.length === 0) return [];
    // The change counts them only once etcd trusts them again too (a clear
    // etcd refuses leaves them stale in memory as well: stale-book.ts).
    const clears: Promise<void>[] = [];
    const r = await this.syncBlock(index, behind, async () => undefined, (fixed) => {
      for (const u of fixed) if (this.stale.isStale(u, index)) clears.push(this.stale.clear(u, [index], this.token));
    }).catch((err: unknown) => {
      if (classifyFailure(err) === 'fenced') throw err;
      this.log.debug({ err, block: index }, 'could not catch owners of the block up before a change');
      return null;
    });
    const cleared = await Promise.allSettled(clears);
    for (const c of cleared) if (c.status === 'rejected') rethrowAssertion(c.reason);
    if (r !== null && r.fixed.length > 0) this.log.info({ block: index, peers: r.fixed, trusted: cleared.every((c) => c.status === 'fulfilled') }, 'caught owners of the block up: a change or a flush needed them');
    // Trusted again: caught up, and no longer recorded (cleared here, or by
    // a catch-up that got to the block first: then this pass found the
    // owner current; a clear etcd refused puts the record back).
    return r === null ? [] : r.fixed.filter((u) => !this.stale.isStale(u, index));
  }

  /**
   * Nearly every version of the token is used: keep the lock and take the
   * next token (docs/replication.md, "Versions"). Changes already under way
   * keep their versions; later ones use the new token.
   */
  private renewVersionSpace(): Promise<void> {
    if (this.renewing === null) {
      this.renewing = (async () => {
        const lock = await this.lock.renew();
        this.log.info({ token: lock.token, previous: this.token }, 'fencing token renewed: the versions of the old one are nearly used up');
        await this.renewToken(lock);
      })().finally(() => (this.renewing = null));
    }
    return this.renewing;
  }

  /**
   * One call to a replica on the data path, bounded by the replica timeout.
   * A peer client enforces the deadline itself, on one timer per client,
   * and drops a request still queued when it passes (its payload is not
   * held past it); anything else (the local replica, the simulated network)
   * is raced against one timer of this coordinator's (util/deadline-race.ts).
   */
  private bounded<T>(api: ReplicaApi, u: string, what: string, call: (ctx: RequestContext) => Promise<T>): Promise<T> {
    const ms = this.ctx.settings.replicaTimeoutMs;
    if (api.enforcesDeadline === true) {
      return call({ ringVersion: this.ctx.requestContext().ringVersion, deadline: this.ctx.clock.monotonic() + ms });
    }
    return this.localDeadlines.run(call(this.ctx.requestContext()), ms, what, u);
  }

  /**
   * The next version of this coordinator: (token, seq), newer than `prev`.
   * A `prev` made under a newer token than ours is a copy of a newer writer
   * or maintainer: this one is fenced off (it missed the news, e.g. frozen
   * through a takeover, and learnt a block the new holder changed: seed
   * 37957, where an adoption asserted instead).
   */
  private nextVersion(prev: Version): Version {
    if (versionToken(prev) > this.token) {
      this.fenced ??= new TorusError('TORUS_ERR_VOLUME_FENCED', `volume ${this.volume.name}: a copy was made under token ${versionToken(prev)}, newer than ours (${this.token}); a newer writer or maintainer holds the volume`, {
        details: { volumeId: this.volume.id, token: this.token, current: versionToken(prev) },
      });
      throw this.fenced;
    }
    if (this.seq >= SEQ_MAX) {
      throw new TorusError('TORUS_ERR_VERSION_EXHAUSTED', `volume ${this.volume.name}: 2^32 - 1 changes under token ${this.token}; it must be opened again to take a new token`);
    }
    const version = makeVersion(this.token, ++this.seq);
    assert(version > prev, 'a new version is newer than the one it builds on');
    return version;
  }

  /**
   * Sends one stamped change to the block's owners and settles the
   * bookkeeping. `early` resolves when the write level allows an answer;
   * `finished` when every owner answered, failed or was recorded stale.
   */
  private send(e: BlockEntry, ref: BlockRef, change: Change, stamp: ChangeStamp, fua: boolean): { early: Promise<void>; finished: Promise<void> } {
    // At write level all nothing is answered before every owner did: the
    // early answer is the finished one, and no promise of its own is made.
    const all = this.writeLevel === 'all';
    let earlyResolve: (() => void) | null = null;
    let earlyReject: ((err: unknown) => void) | null = null;
    const early = all
      ? null
      : new Promise<void>((res, rej) => {
          earlyResolve = res;
          earlyReject = rej;
        });
    // The payload may be sent again (a ring retry) after the write level let
    // the caller go on: hold it until every owner has answered.
    if (change.kind === 'write') retainBuffer(change.data);
    const finished = (async () => {
      // Owners that took the change, and each one's restart count when it
      // answered: one that restarts before the change is booked as
      // unflushed has lost it already. Arrays: there are a few owners.
      const acked: string[] = [];
      const ackedAt: number[] = [];
      // Where the change was last sent: what a failure half way records.
      let owners = ownersOf(this.ctx.ring(), ref);
      let plan = this.targets(e.index, owners);
      // Past the sending: the owners it missed are recorded below, or their
      // records' failure is what threw.
      let sent = false;
      try {
        let send = plan.send;
        let noSpace = 0;
        // Owners that refused because their copy must be caught up first
        // (made on the first such refusal: nearly no change meets one).
        let refusedBehind = null as string[] | null;
        let earlyDone = false;
        const self = this.ctx.selfUuid;
        const onAck = (u: string) => {
          acked.push(u);
          ackedAt.push(this.restartsOf(u));
          if (all) return;
          // Acknowledged early, the change must be what reads through this
          // coordinator see from now on: only owners that took it serve them.
          if ((e.holders.get(u) ?? VERSION_ABSENT) < stamp.version) e.holders.set(u, stamp.version);
          // Only an owner of the placement known to hold every block may
          // acknowledge early: the old owners while the ring is moving (a
          // transition called off goes back to them), the new ones after.
          // Otherwise a change only a new owner took would be lost with it
          // when a ring change drops it (seed 240). Once the block moved,
          // the transition may also complete without another look at it:
          // then an old owner and a new one must both hold the change, as
          // for the quorum (quorumMet), or a change only an old owner took
          // is left on a peer that is no owner once the ring settles
          // (seed 16773: declared lost when learnt again).
          if (earlyDone) return;
          const moving = owners.phase === 'moving';
          const anchors = moving ? owners.old! : owners.now;
          if (moving && this.isMoved(e.index)) {
            if (!acked.some((x) => anchors.includes(x)) || !acked.some((x) => owners.now.includes(x))) return;
          } else if (!anchors.includes(u)) return;
          const waitForSelf = this.writeLevel === 'local' && self !== null && plan.required.includes(self) && anchors.includes(self);
          if (!waitForSelf || acked.includes(self)) {
            earlyDone = true;
            if (e.floor < stamp.version) e.floor = stamp.version;
            earlyResolve!();
          }
        };
        // The payload's CRC, summed once when it goes to more than one peer
        // over the wire; when it goes over the wire at all and is whole
        // pages, summed per page once, for the wire and for the stores'
        // CRC tables alike (ReplicaWriteOptions.pageCrcs).
        let writeOpts: ReplicaWriteOptions = { fua };
        for (let attempt = 0; ; attempt++) {
          if (attempt > 0) this.checkLease();
          if (change.kind === 'write' && writeOpts.crc32c === undefined) {
            const wire = this.overTheWire(send);
            if (wire > 0 && change.data.length % CRC_PAGE_BYTES === 0) writeOpts = withPageCrcs(change.data, fua);
            else if (wire > 1) writeOpts = { fua, crc32c: crc32c(change.data) };
          }
          const opts = writeOpts;
          const outcomes = await settleEach(
            send,
            (u) => {
              const api = this.ctx.replica(u);
              if (api === null) throw new TorusError('TORUS_ERR_RING_PEER_UNKNOWN', `peer ${u} has no known address`);
              return this.bounded(api, u, 'change', (ctx) =>
                change.kind === 'write'
                  ? api.write(ctx, ref, change.offset, change.data, stamp, opts)
                  : api.zero(ctx, ref, change.offset, change.length, stamp, { punch: change.punch, fua }),
              );
            },
            onAck,
          );
          let outdated = 0;
          for (let i = 0; i < send.length; i++) {
            const u = send[i]!;
            const reason = outcomes[i];
            if (reason === SETTLED_OK) {
              this.ctx.health.succeeded(u);
              continue;
            }
            const kind = classifyFailure(reason);
            if (mustCatchUp(reason) && refusedBehind?.includes(u) !== true) (refusedBehind ??= []).push(u);
            if (kind === 'outdated') {
              const v = (reason as TorusError).details?.['ringVersion'];
              outdated = Math.max(outdated, typeof v === 'number' ? v : this.ctx.ring().version + 1);
              continue;
            }
            if (kind === 'fenced') {
              // Our own token from before a renewal, refused by an owner that
              // learnt the new one: that owner missed this change, no more.
              if (this.ownOldToken(reason)) continue;
              this.fenced = reason as TorusError;
              continue;
            }
            if (kind === 'peer') this.ctx.health.failed(u);
            if (isTorusError(reason, 'TORUS_ERR_STORE_NO_SPACE')) noSpace++;
          }
          if (this.fenced) throw this.fenced;
          if (outdated === 0 || attempt >= this.ctx.settings.ringRetriesMax) break;
          // Our ring is behind: re-place, and send to owners that have not
          // taken it yet (a duplicate is harmless: it is taken as done).
          await this.ctx.refreshRing(outdated);
          owners = ownersOf(this.ctx.ring(), ref);
          plan = this.targets(e.index, owners);
          send = plan.send.filter((u) => !acked.includes(u));
        }
        this.bookTaken(e, stamp, fua, acked, ackedAt);
        sent = true;
        // Every owner that must have the change and did not take it is
        // recorded stale before anything is acknowledged.
        // An owner that already took a later change replacing this one (a
        // whole-block write or zero sent after it, answered first) misses
        // nothing: its copy is newer than this change could make it.
        const missed = this.missedBy(e, stamp, plan, acked);
        for (const u of missed) e.holders.delete(u);
        const quorumOk = this.quorumMet(e.index, owners, acked);
        if (missed.length > 0) {
          // A change that no owner confirmed is not acknowledged, and no
          // owner is known to hold anything newer than the others: recording
          // every owner stale would only leave the block with no trusted
          // copy for good...
          const record = quorumOk || earlyDone || acked.length > 0 ? missed : [];
          // ... but they may have taken it silently (a lost answer), and such a
          // change may still land later (a message held by a partition): they
          // are recorded unsure, untrusted like stale owners, until the next
          // learning of the block compares their versions (docs/replication.md,
          // "Unsure blocks").
          const unsure = record.length === 0 ? missed : [];
          try {
            await Promise.all([...record.map((u) => this.stale.record(u, [e.index])), ...unsure.map((u) => this.stale.recordUnsure(u, [e.index]))]);
          } catch (err) {
            this.markUnsure(e);
            rethrowAssertion(err);
            throw new TorusError('TORUS_ERR_REPLICA_QUORUM', `block ${e.index} of ${this.volume.name}: owners that missed the change could not be recorded stale in etcd, so it is not acknowledged`, { cause: err });
          }
          this.ctx.stats.staleRecorded += record.length;
        }
        // Owners skipped as stale must stay recorded in etcd for this block
        // before it is acknowledged: a whole-volume record being narrowed no
        // longer covers it (stale-book.ts, coverSkipped). So must they when
        // the change failed but some owner took it (a quorum always means
        // some owner did, so the test is only that): a read may return that
        // copy (seed 2906 with --suspend: a narrowing planned before such a
        // change landed after it, the skipped owner was trusted again, and
        // once the writer was gone the next one read its older copy).
        // Only the owners left out as stale: a record that no longer names
        // the block for one of them is made again (seed 60697: a narrowing
        // planned before this change landed while it was in flight).
        const cover = this.coverLeftOut(e.index, owners, plan, acked);
        if (cover !== null) {
          try {
            await cover;
          } catch (err) {
            this.markUnsure(e);
            rethrowAssertion(err);
            throw new TorusError('TORUS_ERR_REPLICA_QUORUM', `block ${e.index} of ${this.volume.name}: owners skipped as stale could not be kept recorded in etcd, so the change is not acknowledged`, { cause: err });
          }
        }
        if (!quorumOk) {
          this.ctx.stats.failedChanges++;
          this.markUnsure(e);
          if (noSpace > 0 && acked.length === 0) {
            throw new TorusError('TORUS_ERR_STORE_NO_SPACE', `block ${e.index} of ${this.volume.name}: the owners are out of space`);
          }
          // `catchUpFirst`: owners that change() may catch up from an owner that
          // took this attempt and send the change again to. None when no
          // owner took it: then the owners that missed it are only recorded
          // unsure, and there is no copy of it to catch them up from.
          throw new TorusError('TORUS_ERR_REPLICA_QUORUM', `block ${e.index} of ${this.volume.name}: ${acked.length} owner(s) took the change, fewer than the minimum`, {
            details: { acked, missed, catchUpFirst: acked.length > 0 && refusedBehind !== null ? refusedBehind.filter((u) => missed.includes(u)) : [] },
          });
        }
        if (missed.length > 0) {
          this.ctx.stats.degradedChanges++;
          this.log.debug({ block: e.index, missed }, 'degraded change: the owners that missed it are recorded stale');
        }
        if (e.committed < stamp.version) e.committed = stamp.version;
      } catch (err) {
        // Whatever stopped it (the ring could not be re-read from etcd, the
        // lease ran out between attempts, a fence), some owners may have
        // taken the change and others not: the block is learnt again before
        // it is read or changed. Left trusted, a read would serve the copy
        // of an owner that took this failed change while the others are
        // recorded neither stale nor unsure, and the next writer would read
        // back in time once that owner is gone (seed 8994).
        this.markUnsure(e);
        // What owners took before it stopped is on them, unflushed: below
        // write level all it may have been acknowledged, and a flush must
        // not count those copies durable (seed 9639: booked only on the way
        // out of the retry loop, a failed ring refresh skipped it, and the
        // next flush passed on the writer's own unflushed copy).
        this.bookTaken(e, stamp, fua, acked, ackedAt);
        if (!sent && this.fenced === null) this.recordHalfWay(e, stamp, acked, owners, plan);
        throw err;
      } finally {
        // Settled either way: the payload and the entry are let go before
        // anyone awaiting the change goes on.
        if (change.kind === 'write') releaseBuffer(change.data);
        this.settledOne(e);
      }
    })();
    if (early === null) return { early: finished, finished };
    finished.then(
      () => earlyResolve!(),
      (err: unknown) => earlyReject!(err),
    );
    // Either may go unobserved: the caller stops at a failed early answer.
    early.catch(() => undefined);
    finished.catch(() => undefined);
    return { early, finished };
  }

  /**
   * Books the owners that took a change: each one holds its version, and
   * without FUA holds it unflushed until the next FLUSH (pinned until then).
   * An owner that restarted since it answered lost the change: it is taken
   * out of `acked`, as if it never took it.
   */
  private bookTaken(e: BlockEntry, stamp: ChangeStamp, fua: boolean, acked: string[], ackedAt: number[]): void {
    if (!fua) {
      for (let i = acked.length - 1; i >= 0; i--) {
        if (ackedAt[i] === this.restartsOf(acked[i]!)) continue;
        acked.splice(i, 1);
        ackedAt.splice(i, 1);
      }
    }
    for (const u of acked) {
      if ((e.holders.get(u) ?? VERSION_ABSENT) < stamp.version) e.holders.set(u, stamp.version);
      if (!fua) this.bookUnflushed(u, e);
    }
  }

  /** The owner holds the block's copy unflushed: the next FLUSH must reach it (pinned until then). */
  private bookUnflushed(u: string, e: BlockEntry): void {
    // What it took under an earlier incarnation is gone.
    const now = this.restartsOf(u);
    if ((this.unflushedEpoch.get(u) ?? now) !== now) this.peerRestarted(u);
    this.unflushedEpoch.set(u, now);
    let s = this.unflushed.get(u);
    if (s === undefined) this.unflushed.set(u, (s = new Set()));
    if (!s.has(e.index)) {
      s.add(e.index);
      e.pins++;
    }
  }

  /**
   * Owners learning found holding the block's newest version that this
   * coordinator did not know held it: their copy counts as unflushed until
   * a flush confirms it (seed 50071: a change whose answer from one owner
   * was lost, learnt again from that owner, counted as its second durable
   * copy, and a FLUSH passed with one copy on disk). One that restarted
   * since it answered may have lost the copy already: not a holder.
   */
  private bookLearnt(e: BlockEntry, known: ReadonlyMap<string, Version>, askedAt: ReadonlyMap<string, number>): void {
    // Deleting the entry being visited is safe while iterating a Map.
    for (const [u, v] of e.holders) {
      if (v !== e.committed || known.get(u) === v) continue;
      const now = this.restartsOf(u);
      if (askedAt.get(u) !== now) e.holders.delete(u);
      else this.bookUnflushed(u, e);
    }
  }

  /** How many of these owners are reached over the wire (their client enforces deadlines). */
  private overTheWire(send: readonly string[]): number {
    let n = 0;
    for (const u of send) if (this.ctx.replica(u)?.enforcesDeadline === true) n++;
    return n;
  }

  /** One change to the block settled (either way). */
  private settledOne(e: BlockEntry): void {
    e.inflight--;
    this.unpin(e.index);
    if (e.inflight === 0 && e.drained !== null) {
      const d = e.drained;
      e.drained = null;
      d.resolve();
    }
  }

  /** Resolves once no change to the block is in flight. */
  private drain(e: BlockEntry): Promise<void> {
    if (e.inflight === 0) return Promise.resolve();
    if (e.drained === null) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      e.drained = { promise, resolve };
    }
    return e.drained.promise;
  }

  /**
   * A change stopped by an error (the ring could not be re-read, the lease
   * ran out between attempts) rather than by a refused quorum: the owners
   * that must have it and did not take it are recorded as the quorum path
   * records them, stale when some owner took it and unsure when none did,
   * and owners left out as stale stay recorded for the block through a
   * narrowing (coverSkipped). Memory at once, etcd when it answers: until
   * it holds the records, learning the block fails (ensureDurable) rather
   * than return the copy of an owner that took the change. Otherwise, with
   * an owner that missed it silent, learning returned that copy, and the
   * next writer, trusting the silent owner, read back in time (seed 14768
   * with --suspend: the writer, cut off from etcd, could not re-read a
   * newer ring; one owner took its change, the other refused it as
   * outdated).
   */
  private recordHalfWay(e: BlockEntry, stamp: ChangeStamp, acked: readonly string[], owners: BlockOwners, plan: { required: readonly string[] }): void {
    const missed = this.missedBy(e, stamp, plan, acked);
    const waits: Promise<void>[] = missed.map((u) => (acked.length > 0 ? this.stale.record(u, [e.index]) : this.stale.recordUnsure(u, [e.index])));
    const cover = this.coverLeftOut(e.index, owners, plan, acked);
    if (cover !== null) waits.push(cover);
    if (waits.length === 0) return;
    const recorded = Promise.all(waits).then(
      () => undefined,
      (err: unknown) => {
        if (isAssertionFailure(err)) return this.ctx.invariantBroken(err, { module: 'coordinator', volume: this.volume.name, block: e.index });
        this.log.warn({ err, block: e.index, missed }, 'owners that missed a change that failed half way could not be recorded in etcd yet; the block is not read until they are');
      },
    );
    trackUntilSettled(this.background, recorded);
  }

  /** Owners the change must have reached that did not take it, and hold nothing newer (a later whole-block change answered first). */
  private missedBy(e: BlockEntry, stamp: ChangeStamp, plan: { required: readonly string[] }, acked: readonly string[]): string[] {
    return plan.required.filter((u) => !acked.includes(u) && (e.holders.get(u) ?? VERSION_ABSENT) < stamp.version);
  }

  /**
   * Keeps the owners a change left out as stale recorded for the block
   * (stale-book.ts, coverSkipped) once some owner took it; null when there
   * is nothing to wait for. Nearly every change requires every owner: no
   * array is made then.
   */
  private coverLeftOut(index: number, owners: BlockOwners, plan: { required: readonly string[] }, acked: readonly string[]): Promise<void> | null {
    if (acked.length === 0 || plan.required.length >= owners.all.length) return null;
    const leftOut = owners.all.filter((u) => this.requiredFor(index, owners, u) && !plan.required.includes(u));
    return leftOut.length > 0 ? this.stale.coverSkipped(leftOut, index) : null;
  }

  /**
   * After an adoption (a copy confirmed or installed under a fresh version
   * of ours): owners left out of it because they were not trusted for the
   * block stay recorded for it, as for a change that skipped them
   * (coverSkipped). A whole-volume record being narrowed was planned
   * without this version; once it landed the owner would be trusted with
   * its older copy. Waits until etcd holds the records; fails the
   * learning (the block unavailable, as in ensureDurable) when it cannot.
   */
  private async coverAdoption(index: number, owners: BlockOwners, trusted: readonly string[], holder: string | null): Promise<void> {
    const leftOut = owners.all.filter((u) => u !== holder && !trusted.includes(u) && this.requiredFor(index, owners, u));
    const cover = leftOut.length > 0 ? this.stale.coverSkipped(leftOut, index) : null;
    if (cover === null) return;
    try {
      await cover;
    } catch (err) {
      rethrowAssertion(err);
      throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: an owner left out of an adopted copy could not be recorded stale in etcd`, { cause: err, details: { block: index } });
    }
  }

  /** A change failed half way: owners may disagree. Kept in memory (with its floor) until learnt again. */
  private markUnsure(e: BlockEntry): void {
    if (!e.unsure) {
      e.unsure = true;
      e.pins++;
    }
  }

  /**
   * The owners a change goes to: `send` are sent it now; `skipped` are
   * owners that must have it but are unusable (DOWN, failing) and are
   * recorded stale at once; `required` are the owners whose failure must be
   * recorded. Owners already recorded stale for the block are left out:
   * their chain is broken and a catch-up will replace their copy.
   */
  targets(index: number, owners: BlockOwners): { send: string[]; skipped: string[]; required: string[] } {
    const send: string[] = [];
    const skipped: string[] = [];
    const required: string[] = [];
    for (const u of owners.all) {
      if (!this.requiredFor(index, owners, u)) continue;
      if (this.stale.isUnsureOnly(u, index)) {
        // Not learnt since its unsure change (it did not answer): not sent
        // to, and recorded stale if this change counts, since it misses it.
        required.push(u);
        skipped.push(u);
        continue;
      }
      if (this.stale.isStale(u, index)) continue;
      required.push(u);
      if (this.ctx.health.usable(u) && this.ctx.replica(u) !== null) send.push(u);
      else skipped.push(u);
    }
    return { send, skipped, required };
  }

  /** Must this owner take changes to the block? New owners in a moving transition only once the block moved to them. */
  private requiredFor(index: number, owners: BlockOwners, u: string): boolean {
    if (owners.old?.includes(u) === true) return true;
    if (!owners.now.includes(u)) return false; // a carried owner only
    if (owners.phase !== 'moving') return true;
    return this.isMoved(index);
  }

  private quorumMet(index: number, owners: BlockOwners, acked: readonly string[]): boolean {
    const ring = this.ctx.ring();
    const count = (set: readonly string[]) => {
      let n = 0;
      for (const u of set) if (acked.includes(u)) n++;
      return n;
    };
    if (owners.phase === 'moving') {
      const old = owners.old!;
      if (count(old) < quorumOf(ring, old.length)) return false;
      if (this.isMoved(index) && count(owners.now) < quorumOf(ring, owners.now.length)) return false;
      return true;
    }
    return count(owners.now) >= quorumOf(ring, owners.now.length);
  }

  private quorumFor(index: number): number {
    const ring = this.ctx.ring();
    const owners = ownersOf(ring, this.refOf(index));
    return quorumOf(ring, (owners.phase === 'moving' ? owners.old! : owners.now).length);
  }

  // ------------------------------------------------------------ reads

  private async readNow(index: number, offset: number, length: number): Promise<Buffer> {
    const deadline = this.ctx.clock.monotonic() + this.ctx.settings.replicaTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      let e: BlockEntry;
      try {
        e = await this.touch(index);
      } catch (err) {
        // No owner holding the newest copy answered the metadata request
        // (one waking from a pause does not serve until re-registered).
        if (!isTorusError(err, 'TORUS_ERR_BLOCK_UNAVAILABLE') || this.ctx.clock.monotonic() + READ_RETRY_MS > deadline) throw err;
        if (attempt === 0) await this.ctx.refreshPeers();
        await sleep(this.ctx.clock, READ_RETRY_MS);
        continue;
      }
      const owners = ownersOf(this.ctx.ring(), this.refOf(index));
      let skippedDown = false;
      // A holder that is out for now (DOWN, failing, or it failed below): worth asking again.
      let holderOut = false;
      for (const u of this.trustedHolders(e, owners)) {
        const api = this.ctx.replica(u);
        if (this.ctx.health.isDown(u)) skippedDown = true;
        if (api === null) continue;
        // Skipped while out, except when asked again after a wait.
        if (!this.ctx.health.usable(u) && attempt < 2) {
          holderOut = true;
          continue;
        }
        // A replica is behind when it answers with less than was committed
        // (or returned) when the read was SENT. A change to the block that
        // commits while the read is in flight (another range of the block,
        // or the same one) may have reached the replica only after it
        // served the read: judged against that change, a good replica
        // would be recorded stale and, as the only copy, make the block
        // unavailable (seen in the VM suites: blkid racing ext4's writes
        // to block 0). Such an answer is not stale; it is read again, a
        // bounded number of times, so that below write level "all" (where
        // a change is acknowledged before it commits) it does not return
        // data older than a change committed meanwhile.
        const need = Math.max(e.committed, e.floor);
        try {
          const readOnce = () => this.bounded(api, u, 'read', (ctx) => api.read(ctx, this.refOf(index), offset, length));
          let reply = await readOnce();
          for (let again = 0; again < READ_AGAIN_MAX && reply.meta.version >= need && reply.meta.version < Math.max(e.committed, e.floor); again++) {
            releaseBuffer(reply.data);
            reply = await readOnce();
          }
          this.ctx.health.succeeded(u);
          if (reply.meta.version >= need) {
            // Never back in time: later reads return at least this.
            if (e.floor < reply.meta.version) e.floor = reply.meta.version;
            return reply.data;
          }
          // Less than it was known to hold: it lost or missed something.
          this.log.warn({ block: index, peer: u, have: reply.meta.version, want: need }, 'replica does not hold the version it was known to hold; recording it stale');
          e.holders.delete(u);
          await this.stale.record(u, [index]);
        } catch (err) {
          const kind = classifyFailure(err);
          if (kind === 'outdated') {
            await this.ctx.refreshRing(this.ctx.ring().version + 1);
            continue;
          }
          if (kind === 'fenced') throw err;
          if (kind === 'peer') {
            this.ctx.health.failed(u);
            holderOut = true;
          }
          // A suspect or corrupt copy (the replica marked it suspect): not
          // read again; learning the block again records it behind, or
          // adopts a copy if every one is suspect.
          else e.holders.delete(u);
          this.log.debug({ err, block: index, peer: u }, 'replica read failed; trying the next');
        }
      }
      // Nobody known to hold the newest version answered: learn again once.
      this.markUnsure(e);
      // A holder DOWN by our last look at etcd may have registered again
      // since (a peer thawed after a pause past its lease, seen at our next
      // heartbeat only): look now rather than fail the read. So may an
      // owner whose answer a rescue needs (every owner recorded stale: the
      // thawed old writer's node is, for the whole volume).
      if (attempt === 0 && (skippedDown || owners.all.some((u) => this.ctx.health.isDown(u)))) await this.ctx.refreshPeers();
      else if (attempt > 0) {
        if (!holderOut || this.ctx.clock.monotonic() + READ_RETRY_MS > deadline) break;
        await sleep(this.ctx.clock, READ_RETRY_MS);
      }
    }
    throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: no owner holding its newest version is reachable`, { details: { block: index } });
  }

  /** Owners a read may use for the block: trusted under the phase and known to hold its newest version, the local one first. */
  trustedHolders(e: BlockEntry, owners: BlockOwners): string[] {
    const trusted = this.trustedOwners(e.index, owners);
    const need = Math.max(e.committed, e.floor);
    const out = trusted.filter((u) => (e.holders.get(u) ?? VERSION_ABSENT) >= need && e.holders.has(u));
    // A new owner of a block not yet moved is not read for what it lacks,
    // but one known to hold exactly the newest version (not recorded stale)
    // serves it: a rescue may have found the only current copy there, and
    // the move needs it as its source. So does an owner the rescue found
    // holding it although a whole-volume stale record names it (vouched).
    if (e.committed >= need && e.committed !== VERSION_ABSENT) {
      for (const u of owners.all) {
        if (!trusted.includes(u) && e.holders.get(u) === e.committed && (!this.stale.isStale(u, e.index) || e.vouched?.has(u) === true)) out.push(u);
      }
    }
    const self = this.ctx.selfUuid;
    const i = self === null ? -1 : out.indexOf(self);
    if (i > 0) {
      out.splice(i, 1);
      out.unshift(self!);
    }
    return out;
  }

  /** Owners whose copy of the block is trusted (docs/replication.md, "Ring transitions"). */
  trustedOwners(index: number, owners: BlockOwners): string[] {
    return this.readableOwners(index, owners).filter((u) => !this.stale.isStale(u, index));
  }

  /** Owners a read may use under the ring phase, stale records aside. */
  private readableOwners(index: number, owners: BlockOwners): readonly string[] {
    if (owners.phase === 'stable') return owners.now;
    if (owners.phase === 'moving') return this.isMoved(index) ? owners.placed : owners.old!;
    return [...owners.now, ...owners.old!.filter((u) => !owners.now.includes(u))];
  }

  // ------------------------------------------------------------ learning versions

  /**
   * The block's entry, learning it from the owners on first touch (or after
   * a failed change): asks every reachable owner for its metadata, takes the
   * newest trusted copy as the block's version, and records trusted owners
   * that are behind as stale.
   */
  touch(index: number, opts: { fresh?: boolean } = {}): Promise<BlockEntry> {
    const e = this.blocks.get(index);
    if (trustedEntry(e) && !opts.fresh) return Promise.resolve(e);
    let p = this.reconciling.get(index);
    if (p === undefined) {
      // Learning while changes are in flight could settle below them: wait.
      const ready = e === undefined ? Promise.resolve() : this.drain(e);
      p = ready.then(() => this.reconcile(index, e)).finally(() => this.reconciling.delete(index));
      this.reconciling.set(index, p);
    }
    return p;
  }

  private async reconcile(index: number, previous: BlockEntry | undefined): Promise<BlockEntry> {
    const ref = this.refOf(index);
    for (let attempt = 0; ; attempt++) {
      const owners = ownersOf(this.ctx.ring(), ref);
      // Each owner's incarnation before it is asked: one that restarts
      // after it answered may have lost an unflushed copy it reported.
      const askedAt = new Map(owners.all.map((u) => [u, this.restartsOf(u)]));
      const metas = await this.askMeta(ref, owners.all);
      if (metas.outdated && attempt < this.ctx.settings.ringRetriesMax) {
        await this.ctx.refreshRing(metas.outdated);
        continue;
      }
      // An owner this coordinator stopped trusting for the block without
      // etcd saying so yet (its addition failed, or is queued): what learning
      // finds newer than its copy must not be returned before the record is
      // durable, or another coordinator, after a takeover, would trust that
      // owner and go back in time (seed 852: a change that failed for want
      // of a stale record in an etcd outage, read back, then lost).
      try {
        await this.stale.ensureDurable(owners.all, index);
      } catch (err) {
        rethrowAssertion(err);
        throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: an owner that missed a change to it could not be recorded stale in etcd`, { cause: err, details: { block: index } });
      }
      // Owners unsure for the block (a change no one confirmed) hold every
      // acknowledged change, maybe one more: they count in the comparison,
      // and are trusted again if they hold the newest copy.
      const unsureOnly = this.readableOwners(index, owners).filter((u) => this.stale.isUnsureOnly(u, index));
      let trusted = [...this.trustedOwners(index, owners), ...unsureOnly];
      // Every owner recorded stale (each missed something, or restarted and
      // lost what it had not flushed), and every one answered: no copy
      // anywhere is newer than the newest of theirs, so waiting cannot bring
      // anything back. Their newest copy is taken (changes none of them
      // holds were lost with them, as after a power loss; a flush that
      // counted on them keeps failing). While one does not answer, the block
      // stays unavailable: that one may hold the newest copy.
      // During a ring transition the owners not yet readable (new owners
      // of a block this coordinator has not seen moved) count too: a change
      // that reached only them leaves the newest copy there.
      const readable = this.readableOwners(index, owners);
      // Owners recorded stale whose copy was adopted as the newest (below).
      const vouched: string[] = [];
      const rescue = trusted.length === 0 && readable.length > 0 && owners.all.every((u) => metas.got.has(u));
      if (rescue) trusted = [...owners.all];
      let newest: BlockMeta | null = null;
      for (const u of trusted) {
        const m = metas.got.get(u);
        if (m === undefined || m.suspect) continue;
        if (newest === null || compareCopies(m, newest) > 0) newest = m;
      }
      let floor = previous?.floor ?? VERSION_ABSENT;
      // The newest change to the block this coordinator acknowledged.
      const acked = previous?.acked ?? VERSION_ABSENT;
      /** The block goes on from a copy at `have`: acknowledged changes past it are lost, and the floor no longer holds. */
      const goOnFrom = (have: Version): void => {
        if (have < acked) this.loseData(index, acked, have);
        floor = VERSION_ABSENT;
        if (previous !== undefined) previous.floor = VERSION_ABSENT;
      };
      const allSuspect = newest === null && trusted.length > 0 && trusted.every((u) => metas.got.get(u)?.suspect === true);
      // A rescue where some owner stopped uncleanly: its suspect copy may
      // hold changes the others missed (what reached its disk unflushed),
      // so it competes with theirs by the version it last made durable.
      const suspectInRescue = rescue && trusted.some((u) => metas.got.get(u)?.suspect === true);
      if (allSuspect && !owners.all.every((u) => metas.got.has(u))) {
        // Every trusted copy is suspect and an owner recorded stale did not
        // answer: its copy may be newer than any suspect one's last flush
        // (it missed only later, unflushed changes). Adopting without it
        // could go back in time; the block waits for it.
        throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: every trusted copy is suspect and an owner that may hold a newer one did not answer`, {
          details: { block: index, asked: owners.all, trusted },
        });
      }
      if (allSuspect || suspectInRescue) {
        // Every trusted copy is suspect: every owner stopped uncleanly (a
        // power loss of all of them). Each holds everything it was flushed
        // with; adopt the newest that passes its checksums.
        // An owner recorded stale whose copy is newer than the last
        // durable version of every suspect one holds changes they lost: it
        // missed only later ones, none of them flushed (a flush would have
        // made a suspect copy's durable version newer). It competes too
        // (seed 316: the writer crashed with a change the other owner
        // missed; its disk kept an older copy). So does one whose copy is
        // suspect itself, by the version it last made durable (seed 52648:
        // recorded stale for the whole volume only because it was down when
        // the lock was taken, it held the last acknowledged change on disk;
        // the trusted owner had lost it in a crash, and the record of that
        // died with the writer in an etcd outage).
        const suspectTop = Math.max(VERSION_ABSENT, ...trusted.map((u) => metas.got.get(u)?.version ?? VERSION_ABSENT));
        const ahead = owners.all.filter((u) => {
          const m = metas.got.get(u);
          return !trusted.includes(u) && m !== undefined && m.version > suspectTop;
        });
        // A former owner may hold a copy newer than every owner's: a change
        // sent to the old owners as well while the ring moved, taken by an
        // old one, then lost by every new one (seed 12805: the new owner
        // that took it lost power before a flush, the other was stale; the
        // old owner's copy was the only one left, and garbage collection
        // dropped it once the owners' older copies checked out). It wins.
        const aheadTop = Math.max(suspectTop, ...ahead.map((u) => metas.got.get(u)!.version));
        let adopted = await this.adoptLeftover(ref, owners, metas.got, { newerThan: aheadTop });
        adopted ??= await this.adopt(ref, [...trusted, ...ahead], metas.got);
        if (adopted?.owner != null && ahead.includes(adopted.owner)) vouched.push(adopted.owner);
        const allAnswered = owners.all.every((u) => metas.got.has(u));
        if (adopted === null && allAnswered) {
          // No trusted copy checks out (bit rot): a former owner's leftover
          // may hold exactly the newest version (garbage collection keeps
          // one until the owners' copies check out). Tried before an older
          // owner copy below, which would lose what came after it.
          adopted = await this.adoptLeftover(ref, owners, metas.got);
        }
        if (adopted === null && !rescue && allAnswered) {
          // No trusted copy checks out (bit rot on the only one trusted):
          // as in a rescue, every owner's copy competes, the stale ones too
          // (one may hold the very version that rotted).
          adopted = await this.adopt(ref, owners.all, metas.got);
        }
        if (adopted !== null) {
          newest = adopted.meta;
          this.log.warn({ block: index, version: newest.version, from: adopted.from }, 'every copy of the block was suspect or stale; adopted the newest one that checks out (unflushed changes may be lost, as after a power loss)');
          // A suspect copy's version is that of its last flush: what it
          // holds beyond it cannot be told apart from a loss.
          goOnFrom(adopted.from);
          await this.coverAdoption(index, owners, trusted, adopted.owner);
        } else if (newest !== null && newest.version < acked) {
          // A rescue where no suspect copy could be adopted (one that lost
          // the block's creation could not be dropped: its peer takes no
          // change yet) goes on with the newest copy that is not suspect.
          // What it lacks of the acknowledged changes is gone with the
          // suspect copies, as in the branch below (seed 36515: taken as
          // the newest with no loss reported, the next flush passed).
          goOnFrom(newest.version);
        }
      } else if (rescue && newest !== null && newest.version < Math.max(acked, floor)) {
        // Every owner answered and none holds what was acknowledged, or
        // what a read returned. A former owner may: seed 16773 acknowledged
        // a change early once an old owner took it while the ring moved,
        // the new owners missed it, and the ring then settled without it
        // (the anchor rule in send() now prevents that; this stays as a
        // second line); seed 42271 read a failed change from an old owner
        // while the ring moved, the new owners were both recorded stale,
        // and the block stayed unavailable while the old owner kept it.
        // Its copy wins, as in the branch above. Below what was
        // acknowledged, any newer copy loses less, and what no copy holds
        // is gone with the copies that stopped before flushing it. Below
        // only what a read returned, nothing acknowledged is lost: only a
        // copy that holds what the read returned will do, and without one
        // the block waits (below), never going back in time.
        const lost = newest.version < acked;
        const adopted = await this.adoptLeftover(ref, owners, metas.got, { newerThan: lost ? newest.version : floor - 1 });
        const have = adopted?.from ?? newest.version;
        if (adopted !== null) {
          newest = adopted.meta;
          await this.coverAdoption(index, owners, trusted, adopted.owner);
        }
        if (lost || adopted !== null) goOnFrom(have);
      }
      if (newest === null || newest.version < floor) {
        // Never back in time: owners that answered with less than this
        // coordinator already acknowledged or returned are behind.
        const behind = trusted.filter((u) => {
          const m = metas.got.get(u);
          return m !== undefined && !m.suspect && m.version < floor;
        });
        await Promise.all(behind.map((u) => this.stale.record(u, [index])));
        throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${this.volume.name}: no owner with its newest copy answered`, {
          details: { block: index, asked: owners.all, trusted },
        });
      }
      // A trusted owner that did not answer may lack the newest copy: a
      // change that failed half way, whose holder was gone before it could
      // record the owners that missed it (its lock expired). Once that copy
      // is returned, a coordinator trusting the silent owner would go back
      // in time if the copy's holders were then lost (seed 9069). So the
      // silent owners are recorded stale for the block first, durably,
      // whenever the copy could be such a change; they are caught up when
      // they answer again. A copy of a holder that let go cleanly, or of
      // this coordinator, needs none: every change of theirs that failed
      // half way was recorded... but maybe only as unsure, which a later
      // learner lifts for the owners that answer it with the newest copy
      // it sees. A silent owner unsure for the block is recorded stale
      // too: else, with the copy's holders silent in turn, a later learner
      // would trust its older copy again (seed 39315: a change no owner
      // confirmed landed on one owner, was read back, and the next writer
      // took the other owner's older copy).
      const silent = trusted.filter((u) => !metas.got.has(u));
      const unconfirmed = mayBeHalfWay(newest.version, this.lock.expiredToken, this.token) ? silent : silent.filter((u) => this.stale.isUnsureOnly(u, index));
      if (unconfirmed.length > 0) await this.stale.recordLacking(unconfirmed, index, this.volume.name);
      const e: BlockEntry = previous ?? {
        index,
        version: VERSION_ABSENT,
        committed: VERSION_ABSENT,
        inflight: 0,
        drained: null,
        state: 'absent',
        digest: null,
        floor: VERSION_ABSENT,
        acked: VERSION_ABSENT,
        holders: new Map(),
        metas: new Map(),
        unsure: false,
        pins: 0,
      };
      e.version = newest.version;
      e.committed = newest.version;
      e.state = newest.state;
      e.digest = newest.state === 'data' ? newest.digest : 0;
      // Who this coordinator knew to hold which version before: an owner
      // found holding the newest copy without being known to hold it took a
      // change whose answer was lost (or a change of an earlier holder), and
      // nothing says that copy reached its disk.
      const known = previous === undefined ? null : new Map(previous.holders);
      e.holders.clear();
      e.metas.clear();
      const behind: string[] = [];
      for (const [u, m] of metas.got) {
        e.metas.set(u, m);
        if (!m.suspect) e.holders.set(u, m.version);
        const equal = !m.suspect && compareCopies(m, newest) === 0;
        if (!equal && trusted.includes(u)) behind.push(u);
      }
      if (known !== null) this.bookLearnt(e, known, askedAt);
      // Behind without a record: a change that failed half way. They must
      // not be read for this block, and etcd must say so for other readers.
      for (const u of behind) e.holders.delete(u);
      await Promise.all(behind.map((u) => this.stale.record(u, [index])));
      // Unsure owners that hold the newest copy are trusted again (the
      // removal is fenced by our token; if etcd refuses it, other readers
      // only stay more careful). Those that did not answer stay unsure.
      if (rescue) this.log.warn({ block: index, version: newest.version, owners: owners.all }, 'every owner of the block was recorded stale and all answered: the newest copy is taken');
      const resolved = (rescue ? owners.all : [...unsureOnly, ...vouched]).filter((u) => metas.got.has(u) && !behind.includes(u) && metas.got.get(u)!.suspect !== true);
      if (resolved.length > 0) {
        await Promise.all(
          resolved.map((u) =>
            this.stale.clear(u, [index], this.token).catch((err: unknown) => {
              rethrowAssertion(err);
              this.log.debug({ err, block: index, peer: u }, 'could not clear an unsure record in etcd');
            }),
          ),
        );
        this.log.debug({ block: index, peers: resolved, version: newest.version }, 'unsure owners hold the newest copy: trusted again');
      }
      if (rescue || vouched.length > 0) e.vouched = new Set(resolved);
      else delete e.vouched;
      if (e.unsure) {
        e.unsure = false;
        e.pins--;
      }
      this.blocks.set(e);
      return e;
    }
  }

  /**
   * Adopts the best suspect copy when every trusted owner's copy is
   * suspect: the newest (by its recorded version) that passes a full
   * checksum check is confirmed in place at a fresh version of ours, so
   * that copies stay comparable by version; the others are then behind and
   * caught up from it. Copies lost outright (suspect and absent) leave the
   * block absent. Null when none can be adopted.
   */
  private async adopt(ref: BlockRef, trusted: readonly string[], got: Map<string, BlockMeta>): Promise<{ meta: BlockMeta; from: number; owner: string | null } | null> {
    const candidates = trusted.map((u) => ({ u, m: got.get(u)! })).sort((a, b) => b.m.version - a.m.version);
    const top = Math.max(0, ...candidates.map((c) => c.m.version));
    const version = this.nextVersion(top);
    for (const { u, m } of candidates) {
      if (m.state === 'absent') continue;
      const api = this.ctx.replica(u);
      if (api === null) continue;
      try {
        const checked = await withTimeout(api.verify(this.ctx.requestContext(), ref), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `verify on peer ${u}`);
        const digest = checked.state === 'data' ? checked.digest : 0;
        const ok = await withTimeout(api.confirm(this.ctx.requestContext(), ref, version, digest, { token: this.token }), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `confirm on peer ${u}`);
        if (!ok) continue;
        const adopted: BlockMeta = { state: checked.state, version, suspect: false, digest };
        got.set(u, adopted);
        this.noteChanged(ref.index);
        return { meta: adopted, from: m.version, owner: u };
      } catch (err) {
        const kind = classifyFailure(err);
        if (kind === 'fenced') throw err;
        this.log.warn({ err, block: ref.index, peer: u }, 'a suspect copy could not be adopted');
        if (kind === 'outdated') {
          // Refused for an older ring (seed 60191: the ring moved during the
          // learning, and the next candidate, older, was adopted): the copy
          // was not checked, not found bad. The ring is re-read and the
          // block waits, as for a peer that does not answer.
          const v = (err as TorusError).details?.['ringVersion'];
          await this.ctx.refreshRing(typeof v === 'number' ? v : this.ctx.ring().version + 1).catch(unlessAssertion(undefined));
        }
        if (kind === 'peer' || kind === 'outdated' || isTorusError(err, 'TORUS_ERR_STORE_BUSY')) {
          // The peer did not answer (or serves nothing for now, or could
          // not check its copy now): its copy, newer than the ones left to
          // try, may be good. Adopting an older one would go back in time
          // (seed 1216): the block waits.
          if (kind === 'peer') this.ctx.health.failed(u);
          throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${ref.index} of ${this.volume.name}: the newest copy left to adopt is on peer ${u}, which could not check it now`, {
            cause: err,
            details: { block: ref.index, peer: u },
          });
        }
      }
    }
    if (candidates.every(({ m }) => m.state === 'absent')) {
      // Nothing survived anywhere: the block's unflushed creation was lost.
      for (const { u, m } of candidates) {
        const api = this.ctx.replica(u);
        if (api === null) return null;
        const dropped = await withTimeout(api.drop(this.ctx.requestContext(), ref, m.version, { token: this.token }), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `drop on peer ${u}`).catch(unlessAssertion(false));
        if (!dropped) return null;
        got.set(u, ABSENT_META);
      }
      this.noteChanged(ref.index);
      return { meta: ABSENT_META, from: VERSION_ABSENT, owner: null };
    }
    return null;
  }

  /**
   * Every owner answered and none of their copies checks out: takes an
   * exact copy of the owners' newest one from a peer that is not an owner
   * (a leftover of an earlier ring). Exact means the same version and the
   * same digest (the same CRC table) as the newest owner copy recorded,
   * not suspect, and read whole against its CRCs; anything else could be
   * older than what was acknowledged or a change no owner took. It is
   * installed on one owner under a fresh version of ours (so versions stay
   * comparable); the other owners are then behind and caught up from it.
   * Null when no peer holds such a copy.
   *
   * With `newerThan` (every owner's copy is suspect or stale, and the
   * newest that could be adopted among them is at that version): the
   * newest copy a peer that is not an owner holds, not suspect and newer
   * than that, read whole against its CRCs (a zero copy, a trim, has none
   * to read). Every owner lost what came after their copies, so nothing
   * acknowledged is newer than it.
   */
  private async adoptLeftover(ref: BlockRef, owners: BlockOwners, got: Map<string, BlockMeta>, opts: { newerThan?: Version } = {}): Promise<{ meta: BlockMeta; from: number; owner: string | null } | null> {
    let top: BlockMeta | null = null;
    for (const u of owners.all) {
      const m = got.get(u);
      if (m !== undefined && (top === null || m.version > top.version)) top = m;
    }
    const newerThan = opts.newerThan;
    if (newerThan === undefined && (top === null || top.state !== 'data')) return null;
    // Ring members and peers that left the ring but still run (a replaced
    // or drained peer keeps its leftovers while they may be needed).
    const others = [...new Set([...ringPeers(this.ctx.ring()), ...this.ctx.livePeers()])].filter((u) => !owners.all.includes(u));
    if (others.length === 0) return null;
    const { got: theirs } = await this.askMeta(ref, others);
    const candidates = [...theirs]
      .filter(([, m]) => !m.suspect && (newerThan === undefined ? m.state === 'data' && m.version === top!.version && m.digest === top!.digest : (m.state === 'data' || m.state === 'zero') && m.version > newerThan))
      .sort(([, x], [, y]) => y.version - x.version);
    for (const [c, m] of candidates) {
      const state = m.state === 'zero' ? 'zero' : 'data';
      // A zero leftover (a trim) has no pages to check: it is taken as it
      // is (seed 77115: a trim that failed, taken only by the writer's own
      // node while it still held the block for the old ring; a read
      // returned its zeroes, and the block stayed unavailable for good).
      const data = state === 'zero' ? null : await this.readExactCopy(c, ref, m);
      if (state === 'data' && data === null) continue;
      try {
        // One fresh version for whichever owner takes it first.
        const version = this.nextVersion(Math.max(m.version, top?.version ?? VERSION_ABSENT));
        for (const u of owners.all) {
          const api = this.ctx.replica(u);
          if (api === null || !this.ctx.health.usable(u)) continue;
          try {
            if ((await this.installCopy(api, u, ref, { state, data }, version)) === 'newer') continue;
          } catch (err) {
            this.copyFailed(err, u);
            this.log.debug({ err, block: ref.index, peer: u }, 'installing a former owner\'s copy failed');
            continue;
          }
          const adopted: BlockMeta = { state, version, suspect: false, digest: state === 'data' ? m.digest : 0 };
          got.set(u, adopted);
          this.noteChanged(ref.index);
          this.log.warn({ block: ref.index, from: c, owner: u, version: formatVersion(version), was: formatVersion(m.version) }, newerThan === undefined ? 'no owner\'s copy of the block checks out: took the exact copy a former owner kept' : 'every owner\'s copy of the block is suspect or stale and older than a former owner\'s: took that one');
          return { meta: adopted, from: m.version, owner: u };
        }
        return null;
      } finally {
        if (data !== null) releaseBuffer(data);
      }
    }
    return null;
  }

  /** The whole block from peer `c` if it is still exactly `want` (version and digest) and every page checks out; null otherwise. */
  private async readExactCopy(c: string, ref: BlockRef, want: BlockMeta): Promise<Buffer | null> {
    const source = this.ctx.replica(c);
    if (source === null) return null;
    try {
      const reply = await withTimeout(source.read(this.ctx.requestContext(), ref, 0, this.blockSize), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `read on peer ${c}`);
      if (reply.meta.version === want.version && reply.meta.digest === want.digest && !reply.meta.suspect) return reply.data;
      releaseBuffer(reply.data);
    } catch (err) {
      const kind = classifyFailure(err);
      if (kind === 'fenced') throw err;
      if (kind === 'peer') this.ctx.health.failed(c);
      this.log.debug({ err, block: ref.index, peer: c }, 'reading a former owner\'s copy failed');
    }
    return null;
  }

  /** Metadata of one block from each reachable owner. `outdated` is the newest ring a refusal named. */
  async askMeta(ref: BlockRef, owners: readonly string[]): Promise<{ got: Map<string, BlockMeta>; outdated: number }> {
    const got = new Map<string, BlockMeta>();
    let outdated = 0;
    await Promise.all(
      owners.map(async (u) => {
        // DOWN is etcd's view and may lag a peer that just registered: ask
        // anyone not known to be failing; a dead one costs one timeout.
        const api = this.ctx.replica(u);
        if (api === null || this.ctx.health.isFailing(u)) return;
        try {
          const [m] = await withTimeout(api.meta(this.ctx.requestContext(), [ref]), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `meta on peer ${u}`);
          this.ctx.health.succeeded(u);
          got.set(u, m!);
        } catch (err) {
          this.log.debug({ err, peer: u, block: ref.index }, 'metadata request failed');
          const kind = classifyFailure(err);
          if (kind === 'outdated') {
            const v = (err as TorusError).details?.['ringVersion'];
            outdated = Math.max(outdated, typeof v === 'number' ? v : this.ctx.ring().version + 1);
          } else if (kind === 'peer') this.ctx.health.failed(u);
        }
      }),
    );
    return { got, outdated };
  }

  // ------------------------------------------------------------ moves (used by block-jobs.ts)

  /** Was the block moved to its new owners in the current transition (so they are trusted and must take changes)? */
  isMoved(index: number): boolean {
    const t = this.ctx.ring().transition;
    if (t === null || t.phase === 'settled') return true;
    if (this.movedIn.ringVersion !== t.startedVersion) return false;
    return this.movedIn.all || this.movedIn.blocks.has(index);
  }

  /**
   * The block gets a version no watcher has seen: a change sent, or an
   * adoption (a copy confirmed or installed under a fresh version of ours
   * when every owner's was suspect or behind). A peer left out of it under
   * a whole-volume record must not be trusted as caught up on the block.
   */
  private noteChanged(index: number): void {
    for (const w of this.changeWatches) w.add(index);
  }

  /**
   * Starts recording the blocks changes are sent to (with those in flight
   * now) or adopted at a fresh version; a move calls it before listing the
   * old owners, and stop() after, and so does a catch-up that compares
   * every block of the volume.
   */
  watchChanges(): { readonly changed: ReadonlySet<number>; stop(): void } {
    const changed = new Set<number>();
    for (const e of this.blocks.values()) if (e.inflight > 0) changed.add(e.index);
    this.changeWatches.add(changed);
    return { changed, stop: () => void this.changeWatches.delete(changed) };
  }

  markMoved(index: number, transitionVersion: number): void {
    if (this.movedIn.ringVersion !== transitionVersion) this.movedIn = { ringVersion: transitionVersion, blocks: new Set(), all: false };
    this.movedIn.blocks.add(index);
    if (this.unmovedChanges.ringVersion === transitionVersion) this.unmovedChanges.blocks.delete(index);
  }

  /** Blocks changed under transition `transitionVersion` while not known moved, and not moved since (unmovedChanges). */
  changedUnmoved(transitionVersion: number): number[] {
    return this.unmovedChanges.ringVersion === transitionVersion ? [...this.unmovedChanges.blocks] : [];
  }

  /** The whole volume moved in this transition (its move record says done). */
  markAllMoved(transitionVersion: number): void {
    assert(this.changedUnmoved(transitionVersion).length === 0, 'a volume counts as moved only once the changes sent to its old owners alone reached the new ones');
    this.movedIn = { ringVersion: transitionVersion, blocks: new Set(), all: true };
  }

  /**
   * Brings owners of a block to its newest version, under the block's order
   * alone (no change is in flight meanwhile): confirms a suspect copy whose
   * digest matches, installs a copy read from a trusted holder otherwise.
   * Returns the owners that now hold the newest version and those that
   * could not be brought there.
   */
  async syncBlock(
    index: number,
    targets: readonly string[],
    copyBudget: (bytes: number) => Promise<void>,
    onFixed?: (fixed: readonly string[]) => void,
  ): Promise<{ fixed: string[]; failed: string[]; unavailable: boolean }> {
    const release = await this.order.exclusive(index);
    let copy: { state: 'data' | 'zero'; data: Buffer | null } | null = null;
    try {
      this.checkUsable();
      const ref = this.refOf(index);
      let e: BlockEntry;
      try {
        e = await this.touch(index, { fresh: true });
      } catch (err) {
        if (isTorusError(err, 'TORUS_ERR_BLOCK_UNAVAILABLE')) return { fixed: [], failed: [...targets], unavailable: true };
        throw err;
      }
      const owners = ownersOf(this.ctx.ring(), ref);
      const sources = this.trustedHolders(e, owners).filter((u) => this.ctx.health.usable(u));
      const fixed: string[] = [];
      const failed: string[] = [];
      for (const t of targets) {
        // Nothing is sent past the lease deadline (copies take a while).
        this.checkLease();
        const api = this.ctx.replica(t);
        if (api === null || !this.ctx.health.usable(t)) {
          failed.push(t);
          continue;
        }
        const m = e.metas.get(t);
        try {
          if (m !== undefined && !m.suspect && compareCopies(m, e) === 0 && (e.state !== 'data' || e.digest === null || m.digest === e.digest)) {
            fixed.push(t);
            continue;
          }
          if (e.state === 'absent') {
            // The newest trusted state is "nothing": the target's copy is a leftover of a change that never counted.
            const dropped = await withTimeout(api.drop(this.ctx.requestContext(), ref, m?.version ?? VERSION_ABSENT, { token: this.token }), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `drop on peer ${t}`);
            (dropped ? fixed : failed).push(t);
            if (dropped) e.holders.set(t, VERSION_ABSENT);
            continue;
          }
          if (m !== undefined && m.suspect && e.digest !== null && m.digest === e.digest && m.state === e.state) {
            const ok = await withTimeout(api.confirm(this.ctx.requestContext(), ref, e.version, e.digest, { token: this.token }), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `confirm on peer ${t}`);
            if (ok) {
              e.holders.set(t, e.version);
              fixed.push(t);
              continue;
            }
          }
          if (copy === null) {
            copy = await this.readWhole(e, sources, copyBudget);
            if (copy === null) {
              onFixed?.(fixed);
              return { fixed, failed: targets.filter((x) => !fixed.includes(x)), unavailable: true };
            }
          }
          const outcome = await this.installCopy(api, t, ref, copy, e.version);
          if (outcome === 'newer') {
            if (m !== undefined && versionToken(m.version) <= this.token && !this.trustedOwners(index, owners).includes(t)) {
              // An untrusted copy ahead of every trusted one: a change an
              // older writer sent after it was fenced off (its clocks
              // stopped: a suspended VM), or one that failed half way, an
              // older writer's or this one's (seed 22496: ours reached
              // only the owner then recorded stale, and the block stayed
              // unmovable and unwritable for good). No client was told it
              // succeeded (an acknowledged change is on every trusted
              // owner or recorded missing there), and reads here may have
              // returned the trusted copy: the trusted content wins,
              // under a fresh version of ours that is newer than it.
              // Untrusted means recorded stale, or a new owner of a block
              // not yet moved: a former owner whose leftover copy outlived
              // a ring (garbage collection keeps it until the owners'
              // copies check out) and that a later ring made an owner
              // again. Left alone, its copy would stop the move for good
              // (simulation seed 2351).
              if (await this.reversion(e, copy, t, m.version)) fixed.push(t);
              else failed.push(t);
              continue;
            }
            // A copy newer than every trusted owner's: only a change that failed half way leaves one. Learn again next time.
            this.log.warn({ block: index, peer: t }, 'target holds a newer copy than the trusted owners; leaving it for the next pass');
            this.markUnsure(e);
            failed.push(t);
            continue;
          }
          e.holders.set(t, e.version);
          fixed.push(t);
        } catch (err) {
          this.copyFailed(err, t);
          this.log.debug({ err, block: index, peer: t }, 'bringing a replica up to date failed');
          failed.push(t);
        }
      }
      // Still alone on the block: a change that misses these owners from
      // now on records them again after this.
      onFixed?.(fixed);
      return { fixed, failed, unavailable: false };
    } finally {
      // The copy read is ours (a pooled buffer from the store or the peer
      // connection); replicas that still send or write it hold their own
      // reference. Left to the GC, a re-replication's 1 MiB copies piled
      // up as external memory until V8 collected: +47 MiB on the copying
      // peer; e2e-replication-growth.test.ts checks none stays in use).
      if (copy !== null && copy.data !== null) releaseBuffer(copy.data);
      release();
    }
  }

  /**
   * Gives the block's trusted content a fresh version of ours and installs
   * it on the stale `target` (whose copy, at `ahead`, is newer than the
   * trusted one) and on every trusted holder, so that versions stay
   * comparable: one version, one content. A holder that does not take it
   * is behind from now on and recorded stale. Called with the block's
   * order held (syncBlock). True when the target took it.
   */
  private async reversion(e: BlockEntry, copy: { state: 'data' | 'zero'; data: Buffer | null }, target: string, ahead: Version): Promise<boolean> {
    const ref = this.refOf(e.index);
    const holders = [...e.holders].filter(([u, v]) => v === e.committed && u !== target).map(([u]) => u);
    const owners = ownersOf(this.ctx.ring(), ref);
    // Owners neither sent the fresh version nor trusted now (a whole-volume record being narrowed, say): kept recorded after it (coverAdoption).
    const untrusted = owners.all.filter((u) => u !== target && !holders.includes(u) && this.stale.isStale(u, e.index));
    const version = this.nextVersion(Math.max(e.version, ahead));
    this.log.warn({ block: e.index, peer: target, ahead: formatVersion(ahead), trusted: formatVersion(e.committed), version: formatVersion(version) }, 'a stale copy is ahead of the trusted ones (a change that failed half way, or an older writer\'s after it was fenced off): the trusted content is installed everywhere under a fresh version');
    const took = new Set<string>();
    const behind: string[] = [];
    for (const u of [target, ...holders]) {
      this.checkLease();
      const api = this.ctx.replica(u);
      try {
        if (api === null) throw new TorusError('TORUS_ERR_RING_PEER_UNKNOWN', `peer ${u} has no known address`);
        if ((await this.installCopy(api, u, ref, copy, version)) === 'newer') throw new TorusError('TORUS_ERR_REPLICA_STALE', `peer ${u} holds a copy newer than ${formatVersion(version)}`);
        took.add(u);
      } catch (err) {
        this.copyFailed(err, u);
        this.log.debug({ err, block: e.index, peer: u }, 'installing the re-versioned copy failed');
        if (u !== target) behind.push(u);
      }
    }
    if (took.size === 0) return false;
    this.noteChanged(e.index);
    // Holders that missed the fresh version are behind it: recorded before any read trusts the new one.
    await Promise.all(behind.map((u) => this.stale.record(u, [e.index])));
    const leftOut = untrusted.filter((u) => !took.has(u) && this.requiredFor(e.index, owners, u));
    if (leftOut.length > 0) await this.stale.coverSkipped(leftOut, e.index);
    e.version = version;
    e.committed = version;
    e.digest = null;
    for (const u of behind) e.holders.delete(u);
    for (const u of took) e.holders.set(u, version);
    return took.has(target);
  }

  /** Installs a whole copy on one owner at `version`, bounded by the replica timeout. */
  private installCopy(api: ReplicaApi, u: string, ref: BlockRef, copy: { state: 'data' | 'zero'; data: Buffer | null }, version: Version): Promise<InstallOutcome> {
    return withTimeout(api.install(this.ctx.requestContext(), ref, { state: copy.state, version, data: copy.data }, { token: this.token, fua: true }), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `install on peer ${u}`);
  }

  /** A copy to `u` failed: fenced off (thrown on, for good), or the peer is failing, or this block only. */
  private copyFailed(err: unknown, u: string): void {
    const kind = classifyFailure(err);
    if (kind === 'fenced') {
      if (this.ownOldToken(err)) throw this.renewedMeanwhile(err as TorusError);
      this.fenced = err as TorusError;
      throw err;
    }
    if (kind === 'peer') this.ctx.health.failed(u);
  }

  /** The whole newest copy of a block from a trusted holder (budgeted), or null if none answers. */
  private async readWhole(e: BlockEntry, sources: readonly string[], copyBudget: (bytes: number) => Promise<void>): Promise<{ state: 'data' | 'zero'; data: Buffer | null } | null> {
    if (e.state === 'zero') return { state: 'zero', data: null };
    await copyBudget(this.blockSize);
    for (const u of sources) {
      const api = this.ctx.replica(u);
      if (api === null) continue;
      try {
        const reply = await withTimeout(api.read(this.ctx.requestContext(), this.refOf(e.index), 0, this.blockSize), this.ctx.settings.replicaTimeoutMs, this.ctx.clock, `read on peer ${u}`);
        if (reply.meta.version !== e.version) {
          if (reply.data !== null) releaseBuffer(reply.data);
          continue;
        }
        return { state: 'data', data: reply.data };
      } catch (err) {
        if (classifyFailure(err) === 'peer') this.ctx.health.failed(u);
      }
    }
    return null;
  }

  // ------------------------------------------------------------ guards

  /** Never acknowledge past the lease deadline: the lock may be someone else's by now. */
  checkLease(): void {
    // A deadline is the current session's: once the lease under our lock
    // was lost, a new session's deadline says nothing about our lock (a
    // change in flight across a freeze must not be acknowledged by it).
    if (this.ctx.sessionId() !== this.lock.session || this.ctx.clock.monotonic() > this.ctx.leaseDeadline()) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${this.volume.name}": the lease under its lock may have expired; nothing is acknowledged past it`);
    }
  }

  /** Acknowledged changes of the block are gone for good: every later flush of this open fails (docs/replication.md, "Lost changes"). */
  private loseData(index: number, acked: number, have: number): void {
    this.log.error({ block: index, acknowledged: acked, have }, 'acknowledged changes were lost with every copy that held them; every later flush of this open fails');
    this.dataLost ??= new TorusError(
      'TORUS_ERR_DATA_LOST',
      `volume "${this.volume.name}": acknowledged changes to block ${index} were lost with every copy that held them before a flush; flushes of this open fail from now on (detach and attach again)`,
      { details: { block: index } },
    );
  }

  /** The loss that fails every flush of this open, if any. */
  get lostData(): TorusError | null {
    return this.dataLost;
  }

  private checkUsable(): void {
    if (this.fenced) throw this.fenced;
    if (this.closed) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${this.volume.name}" is closed`);
    this.checkLease();
  }

  private unpin(index: number): void {
    const e = this.blocks.peek(index);
    if (e !== undefined && e.pins > 0) e.pins--;
  }

  /** A peer helper for jobs: the replica API or null. */
  replica(u: string): ReplicaApi | null {
    return this.ctx.replica(u);
  }

  get tokenForJobs(): number {
    return this.token;
  }

  /** Owners a change to this version still lacks (for tests and status). */
  lagging(index: number): string[] {
    const e = this.blocks.peek(index);
    if (e === undefined) return [];
    const owners = ownersOf(this.ctx.ring(), this.refOf(index));
    return owners.all.filter((u) => e.holders.get(u) !== e.version);
  }
}

/** For modules that compare versions without importing the table. */
export type { Version };

/** Known and not unsure: touch() returns such an entry as it is, without learning the block again. */
function trustedEntry(e: BlockEntry | undefined): e is BlockEntry {
  return e !== undefined && !e.unsure;
}

/** Write options carrying the data's page CRCs and its whole CRC combined from them (data is whole pages). */
function withPageCrcs(data: Buffer, fua: boolean): ReplicaWriteOptions {
  const pageCrcs = new Uint32Array(data.length / CRC_PAGE_BYTES);
  crc32cPages(data, CRC_PAGE_BYTES, pageCrcs);
  return { fua, crc32c: crc32cCombinePages(pageCrcs, CRC_PAGE_BYTES), pageCrcs };
}
