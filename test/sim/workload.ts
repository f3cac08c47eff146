import { createHash } from 'node:crypto';
import { isTorusError } from '../../src/errors/torus-error.js';
import { KEYS, volumeLockKey } from '../../src/metadata/keys.js';
import { decodeVolumeLockRecord } from '../../src/metadata/record-codec.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { RingRecord } from '../../src/model/records.js';
import { ownersOf, quorumOf } from '../../src/replication/owners.js';
import type { Random } from '../../src/util/random.js';
import { assert } from '../../src/util/assert.js';
import { errorText, type Checker, type Violation } from './checker.js';
import type { EventLog } from './event-log.js';
import { VolumeModel, type Candidate } from './model.js';
import type { SimTiming, VolumeIo } from './node-under-test.js';
import { SECTOR_BYTES, encodeSectors } from './sectors.js';
import type { SimCluster, SimPeer } from './sim-cluster.js';

/**
 * The client side of the simulation: NBD-like clients, one writer per
 * volume, issuing writes, reads, flushes, trims and write-zeroes with a
 * queue depth, feeding every outcome to the model and the checkers, and
 * reconnecting elsewhere when their peer dies or is taken over.
 */

/** Requests a client keeps in flight per volume (on disjoint sectors). */
const QUEUE_DEPTH_MAX = 4;
/** A request not answered within this is given up, as the kernel's NBD timeout does. */
export const CLIENT_TIMEOUT_MS = 30_000;
/** Pause between attempts to open a volume for writing elsewhere. */
const REOPEN_RETRY_MS = 500;
/** Largest unaligned request, in sectors (two blocks of 4 KiB at most). */
const SPAN_SECTORS_MAX = 16;
/** Requests aimed at a volume's hot blocks, in percent, and how many hot blocks it has. */
const HOT_SHARE_PERCENT = 40;
const HOT_BLOCKS = 6;

export type OpKind = 'write' | 'read' | 'flush' | 'trim' | 'zero';

/** The share of each kind in the workload, in percent. */
const MIX: readonly [OpKind, number][] = [
  ['write', 45],
  ['read', 30],
  ['flush', 9],
  ['trim', 8],
  ['zero', 8],
];

export interface Writer {
  readonly handle: number;
  readonly peer: SimPeer;
  readonly io: VolumeIo;
  /** The client gave up on it (its peer died or froze): its late answers are only checked for G6. */
  abandoned: boolean;
  /** A newer writer holds the volume since then: nothing this one acknowledges after it counts. */
  supersededAt: number | null;
  /** The lock it was opened under, read from etcd when the open returned; null if another holder's was there by then. */
  readonly lock: { readonly holder: string; readonly token: number; readonly lease: string | null } | null;
}

/** A writer or maintenance lock etcd handed out: a fencing token and who took it. */
interface LockGrant {
  readonly token: number;
  readonly holder: string;
  readonly kind: string;
}

export interface VolumeState {
  readonly name: string;
  readonly id: number;
  readonly blocks: number;
  readonly model: VolumeModel;
  writer: Writer | null;
  opening: boolean;
  retryPending: boolean;
  /** Since when the volume has had no usable writer (liveness). */
  writerLostAt: number | null;
  /** No new requests (a takeover or the settle phase is draining it). */
  paused: boolean;
  readonly inflight: Set<OpRun>;
  /** A frozen writer taken over: the peer that must not write it again. */
  avoid: SimPeer | null;
  /** Writers given up on peers that still run (frozen): closed when they run again. */
  readonly abandoned: Writer[];
  /** Block indexes that get a large share of the requests. */
  readonly hot: readonly number[];
}

interface OpRun {
  readonly id: number;
  readonly kind: OpKind;
  readonly vol: VolumeState;
  readonly first: number;
  readonly count: number;
  readonly writer: Writer;
  readonly issuedAt: number;
  /** Model sequence at issue (a flush covers what completed before it). */
  readonly issueSeq: number;
  /** No fault was active, nor had one ended recently, when it was issued. */
  readonly quietAtIssue: boolean;
  /** Guarantee 2 applies when it was issued: etcd and minReplicas trusted owners of each block it touches were reachable. */
  readonly reachableAtIssue: boolean;
  readonly faultEpoch: number;
  /** The volume model's crash count at issue: a crash while it was in flight may take it even once acknowledged. */
  readonly crashesAtIssue: number;
  /** The ring's version at issue when it was stable then, else null: G4's record check binds only a change that saw no ring change. */
  readonly stableRingAtIssue: number | null;
  done: boolean;
  timer: { cancel(): void } | null;
}

export interface QuietState {
  /** True when no fault is active and none ended within the grace period. */
  isQuiet(): boolean;
  /** Peers a fault touches now or did within the grace period; 'cluster' for etcd or the whole network. */
  unhealthy(): ReadonlySet<string> | 'cluster';
  /** Counts fault starts: an operation that saw it change was not quiet throughout. */
  readonly epoch: number;
  anyActive(): boolean;
}

export interface WorkloadOptions {
  readonly cluster: SimCluster;
  readonly checker: Checker;
  readonly log: EventLog;
  readonly quiet: QuietState;
  readonly timing: SimTiming;
  readonly random: Random;
  readonly volumes: readonly { name: string; id: number; blocks: number }[];
  readonly blockSize: number;
  /** The ring's minReplicas as the checkers must count it now (the smallest of recent rings). */
  readonly minReplicas: () => number;
  /** A block's owners under the rings seen lately (both placements of a transition). */
  readonly owners: (ref: BlockRef) => ReadonlySet<string>;
  /** The rings seen lately. */
  readonly rings: () => readonly RingRecord[];
  readonly fail: (v: Violation) => void;
  /** Wraps a writer's io (the broken variants hook in here). */
  readonly wrapIo?: (io: VolumeIo) => VolumeIo;
}

export class Workload {
  readonly volumes: VolumeState[];
  private nextOpId = 1;
  private nextHandle = 1;
  private seq = 0;
  private issued = 0;
  private completed = 0;
  /** How often each liveness rule was in force at a completion (a rule that never applies proves nothing). */
  readonly coverage = { quietOps: 0, reachableWritesUnderFaults: 0, failedOps: 0, readsChecked: 0, readerReads: 0 };
  private readonly cluster: SimCluster;
  private readonly random: Random;
  /** Every writer and maintenance lock taken, per volume id, seen as etcd commits it. */
  private readonly grants = new Map<number, LockGrant[]>();
  /** Told of every change issued (readers.ts: a read through another process may see it land). */
  private readonly changeListeners = new Set<(vol: VolumeState, first: number, count: number, value: number) => void>();

  constructor(private readonly opts: WorkloadOptions) {
    this.cluster = opts.cluster;
    this.random = opts.random;
    // Observed, not watched: a watch's deliveries are timers, and would change every seed's run.
    this.cluster.etcd.observe((events) => {
      for (const e of events) {
        if (e.type !== 'put' || !(e.key.startsWith(KEYS.volumeLocksPrefix) || e.key.startsWith(KEYS.volumeMaintPrefix))) continue;
        const r = decodeVolumeLockRecord(e.key, e.value!);
        let list = this.grants.get(r.volumeId);
        if (list === undefined) this.grants.set(r.volumeId, (list = []));
        list.push({ token: r.token, holder: r.holder, kind: r.kind ?? 'writer' });
        const vol = this.volumes.find((v) => v.id === r.volumeId);
        const w = vol?.writer;
        if (vol !== undefined && w != null && (r.kind ?? 'writer') === 'writer' && r.holder.endsWith(w.peer.uuid)) this.supersede(vol, r.token);
      }
    });
    const sectorsPerBlock = opts.blockSize / SECTOR_BYTES;
    this.volumes = opts.volumes.map((v) => ({
      name: v.name,
      id: v.id,
      blocks: v.blocks,
      model: new VolumeModel(v.name, v.id, v.blocks * sectorsPerBlock),
      writer: null,
      opening: false,
      retryPending: false,
      writerLostAt: null,
      paused: false,
      inflight: new Set(),
      avoid: null,
      abandoned: [],
      hot: Array.from({ length: HOT_BLOCKS }, () => this.random.int(v.blocks)),
    }));
  }

  get opsIssued(): number {
    return this.issued;
  }

  get opsCompleted(): number {
    return this.completed;
  }

  inflightCount(): number {
    return this.volumes.reduce((n, v) => n + v.inflight.size, 0);
  }

  // ------------------------------------------------------------ writers

  /** Opens a writer for every volume that has none (retrying until it works). */
  ensureWriters(): void {
    for (const v of this.volumes) this.ensureWriter(v);
  }

  ensureWriter(vol: VolumeState): void {
    if (vol.writer !== null || vol.opening || vol.retryPending) return;
    const candidates = this.cluster.peers.filter((p) => p.started && this.cluster.isRunning(p) && p !== vol.avoid);
    if (candidates.length === 0) {
      this.retryOpen(vol);
      return;
    }
    const peer = candidates[this.random.int(candidates.length)]!;
    vol.opening = true;
    this.bounded(this.cluster.open(peer, vol.name, 'rw'), CLIENT_TIMEOUT_MS).then(
      (io) => {
        vol.opening = false;
        if (!this.cluster.isAlive(peer)) {
          this.retryOpen(vol);
          return;
        }
        const handle = this.nextHandle++;
        const lock = this.lockOf(vol, peer);
        vol.writer = { handle, peer, io: this.opts.wrapIo ? this.opts.wrapIo(io) : io, abandoned: false, supersededAt: null, lock };
        vol.writerLostAt = null;
        // The new writer holds a newer lock: nothing an older one
        // acknowledges from now on counts. An open can also share this
        // peer's open of the volume whose lock went with its lease (seed
        // 18022, in an etcd outage): it holds no lock until that open takes
        // one again (the grant observed in the constructor), and the older
        // writer may still hold the volume rightly meanwhile.
        if (lock !== null) this.supersede(vol, lock.token);
        this.opts.log.add(`open ${vol.name} rw on ${peer.index} handle ${handle}`);
      },
      (err: unknown) => {
        vol.opening = false;
        const code = isTorusError(err) ? err.code : 'timeout';
        this.opts.log.add(`open ${vol.name} on ${peer.index} failed ${code}`);
        if (!isTorusError(err) && !(err instanceof ClientTimeout)) {
          this.opts.fail({ guarantee: 'bug', message: `opening ${vol.name} on peer ${peer.index} failed with a bug: ${String(err)}` });
          return;
        }
        this.retryOpen(vol);
      },
    );
  }

  /** Writers given up on whose lock is older than `token`, a lock the current writer holds: superseded from now on. */
  private supersede(vol: VolumeState, token: number): void {
    const now = this.cluster.clock.monotonic();
    for (const old of vol.abandoned) if (old.supersededAt === null && (old.lock === null || old.lock.token < token)) old.supersededAt = now;
  }

  /** The writer lock etcd holds for the volume, if a peer's holder took it. */
  private lockOf(vol: VolumeState, peer: SimPeer): Writer['lock'] {
    const entry = this.cluster.etcd.get(volumeLockKey(vol.id));
    if (entry === undefined) return null;
    const r = decodeVolumeLockRecord(volumeLockKey(vol.id), entry.value);
    return (r.kind ?? 'writer') === 'writer' && r.holder.endsWith(peer.uuid) ? { holder: r.holder, token: r.token, lease: entry.lease } : null;
  }

  /**
   * The writer's lock went with its lease (its node lost its etcd session,
   * which only a fault does) and another holder took the volume since: a
   * writer elsewhere, or a maintainer (moves and catch-ups take the volume
   * when its lock expired). Its torusd then refuses the open's changes for
   * good (volume-manager.ts, relock; README, "Fencing": the device fails
   * until it is attached again), however reachable everything is now.
   * Taking the lock back itself (the next token, same holder) does not count.
   */
  private takenOver(vol: VolumeState, w: Writer): boolean {
    const lock = w.lock;
    if (lock === null || lock.lease === null || this.cluster.etcd.hasLease(lock.lease)) return false;
    return (this.grants.get(vol.id) ?? []).some((g) => g.token > lock.token && (g.kind !== 'writer' || g.holder !== lock.holder));
  }

  /** One retry timer per volume, however many callers ask. */
  private retryOpen(vol: VolumeState): void {
    if (vol.retryPending) return;
    vol.retryPending = true;
    this.later(REOPEN_RETRY_MS, () => {
      vol.retryPending = false;
      this.ensureWriter(vol);
    });
  }

  /** The client lost its connection to a writer (its peer died or froze): what was in flight is uncertain. */
  abandonWriter(vol: VolumeState, why: string): Writer | null {
    const w = vol.writer;
    if (w === null) return null;
    w.abandoned = true;
    vol.writer = null;
    if (this.cluster.isAlive(w.peer)) vol.abandoned.push(w);
    vol.writerLostAt = this.cluster.clock.monotonic();
    for (const op of [...vol.inflight]) if (op.writer === w) this.giveUp(op, why);
    this.opts.log.add(`abandon writer ${w.handle} of ${vol.name} (${why})`);
    return w;
  }

  /** Every writer on a peer that just died. */
  peerDied(peer: SimPeer): void {
    for (const v of this.volumes) {
      if (v.writer?.peer !== peer) continue;
      // Below write level all, the writer's node dying before a FLUSH may
      // lose what it acknowledged (README, "Write levels": its lock goes
      // with it; seed 1968: the only copy was on an owner a later writer
      // did not trust, and was replaced).
      if (this.opts.timing.writeLevel !== 'all') v.model.writerLost(v.writer.handle);
      this.abandonWriter(v, 'peer died');
    }
  }

  /**
   * A takeover after a lease expiry: the writer on a frozen peer is given up
   * and a few more writes are queued to it first (the kernel's queue); they
   * must all be refused when it is thawed. A new writer is opened elsewhere.
   */
  takeOverFrozen(peer: SimPeer): VolumeState[] {
    const taken: VolumeState[] = [];
    for (const v of this.volumes) {
      const w = v.writer;
      if (w?.peer !== peer) continue;
      const queued = 1 + this.random.int(3);
      for (let i = 0; i < queued; i++) {
        const span = this.pickSpan(v, true);
        if (span !== null) this.issue(v, 'write', span, w, true);
      }
      // Below write level all, what it acknowledged and did not flush may be
      // on its own node only, which misses the new writer's token: after an
      // expiry the new writer records it stale for the whole volume, and the
      // catch-up replaces its copies with the trusted ones (seed 29 with
      // --suspend).
      if (this.opts.timing.writeLevel !== 'all') v.model.writerLost(w.handle);
      this.abandonWriter(v, 'writer frozen, taken over');
      v.avoid = peer;
      taken.push(v);
      this.ensureWriter(v);
    }
    return taken;
  }

  /**
   * The client closes its connections to writers it gave up on a peer that
   * runs again (a thawed peer): as a kernel would once the socket is gone.
   */
  closeAbandoned(peer: SimPeer): void {
    for (const v of this.volumes) {
      for (const w of v.abandoned.splice(0)) {
        if (w.peer !== peer) {
          v.abandoned.push(w);
          continue;
        }
        w.io.close().then(
          () => this.opts.log.add(`closed abandoned handle ${w.handle}`),
          (err: unknown) => this.opts.log.add(`close of abandoned handle ${w.handle} failed ${isTorusError(err) ? err.code : String(err)}`),
        );
      }
    }
  }

  /** An orderly takeover: drain, close (flushes), open elsewhere. Resolves when the old writer is closed. */
  async closeWriter(vol: VolumeState, why: string): Promise<boolean> {
    vol.paused = true;
    try {
      await this.drain(vol);
      const w = vol.writer;
      if (w === null) return false;
      const issueSeq = ++this.seq;
      this.opts.log.add(`close ${vol.name} handle ${w.handle} (${why})`);
      try {
        await this.bounded(w.io.close(), CLIENT_TIMEOUT_MS);
      } catch (err) {
        this.opts.log.add(`close ${vol.name} handle ${w.handle} failed ${isTorusError(err) ? err.code : String(err)}`);
        const quiet = this.opts.quiet.isQuiet();
        if (err instanceof ClientTimeout) {
          // A close whose writer was given up meanwhile (its peer died or
          // froze during the close) has no process left to answer it: a
          // client would see its connection break, not a hang (seed 14982).
          if (quiet && !w.abandoned) this.opts.fail({ guarantee: 'liveness', message: `closing ${vol.name} got no answer within ${CLIENT_TIMEOUT_MS} ms while no fault was active` });
        } else {
          const v = this.opts.checker.checkFailure(`close of ${vol.name}`, err, !quiet, vol.model.lostAcked(w.handle));
          if (v) this.opts.fail(v);
          // The close's flush reported the loss; the volume was let go all the same.
          if (isTorusError(err, 'TORUS_ERR_DATA_LOST') && vol.writer === w) {
            vol.writer = null;
            vol.writerLostAt = this.cluster.clock.monotonic();
            return true;
          }
        }
        if (vol.writer === w) {
          // Below write level all, a close whose flush failed still lets the
          // lock go, as if it expired when stale records could not be
          // written: the writer lost its lock before a FLUSH, so what it
          // acknowledged since its last one may be lost (README, "Write
          // levels"; seed 39321: a trim acknowledged early reached one owner
          // and the next writer's catch-up put the trusted older copy back).
          if (this.opts.timing.writeLevel !== 'all') vol.model.writerLost(w.handle);
          this.abandonWriter(vol, 'close failed');
        }
        return false;
      }
      // A close flushes: what this writer completed is durable.
      this.afterFlush(vol, w, issueSeq);
      if (vol.writer === w) {
        vol.writer = null;
        vol.writerLostAt = this.cluster.clock.monotonic();
      }
      return true;
    } finally {
      vol.paused = false;
    }
  }

  /** Waits until no request of the volume is in flight. */
  drain(vol: VolumeState): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (vol.inflight.size === 0) resolve();
        else this.later(50, check);
      };
      check();
    });
  }

  // ------------------------------------------------------------ requests

  /** Issues one request on some volume whose writer is ready, if the mix allows. Returns true if one went out. */
  issueRandom(): boolean {
    const ready = this.volumes.filter((v) => v.writer !== null && !v.paused && v.inflight.size < QUEUE_DEPTH_MAX);
    if (ready.length === 0) return false;
    const vol = ready[this.random.int(ready.length)]!;
    const kind = this.pickKind();
    if (kind === 'flush') {
      this.issue(vol, 'flush', { first: 0, count: 0 }, vol.writer!, false);
      return true;
    }
    const span = this.pickSpan(vol, kind === 'write' || kind === 'read');
    if (span === null) return false;
    this.issue(vol, kind, span, vol.writer!, false);
    return true;
  }

  private pickKind(): OpKind {
    let r = this.random.int(100);
    for (const [k, w] of MIX) {
      if (r < w) return k;
      r -= w;
    }
    return 'write';
  }

  /**
   * A sector range that overlaps nothing in flight: whole blocks half the
   * time (trims then leave tombstones), otherwise any run of sectors,
   * possibly across a block boundary. Null when the pick collides.
   */
  private pickSpan(vol: VolumeState, unalignedOk: boolean): { first: number; count: number } | null {
    const spb = this.opts.blockSize / SECTOR_BYTES;
    const sectors = vol.blocks * spb;
    let first: number;
    let count: number;
    // A share of requests goes to a few hot blocks (as a file system's
    // metadata does): changes to one block then race each other, and the
    // copies moving it, far more often than uniform picks would make them.
    const hot = this.random.int(100) < HOT_SHARE_PERCENT;
    const pickBlock = (span: number): number => (hot ? vol.hot[this.random.int(vol.hot.length)]! : this.random.int(vol.blocks - span + 1));
    if (!unalignedOk || this.random.int(2) === 0) {
      const blocks = 1 + this.random.int(2);
      const b = Math.min(pickBlock(blocks), vol.blocks - blocks);
      first = b * spb;
      count = blocks * spb;
    } else {
      count = 1 + this.random.int(SPAN_SECTORS_MAX);
      first = hot ? Math.min(pickBlock(1) * spb + this.random.int(spb), sectors - count) : this.random.int(sectors - count + 1);
    }
    for (const op of vol.inflight) {
      if (op.kind === 'flush') continue;
      if (first < op.first + op.count && op.first < first + count) return null;
    }
    return { first, count };
  }

  private issue(vol: VolumeState, kind: OpKind, span: { first: number; count: number }, w: Writer, zombie: boolean): void {
    const id = this.nextOpId++;
    this.issued++;
    const quiet = this.opts.quiet;
    const op: OpRun = {
      id,
      kind,
      vol,
      first: span.first,
      count: span.count,
      writer: w,
      issuedAt: this.cluster.clock.monotonic(),
      issueSeq: kind === 'flush' ? ++this.seq : this.seq,
      quietAtIssue: quiet.isQuiet(),
      reachableAtIssue: kind !== 'read' && kind !== 'flush' && this.ownersReachable(vol, span.first, span.count, w),
      crashesAtIssue: vol.model.crashes,
      stableRingAtIssue: this.stableRingVersion(),
      faultEpoch: quiet.epoch,
      done: false,
      timer: null,
    };
    if (kind !== 'read' && kind !== 'flush') for (const fn of this.changeListeners) fn(vol, span.first, span.count, kind === 'write' ? id : 0);
    const offset = span.first * SECTOR_BYTES;
    const length = span.count * SECTOR_BYTES;
    let p: Promise<unknown>;
    switch (kind) {
      case 'write': {
        const fua = this.random.int(10) === 0;
        p = w.io.write(offset, encodeSectors(vol.id, id, span.first, span.count), fua);
        break;
      }
      case 'trim':
        p = w.io.zero(offset, length, { punch: true, fua: false });
        break;
      case 'zero':
        p = w.io.zero(offset, length, { punch: this.random.int(2) === 0, fua: this.random.int(10) === 0 });
        break;
      case 'read':
        p = w.io.read(offset, length);
        break;
      case 'flush':
        p = w.io.flush();
        break;
    }
    this.opts.log.add(`op ${id} ${kind} ${vol.name} ${span.first}+${span.count} h${w.handle}${zombie ? ' queued-to-frozen' : ''}`);
    if (zombie) {
      // Queued to a frozen writer that is being taken over: uncertain at once,
      // and anything it acknowledges after the takeover is a violation.
      op.done = true;
      if (kind !== 'read' && kind !== 'flush') vol.model.uncertain(this.candidate(op), op.first, op.count);
      p.then(
        (value) => this.lateOutcome(op, true, value),
        () => this.lateOutcome(op, false, null),
      );
      return;
    }
    vol.inflight.add(op);
    op.timer = this.cluster.clock.schedule(this.cluster.admin, CLIENT_TIMEOUT_MS, () => this.giveUp(op, 'client timeout'));
    p.then(
      (value) => this.outcome(op, true, value),
      (err: unknown) => this.outcome(op, false, err),
    );
  }

  /**
   * Calls `fn` with the value of every change issued from now on and the
   * sectors it covers (zeroes for trims and write-zeroes); the returned
   * function stops it.
   */
  onChangeIssued(fn: (vol: VolumeState, first: number, count: number, value: number) => void): () => void {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  /** The values the changes of `vol` in flight now may give sector s (they may land on any copy before they are answered). */
  inflightValues(vol: VolumeState, s: number): number[] {
    const out: number[] = [];
    for (const op of vol.inflight) {
      if (op.kind === 'read' || op.kind === 'flush' || s < op.first || s >= op.first + op.count) continue;
      out.push(op.kind === 'write' ? op.id : 0);
    }
    return out;
  }

  private candidate(op: OpRun): Omit<Candidate, 'acked'> {
    return { op: op.id, value: op.kind === 'write' ? op.id : 0, handle: op.writer.handle, doneSeq: ++this.seq };
  }

  /** The client stops waiting: a change is uncertain from now on. */
  private giveUp(op: OpRun, why: string): void {
    if (op.done) return;
    op.done = true;
    op.timer?.cancel();
    op.vol.inflight.delete(op);
    this.completed++;
    this.opts.log.add(`op ${op.id} given up (${why})`);
    if (op.kind !== 'read' && op.kind !== 'flush') op.vol.model.uncertain(this.candidate(op), op.first, op.count);
    // Guarantee 2: a request is answered within the kernel's NBD timeout,
    // faults or not. A writer whose own peer died or froze is given up
    // before (its client sees the connection go, not a timeout); any other
    // fault (partitions, etcd outages, dead or frozen replicas, lost
    // messages) must end in an answer, an error if need be, in time.
    if (why === 'client timeout') {
      const faults = this.quietThroughout(op) ? 'while no fault was active' : 'while faults were active (a write that cannot reach minReplicas must fail within the bound)';
      this.opts.fail({ guarantee: 'liveness', message: `op ${op.id} (${op.kind} of ${op.vol.name} through peer ${op.writer.peer.index}) got no answer within ${CLIENT_TIMEOUT_MS} ms ${faults}` });
    }
  }

  private lateOutcome(op: OpRun, ok: boolean, value: unknown): void {
    this.opts.log.add(`op ${op.id} late ${ok ? 'ok' : 'failed'}`);
    if (!ok || op.kind === 'read') return;
    const at = op.writer.supersededAt;
    if (at !== null && this.cluster.clock.monotonic() >= at) {
      // A writer whose clocks stopped (a suspended VM) cannot know it was
      // fenced off, so a reply it held through the pause reaches its client
      // late: for work done before the takeover, as a delayed answer is.
      // What matters is where its changes land: any it makes after the
      // takeover on a copy nobody recorded stale fails G6 where it is
      // applied (checkApplied), and reads through the new writer check the
      // rest. At levels one and local such an acknowledgement may also
      // cover a change only its own replica took, which the new writer
      // never reads: volatile, like a write cache lost in a crash
      // (docs/replication.md, "Fencing"). A writer paused by SIGSTOP only
      // (its monotonic clock runs on) must acknowledge nothing.
      if (op.writer.peer.process?.suspendedOnce === true) {
        this.opts.log.add(`op ${op.id} (${op.kind}) acknowledged by a writer whose clocks stopped, after the takeover`);
        return;
      }
      this.opts.fail({
        guarantee: 'G6',
        message: `op ${op.id} (${op.kind} of ${op.vol.name}) was acknowledged by writer ${op.writer.handle} on peer ${op.writer.peer.index} after a newer writer took over`,
      });
    }
    void value;
  }

  private outcome(op: OpRun, ok: boolean, value: unknown): void {
    if (op.done) {
      this.lateOutcome(op, ok, value);
      return;
    }
    op.done = true;
    op.timer?.cancel();
    op.vol.inflight.delete(op);
    this.completed++;
    const now = this.cluster.clock.monotonic();
    const vol = op.vol;
    const fail = this.opts.fail;
    const checker = this.opts.checker;
    // Guarantee 2: with etcd and minReplicas trusted owners of every block reachable
    // (before and after), a write succeeds, within the bound.
    // A flush that reports changes a crash took (the model agrees) is right to fail.
    const lostAcked = vol.model.lostAcked(op.writer.handle);
    const reportsLoss = !ok && isTorusError(value, 'TORUS_ERR_DATA_LOST') && lostAcked;
    // Fenced for good after a fault took its lease and another holder the volume (seed 5413).
    const fencedForGood = !ok && isTorusError(value, 'TORUS_ERR_VOLUME_FENCED') && this.takenOver(vol, op.writer);
    const mustGoOn = !reportsLoss && !fencedForGood && op.reachableAtIssue && this.ownersReachable(vol, op.first, op.count, op.writer);
    if (this.quietThroughout(op)) this.coverage.quietOps++;
    if (!ok) this.coverage.failedOps++;
    if (ok && op.kind === 'read') this.coverage.readsChecked++;
    if (mustGoOn && !this.quietThroughout(op)) {
      this.coverage.reachableWritesUnderFaults++;
      const latency = now - op.issuedAt;
      if (!ok) {
        fail({
          guarantee: 'liveness',
          message: `op ${op.id} (${op.kind} of ${vol.name} through peer ${op.writer.peer.index}) failed with ${errorText(value)} although etcd and minReplicas trusted owners of each block it touches were reachable (guarantee 2)`,
          blocks: this.blocksOf(op),
        });
        return;
      }
      if (latency > this.writeBoundMs()) {
        fail({ guarantee: 'liveness', message: `op ${op.id} (${op.kind} of ${vol.name}) took ${latency.toFixed(0)} ms although etcd and minReplicas trusted owners were reachable; the bound is ${this.writeBoundMs()} ms (guarantee 2)`, blocks: this.blocksOf(op) });
        return;
      }
    }
    if (!ok) {
      const code = isTorusError(value) ? value.code : String(value);
      this.opts.log.add(`op ${op.id} failed ${code}`);
      if (op.kind !== 'read' && op.kind !== 'flush') vol.model.uncertain(this.candidate(op), op.first, op.count);
      // Fenced for good is the lasting effect of a fault that may have
      // ended: the first request after it, faults over, meets it (seed 21919).
      const v = checker.checkFailure(`op ${op.id} (${op.kind} of ${vol.name} sectors ${op.first}+${op.count} through peer ${op.writer.peer.index})`, value, !this.quietThroughout(op) || fencedForGood, lostAcked);
      if (v) fail({ ...v, blocks: this.blocksOf(op) });
      // Acknowledged changes were lost: every flush of this attachment fails
      // from now on, so the client detaches and attaches again, as a
      // filesystem would be remounted after the I/O error.
      if (reportsLoss && vol.writer === op.writer && !vol.paused) void this.closeWriter(vol, 'data lost: attach again').then(() => this.ensureWriter(vol));
      // Fenced for good (another holder took the volume while this writer's
      // lease was gone: volume-manager.ts, relock): its device fails until it
      // is detached and attached again, which is what a client does.
      if (isTorusError(value, 'TORUS_ERR_VOLUME_FENCED') && vol.writer === op.writer) {
        // Below write level all, what it acknowledged and did not flush may
        // be on its own node only, and the holder that took over need not
        // trust that copy (README, "Write levels": a writer that loses its
        // lock before the FLUSH; seed 553, its node cut off from etcd).
        if (this.opts.timing.writeLevel !== 'all') vol.model.writerLost(op.writer.handle);
        this.abandonWriter(vol, 'fenced for good: attach again');
      }
      return;
    }
    const latency = now - op.issuedAt;
    if (op.kind !== 'read' && op.kind !== 'flush' && this.quietThroughout(op) && latency > this.writeBoundMs()) {
      fail({ guarantee: 'liveness', message: `op ${op.id} (${op.kind} of ${vol.name}) took ${latency.toFixed(0)} ms with no fault active; the bound is ${this.writeBoundMs()} ms` });
    }
    if (op.writer.supersededAt !== null && now >= op.writer.supersededAt) {
      fail({ guarantee: 'G6', message: `op ${op.id} (${op.kind} of ${vol.name}) was acknowledged by writer ${op.writer.handle} after a newer writer took over` });
      return;
    }
    switch (op.kind) {
      case 'read': {
        const data = value as Buffer;
        this.opts.log.add(`op ${op.id} read ${digest(data)}`);
        const v = checker.checkRead(vol.model, op.first, data);
        if (v) fail({ ...v, message: `op ${op.id} (read through peer ${op.writer.peer.index}): ${v.message}`, blocks: this.blocksOf(op) });
        // What it read may have been read before a crash that struck while
        // it was in flight: seen, it narrowed the sectors to it, but what no
        // store holds now is as lost as after that crash, as for a change
        // acknowledged across one (seed 73608: a read returned an
        // acknowledged, unflushed change the crash then took from its only
        // copy; the writer's flushes reported the loss, and the next
        // writer's read of the older copy was judged back in time).
        else if (vol.model.crashes !== op.crashesAtIssue) vol.model.crashed(checker.heldValues(vol.model, (ref) => this.currentOwners(ref)), op.first, op.count);
        return;
      }
      case 'flush':
        this.opts.log.add(`op ${op.id} ok`);
        this.afterFlush(vol, op.writer, op.issueSeq);
        return;
      default: {
        this.opts.log.add(`op ${op.id} ok`);
        const c = this.candidate(op);
        vol.model.acked(c, op.first, op.count);
        // A peer that took it may have lost it in a crash before the
        // acknowledgement came (the coordinator learns of a restart only
        // when the new incarnation answers): what no store holds now is
        // as lost as after that crash.
        const crashedSince = vol.model.crashes !== op.crashesAtIssue;
        if (crashedSince) vol.model.crashed(checker.heldValues(vol.model, (ref) => this.currentOwners(ref)), op.first, op.count);
        const min = this.opts.timing.writeLevel === 'all' ? this.opts.minReplicas() : 1;
        const v = checker.checkWriteAck(vol.model, { ...c, acked: true }, op.first, op.count, min, this.opts.owners);
        // Copies that died with a peer before the answer reached the
        // coordinator (their connection reset still on the wire) are lost
        // like copies that die just after it: allowed, as long as every
        // later flush of this writer fails (the model now says so).
        if (v && crashedSince && vol.model.lostAcked(op.writer.handle)) this.opts.log.add(`op ${op.id}: acknowledged while a crash had taken copies of it (${v.message}); its writer's flushes must fail`);
        else if (v) fail({ ...v, message: `op ${op.id}: ${v.message}`, blocks: this.blocksOf(op) });
        else if (this.opts.timing.writeLevel === 'all' && !crashedSince && op.stableRingAtIssue !== null && op.stableRingAtIssue === this.stableRingVersion()) {
          const ring = this.cluster.ringNow()!;
          const missed = checker.checkMissedRecorded(vol.model, { ...c, acked: true }, op.first, op.count, (ref) => ownersOf(ring, ref).now, (u, index) => this.cluster.isRecordedMissed(vol.id, u, index));
          if (missed) fail({ ...missed, message: `op ${op.id}: ${missed.message}`, blocks: this.blocksOf(op) });
        }
      }
    }
  }

  /** The ring's version in etcd now if it is stable (no transition), else null. */
  private stableRingVersion(): number | null {
    const ring = this.cluster.ringNow();
    return ring === null || ring.transition != null ? null : ring.version;
  }

  private blocksOf(op: OpRun): [number, number][] {
    const spb = this.opts.blockSize / SECTOR_BYTES;
    const out: [number, number][] = [];
    for (let b = Math.floor(op.first / spb); b * spb < op.first + op.count; b++) out.push([op.vol.id, b]);
    return out;
  }

  private afterFlush(vol: VolumeState, w: Writer, issueSeq: number): void {
    const moved = vol.model.flushed(w.handle, issueSeq);
    if (moved.size === 0) return;
    // Changes in flight now were issued after everything on the model's
    // timelines completed (changes to a sector are never in flight
    // together), so a durable copy may already hold one of them.
    const pending = (s: number, value: number): boolean => {
      for (const op of vol.inflight) {
        if (op.kind === 'read' || op.kind === 'flush' || s < op.first || s >= op.first + op.count) continue;
        if ((op.kind === 'write' ? op.id : 0) === value) return true;
      }
      return false;
    };
    const v = this.opts.checker.checkFlushAck(vol.model, moved, this.opts.minReplicas(), pending);
    if (v) this.opts.fail(v);
  }

  /** Liveness bound on a write with no fault: one replica timeout plus one etcd call timeout. */
  /**
   * The peers whose copies of a block count as surviving a crash: its
   * owners under the newest ring seen, both placements (and carried ones)
   * while it moves, the new placement alone once the move has settled.
   * From then on the old owners' copies are leftovers the ring is about to
   * drop (docs/replication.md, "Ring transitions"): one holding a newer,
   * unflushed change than the new owners kept through their crash keeps
   * nothing alive (seed 2705).
   */
  currentOwners(ref: BlockRef): ReadonlySet<string> {
    const rings = this.opts.rings();
    const ring = rings[rings.length - 1];
    if (ring === undefined) return this.opts.owners(ref);
    const o = ownersOf(ring, ref);
    return new Set(o.phase === 'moving' ? o.all : o.now);
  }

  writeBoundMs(): number {
    return this.opts.timing.replicaTimeoutMs + this.opts.timing.etcdCallTimeoutMs;
  }

  /**
   * Whether guarantee 2 binds a change now: no fault touches etcd, the
   * network as a whole, or the writer's peer (nor did within the grace
   * period), and every block it touches has, under each ring seen lately,
   * at least minReplicas owners of each placement that are running, touched
   * by no fault, not recorded stale for the block (an owner that missed
   * writes does not count towards a write's quorum) and holding its newest
   * copy: when the only copy of the newest version went down with a peer
   * (or was lost unflushed), the block is unavailable by guarantee 4, not
   * writable by guarantee 2.
   */
  private ownersReachable(vol: VolumeState, first: number, count: number, w: Writer): boolean {
    const bad = this.opts.quiet.unhealthy();
    if (bad === 'cluster' || bad.has(w.peer.uuid) || !this.cluster.isRunning(w.peer)) return false;
    const spb = this.opts.blockSize / SECTOR_BYTES;
    const usable = (u: string, index: number): boolean => {
      const p = this.cluster.peerByUuid(u);
      return p !== undefined && p.started && this.cluster.isRunning(p) && !bad.has(u) && !this.cluster.isRecordedStale(vol.id, u, index);
    };
    for (let b = Math.floor(first / spb); b * spb < first + count; b++) {
      const ref = { volumeId: vol.id, generation: 1, index: b };
      // The newest version any disk holds (dead peers' included).
      let newest = -1;
      for (const p of this.cluster.peers) newest = Math.max(newest, p.store.meta(ref).version);
      const current = (u: string): boolean => {
        const m = this.cluster.peerByUuid(u)!.store.meta(ref);
        return !m.suspect && m.version === newest;
      };
      let currentOwners = 0;
      for (const ring of this.opts.rings()) {
        const o = ownersOf(ring, ref);
        for (const set of o.old === null ? [o.now] : [o.old, o.now]) {
          if (set.filter((u) => usable(u, b)).length < quorumOf(ring, set.length)) return false;
          currentOwners += set.filter((u) => usable(u, b) && current(u)).length;
        }
      }
      if (newest >= 0 && currentOwners === 0) return false;
      // A suspect copy (its peer stopped uncleanly) with another owner out of
      // reach: torusd waits for that owner when every copy it trusts is
      // suspect, because the absent one may hold changes the suspect copies
      // lost (docs/replication.md, "A restarted owner"; seeds 19399, 22201).
      const now = [...this.currentOwners(ref)];
      const reachable = (u: string): boolean => {
        const p = this.cluster.peerByUuid(u);
        return p !== undefined && p.started && this.cluster.isRunning(p) && !bad.has(u);
      };
      if (now.some((u) => this.cluster.peerByUuid(u)?.store.meta(ref).suspect === true) && !now.every(reachable)) return false;
    }
    return true;
  }

  private quietThroughout(op: OpRun): boolean {
    const q = this.opts.quiet;
    return op.quietAtIssue && q.epoch === op.faultEpoch && q.isQuiet();
  }

  // ------------------------------------------------------------ plumbing

  private later(ms: number, fn: () => void): void {
    this.cluster.clock.schedule(this.cluster.admin, ms, fn);
  }

  /** A promise that rejects with ClientTimeout after `ms` of virtual time. */
  bounded<T>(p: Promise<T>, ms: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const t = this.cluster.clock.schedule(this.cluster.admin, ms, () => reject(new ClientTimeout(ms)));
      p.then(
        (v) => {
          t.cancel();
          resolve(v);
        },
        (e: unknown) => {
          t.cancel();
          reject(e);
        },
      );
    });
  }

  /** Every volume's model, by name. */
  model(name: string): VolumeModel {
    const v = this.volumes.find((x) => x.name === name);
    assert(v !== undefined, `volume ${name} is in the workload`);
    return v.model;
  }
}

export class ClientTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'ClientTimeout';
  }
}

function digest(b: Buffer): string {
  return createHash('sha1').update(b).digest('hex').slice(0, 10);
}
