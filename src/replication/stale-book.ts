import type { Logger } from 'pino';
import type { MetadataService } from '../metadata/metadata-service.js';
import type { StaleRecord } from '../model/records.js';
import type { Clock } from '../util/clock.js';
import { TorusError } from '../errors/torus-error.js';
import { rethrowAssertion } from '../util/invariant.js';
import { coarsenRanges, indexesToRanges, STALE_RANGES_MAX } from '../model/ranges.js';

/**
 * A coordinator's view of its volume's stale records (docs/replication.md,
 * "Stale records"): which peers must not be read for which blocks.
 *
 * Memory is updated at once, so the coordinator stops trusting a peer the
 * moment it decides to; etcd is updated by one FIFO queue of transactions
 * (additions coalesced, group commit), and record() resolves only once the
 * addition is durable there: a degraded write waits for it before it is
 * acknowledged. Removals go through the same queue, so an addition made
 * after a removal can never be overtaken by it, and so do reads of what
 * etcd holds (refresh), so a removal on its way is never read back.
 */
interface PeerEntry {
  all: boolean;
  blocks: Set<number>;
  /** What etcd is known to hold (memory may be ahead while an addition is queued or after one failed). */
  allDurable: boolean;
  durable: Set<number>;
  /** Bumped by every addition: a catch-up pass that saw no bump may clear 'all'. */
  generation: number;
  /**
   * Narrowings of 'all' queued or on their way to etcd: from the moment one
   * is asked for, 'all' no longer covers a block changed without the peer
   * (the plan was made without it), so such a block must reach etcd itself
   * (coverSkipped) and additions do not take 'all' for durable.
   */
  narrowing: number;
  /** Blocks the peer may hold an unacknowledged change of (docs/replication.md, "Unsure blocks"); untrusted like the others. */
  unsure: Set<number>;
  unsureDurable: Set<number>;
}

type Op =
  | { kind: 'add'; peer: string; all: boolean; blocks: number[]; unsure: number[]; waiters: { resolve(): void; reject(err: unknown): void }[] }
  | { kind: 'remove'; peer: string; what: number[] | 'all'; token: number; undo: Undo; waiters: { resolve(): void; reject(err: unknown): void }[] }
  | { kind: 'narrow'; peer: string; keep: readonly number[]; token: number; waiters: { resolve(narrowed: boolean): void; reject(err: unknown): void }[] }
  | { kind: 'refresh'; waiters: { resolve(): void; reject(err: unknown): void }[] };

/** What a removal took out of memory: put back if etcd refuses it. */
interface Undo {
  all: boolean;
  blocks: number[];
  unsure: number[];
}

/** Adds the indexes to the set; true when one was new. */
function addTo(set: Set<number>, indexes: readonly number[]): boolean {
  const before = set.size;
  for (const i of indexes) set.add(i);
  return set.size !== before;
}

/** Indexes per addStale transaction; a larger batch is split. */
const ADD_BLOCKS_PER_TXN_MAX = 4096;

export class StaleBook {
  private readonly peers = new Map<string, PeerEntry>();
  private readonly queue: Op[] = [];
  private running = false;

  constructor(
    private readonly volumeId: number,
    private readonly metadata: MetadataService,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** The coordinator's current fencing token: its additions are made only while it is the newest. None for readers. */
    private readonly tokenOf: () => number | undefined = () => undefined,
  ) {}

  /** The fence condition of an addition (metadata-service.ts, addStale). */
  private fence(): { token?: number } {
    const token = this.tokenOf();
    return token === undefined ? {} : { token };
  }

  /**
   * Merges what etcd holds (records made by peers themselves, or by an
   * earlier coordinator). The read goes through the queue like every
   * change: it sees every removal made before it, and a removal made while
   * it is on its way (queued behind it) keeps its blocks out of the merge.
   * Read beside the queue, a catch-up's clear still on its way to etcd came
   * back into memory as durable: a change that then skipped the peer was
   * acknowledged with no record in etcd, and the next holder would trust
   * the peer's older copy.
   */
  refresh(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'refresh', waiters: [{ resolve, reject }] });
      this.kick();
    });
  }

  /** refresh()'s read, run by drain() in queue order. */
  private async absorbAll(): Promise<void> {
    const records = await this.metadata.getStale(this.volumeId);
    // Only ops queued behind this read are left in the queue: their
    // removals are in memory already and are about to reach etcd.
    const removing = this.queuedRemovals();
    for (const r of records) {
      const skip = removing.get(r.peer);
      if (skip !== 'all') this.absorb(r, skip);
    }
  }

  /** Per peer, what the removals still queued will take out of etcd: 'all' or their blocks. */
  private queuedRemovals(): Map<string, 'all' | Set<number>> {
    const removing = new Map<string, 'all' | Set<number>>();
    for (const op of this.queue) {
      if (op.kind !== 'remove') continue;
      const seen = removing.get(op.peer);
      if (op.what === 'all') removing.set(op.peer, 'all');
      else if (seen !== 'all') removing.set(op.peer, new Set([...(seen ?? []), ...op.what]));
    }
    return removing;
  }

  /**
   * Blocks of an addition that etcd now holds and will go on holding: not
   * those a clear queued after the addition is about to remove. Marked
   * durable, such a block let a later record() of it return at once while
   * etcd no longer named it (sim seed 8000 with --etcd-delays: a catch-up
   * cleared block 29 while its addition was on its way; the block was
   * recorded again for the next write, which was acknowledged with no
   * record in etcd for the owner that missed it).
   */
  private stillHeld(peer: string, blocks: readonly number[]): number[] {
    const removing = this.queuedRemovals().get(peer);
    if (removing === undefined) return [...blocks];
    if (removing === 'all') return [];
    return blocks.filter((i) => !removing.has(i));
  }

  private absorb(r: StaleRecord, removing: ReadonlySet<number> = new Set()): void {
    const e = this.entry(r.peer);
    if (r.all) {
      if (!e.all) e.generation++;
      e.all = true;
      // While a narrowing is in flight, etcd may be read just before it
      // commits: additions must not take 'all' there for durable.
      if (e.narrowing === 0) e.allDurable = true;
    }
    for (const [start, end] of r.ranges) {
      for (let i = start; i < end; i++) {
        if (removing.has(i)) continue;
        if (!e.blocks.has(i)) {
          e.blocks.add(i);
          e.generation++;
        }
        e.durable.add(i);
      }
    }
    for (const [start, end] of r.unsure ?? []) {
      for (let i = start; i < end; i++) {
        if (removing.has(i)) continue;
        if (!e.unsure.has(i)) {
          e.unsure.add(i);
          e.generation++;
        }
        e.unsureDurable.add(i);
      }
    }
  }

  /** Not to be read for the block: it missed changes, or may hold one no client was told succeeded. */
  isStale(peer: string, index: number): boolean {
    const e = this.peers.get(peer);
    return e !== undefined && (e.all || e.blocks.has(index) || e.unsure.has(index));
  }

  /** Whether any peer is recorded stale or unsure for the block (cheap: a few peers at most). */
  anyStale(index: number): boolean {
    for (const e of this.peers.values()) if (e.all || e.blocks.has(index) || e.unsure.has(index)) return true;
    return false;
  }

  /** Unsure for the block and nothing worse: it holds every acknowledged change, maybe one more (a coordinator may compare it). */
  isUnsureOnly(peer: string, index: number): boolean {
    const e = this.peers.get(peer);
    return e !== undefined && !e.all && !e.blocks.has(index) && e.unsure.has(index);
  }

  /**
   * What memory records for the peer and block that etcd does not hold yet
   * (an addition queued, or one that failed): the whole volume, the block,
   * the block as unsure, or null. While a narrowing is in flight, a block
   * memory names only through the whole-volume record is one etcd may not
   * hold: an earlier narrowing may have been applied with its answer lost,
   * leaving etcd a plan without the block (found by
   * test/unit/stale-book-interleavings.test.ts). It is recorded on its own,
   * queued behind the narrowing, which then keeps it.
   */
  undurable(peer: string, index: number): 'all' | 'stale' | 'unsure' | null {
    const e = this.peers.get(peer);
    if (e === undefined || e.allDurable) return null;
    if (e.all && e.narrowing === 0) return 'all';
    if ((e.all || e.blocks.has(index)) && !e.durable.has(index)) return 'stale';
    if (e.unsure.has(index) && !e.unsureDurable.has(index) && !e.durable.has(index)) return 'unsure';
    return null;
  }

  /**
   * Makes what memory records for these peers and this block durable in
   * etcd (again, after a failed addition); resolves once it is.
   */
  ensureDurable(peers: readonly string[], index: number): Promise<void> {
    return this.waitForRecords(peers, index, false) ?? Promise.resolve();
  }

  /**
   * For a change about to be acknowledged: what etcd must hold first for
   * the owners it skipped as stale, or null when it holds it already (the
   * usual case: a record durable, or no record at all). ensureDurable's
   * cases, among them a peer whose whole-volume record is being narrowed:
   * the block is recorded on its own, since the narrowing's plan was made
   * without this change, and once it landed the peer would be trusted again
   * for a block whose acknowledged change it never got (the addition queues
   * behind the narrowing and lands after it). And one more: if a narrowing
   * planned without this change has landed already (the change was in
   * flight while it did), memory no longer names the block for the peer at
   * all: it gets the block recorded on its own too (seed 60697). `peers`
   * are only the owners the change left out as stale.
   */
  coverSkipped(peers: readonly string[], index: number): Promise<void> | null {
    return this.peers.size === 0 ? null : this.waitForRecords(peers, index, true);
  }

  /** What ensureDurable and coverSkipped wait for; null when nothing (no promise made). */
  private waitForRecords(peers: readonly string[], index: number, narrowingToo: boolean): Promise<void> | null {
    let waits: Promise<void>[] | null = null;
    for (const u of peers) {
      const e = this.peers.get(u);
      if (e === undefined) continue;
      let wait: Promise<void> | null = null;
      if (narrowingToo && !this.isStale(u, index)) {
        wait = this.record(u, [index]);
      } else {
        const what = this.undurable(u, index);
        if (what === 'all') wait = this.record(u, 'all');
        else if (what === 'stale') wait = this.record(u, [index]);
        else if (what === 'unsure') wait = this.recordUnsure(u, [index]);
      }
      if (wait !== null) (waits ??= []).push(wait);
    }
    return waits === null ? null : Promise.all(waits).then(() => undefined);
  }

  /**
   * Makes every record memory holds and etcd does not (an addition queued,
   * or one that failed) durable; resolves once all are. A holder does this
   * before it lets go cleanly: the next one trusts whatever etcd does not
   * name (docs/replication.md, "Changes an expired holder left half way").
   */
  settleAll(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const [u, e] of this.peers) {
      if (e.allDurable) continue;
      if (e.all && e.narrowing === 0) {
        waits.push(this.record(u, 'all'));
        continue;
      }
      const blocks = [...e.blocks].filter((i) => !e.durable.has(i));
      if (blocks.length > 0) waits.push(this.record(u, blocks));
      const unsure = [...e.unsure].filter((i) => !e.unsureDurable.has(i) && !e.durable.has(i));
      if (unsure.length > 0) waits.push(this.recordUnsure(u, unsure));
    }
    return Promise.all(waits).then(() => undefined);
  }

  /**
   * Records owners without a block's newest copy (that did not answer, or
   * answered with an older or suspect one) stale, for a block whose newest
   * copy may be a change they missed with no record saying so
   * (mayBeHalfWay), before that copy is returned;
   * TORUS_ERR_BLOCK_UNAVAILABLE if etcd does not take the record
   * (docs/replication.md, "Changes an expired holder left half way").
   */
  async recordLacking(owners: readonly string[], index: number, volumeName: string): Promise<void> {
    try {
      await Promise.all(owners.map((u) => this.record(u, [index])));
    } catch (err) {
      rethrowAssertion(err);
      throw new TorusError('TORUS_ERR_BLOCK_UNAVAILABLE', `block ${index} of ${volumeName}: owners without its newest copy could not be recorded stale in etcd, and that copy may be a change they missed`, { cause: err, details: { block: index, owners } });
    }
    this.log.debug({ block: index, peers: owners }, 'owners without the newest copy recorded stale: it may be a change they missed');
  }

  /** Peers with anything recorded. */
  stalePeers(): string[] {
    return [...this.peers.entries()].filter(([, e]) => e.all || e.blocks.size > 0 || e.unsure.size > 0).map(([p]) => p);
  }

  /** What a peer missed (or is unsure for): 'all', or its block indexes in order. */
  missed(peer: string): 'all' | number[] {
    const e = this.peers.get(peer);
    if (e === undefined) return [];
    if (e.all) return 'all';
    return [...new Set([...e.blocks, ...e.unsure])].sort((a, b) => a - b);
  }

  generation(peer: string): number {
    return this.peers.get(peer)?.generation ?? 0;
  }

  /** Blocks recorded for any peer (moves must look at them too). */
  allRecordedBlocks(): Set<number> {
    const out = new Set<number>();
    for (const e of this.peers.values()) {
      for (const i of e.blocks) out.add(i);
      for (const i of e.unsure) out.add(i);
    }
    return out;
  }

  anyAll(): boolean {
    return [...this.peers.values()].some((e) => e.all);
  }

  /**
   * Records that `peer` missed changes to these blocks (or to the whole
   * volume). Memory at once; resolves when durable in etcd.
   */
  record(peer: string, blocks: readonly number[] | 'all'): Promise<void> {
    const e = this.entry(peer);
    if (blocks === 'all') {
      if (!e.all) {
        e.all = true;
        e.generation++;
      }
      if (e.allDurable) return Promise.resolve();
    } else {
      if (addTo(e.blocks, blocks)) e.generation++;
      // Memory may have had them while their addition is still queued or
      // failed: only what etcd holds lets the caller go on.
      if (e.allDurable || blocks.every((i) => e.durable.has(i))) return Promise.resolve();
    }
    const all = blocks === 'all';
    const list = all ? [] : blocks.filter((i) => !e.durable.has(i));
    return this.enqueueAdd(peer, all, list, []);
  }

  /**
   * Records that `peer` may hold a change to these blocks that no owner
   * confirmed and no client was told succeeded (docs/replication.md,
   * "Unsure blocks"). Memory at once; resolves when durable in etcd.
   */
  recordUnsure(peer: string, blocks: readonly number[]): Promise<void> {
    const e = this.entry(peer);
    if (addTo(e.unsure, blocks)) e.generation++;
    if (e.allDurable || blocks.every((i) => e.unsureDurable.has(i) || e.durable.has(i))) return Promise.resolve();
    return this.enqueueAdd(peer, false, [], blocks.filter((i) => !e.unsureDurable.has(i)));
  }

  private enqueueAdd(peer: string, all: boolean, list: number[], unsure: number[]): Promise<void> {
    return new Promise((resolve, reject) => {
      const last = this.queue[this.queue.length - 1];
      // Ops still queued have not started: joining the last one keeps the order.
      if (last !== undefined && last.kind === 'add' && last.peer === peer) {
        last.all ||= all;
        for (const i of list) last.blocks.push(i);
        for (const i of unsure) last.unsure.push(i);
        last.waiters.push({ resolve, reject });
      } else {
        this.queue.push({ kind: 'add', peer, all, blocks: list, unsure, waiters: [{ resolve, reject }] });
      }
      this.kick();
    });
  }

  /**
   * Clears blocks a peer has caught up on (docs/replication.md: only the
   * holder of the newest token may). Memory at once, etcd in order.
   */
  clear(peer: string, blocks: readonly number[], token: number): Promise<void> {
    const e = this.peers.get(peer);
    const undo: Undo = { all: false, blocks: [], unsure: [] };
    if (e !== undefined) {
      for (const i of blocks) {
        // Under a whole-volume record too: a narrowing that lands before
        // this removal leaves the block out of memory (stillHeld), and if
        // the removal then fails etcd still names it (found by
        // test/unit/stale-book-interleavings.test.ts).
        if (e.blocks.has(i) || e.all) undo.blocks.push(i);
        if (e.unsure.has(i)) undo.unsure.push(i);
        e.blocks.delete(i);
        e.durable.delete(i);
        e.unsure.delete(i);
        e.unsureDurable.delete(i);
      }
    }
    return this.enqueueRemove(peer, [...blocks], token, undo);
  }

  /** Clears a whole-volume record, only if nothing was added since `sinceGeneration`. */
  clearAll(peer: string, sinceGeneration: number, token: number): Promise<boolean> {
    const e = this.peers.get(peer);
    if (e === undefined) return Promise.resolve(true);
    if (e.generation !== sinceGeneration) return Promise.resolve(false);
    const undo: Undo = { all: e.all, blocks: [...e.blocks], unsure: [...e.unsure] };
    e.all = false;
    e.allDurable = false;
    e.blocks.clear();
    e.durable.clear();
    e.unsure.clear();
    e.unsureDurable.clear();
    return this.enqueueRemove(peer, 'all', token, undo).then(() => true);
  }

  /**
   * Replaces a whole-volume record with the blocks a catch-up plan found
   * behind (src/replication/catch-up-plan.ts), plus whatever was recorded
   * for the peer meanwhile; from then on each block clears on its own, so
   * the progress of one coordinator outlives it. Fenced like a removal.
   * Resolves false when there was nothing to narrow.
   */
  narrow(peer: string, keep: readonly number[], token: number): Promise<boolean> {
    const e = this.peers.get(peer);
    if (e === undefined || !e.all) return Promise.resolve(false);
    // From now on 'all' is on its way out: see PeerEntry.narrowing. Left
    // false if the narrowing fails (the next addition of 'all' or refresh
    // finds it durable again): taking it back could claim 'all' durable
    // after something else removed it meanwhile.
    e.narrowing++;
    e.allDurable = false;
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'narrow', peer, keep: [...keep], token, waiters: [{ resolve, reject }] });
      this.kick();
    });
  }

  private enqueueRemove(peer: string, what: number[] | 'all', token: number, undo: Undo): Promise<void> {
    return new Promise((resolve, reject) => {
      const last = this.queue[this.queue.length - 1];
      if (last !== undefined && last.kind === 'remove' && last.peer === peer && last.token === token && last.what !== 'all' && what !== 'all') {
        for (const i of what) last.what.push(i);
        last.undo.all ||= undo.all;
        for (const i of undo.blocks) last.undo.blocks.push(i);
        for (const i of undo.unsure) last.undo.unsure.push(i);
        last.waiters.push({ resolve, reject });
      } else {
        this.queue.push({ kind: 'remove', peer, what, token, undo, waiters: [{ resolve, reject }] });
      }
      this.kick();
    });
  }

  private entry(peer: string): PeerEntry {
    let e = this.peers.get(peer);
    if (e === undefined) {
      e = { all: false, blocks: new Set(), allDurable: false, durable: new Set(), generation: 0, narrowing: 0, unsure: new Set(), unsureDurable: new Set() };
      this.peers.set(peer, e);
    }
    return e;
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    // One turn later, so additions made in the same turn share a transaction.
    this.clock.setTimeout(() => void this.drain(), 0);
  }

  private async drain(): Promise<void> {
    try {
      for (;;) {
        const op = this.queue.shift();
        if (op === undefined) return;
        try {
          if (op.kind === 'add') {
            const e = this.entry(op.peer);
            if (op.all) {
              await this.metadata.addStale(this.volumeId, op.peer, { all: true, ...this.fence() });
              // Not while a narrowing or a clear is queued behind: it takes 'all' out again.
              if (e.narrowing === 0 && e.all && this.queuedRemovals().get(op.peer) !== 'all') e.allDurable = true;
            } else {
              const sorted = [...new Set(op.blocks)].sort((a, b) => a - b);
              for (let at = 0; at < sorted.length; at += ADD_BLOCKS_PER_TXN_MAX) {
                const part = sorted.slice(at, at + ADD_BLOCKS_PER_TXN_MAX);
                await this.metadata.addStale(this.volumeId, op.peer, { ranges: indexesToRanges(part), ...this.fence() });
                for (const i of this.stillHeld(op.peer, part)) e.durable.add(i);
              }
              const unsure = [...new Set(op.unsure)].sort((a, b) => a - b);
              for (let at = 0; at < unsure.length; at += ADD_BLOCKS_PER_TXN_MAX) {
                const part = unsure.slice(at, at + ADD_BLOCKS_PER_TXN_MAX);
                await this.metadata.addStale(this.volumeId, op.peer, { unsure: indexesToRanges(part), ...this.fence() });
                for (const i of this.stillHeld(op.peer, part)) e.unsureDurable.add(i);
              }
            }
          } else if (op.kind === 'refresh') {
            await this.absorbAll();
          } else if (op.kind === 'narrow') {
            const narrowed = await this.applyNarrow(op.peer, op.keep, op.token);
            for (const w of op.waiters) w.resolve(narrowed);
            continue;
          } else {
            const ranges = op.what === 'all' ? 'all' : indexesToRanges([...new Set(op.what)].sort((a, b) => a - b));
            if (ranges === 'all' || ranges.length > 0) await this.metadata.removeStale(this.volumeId, op.peer, ranges, op.token);
          }
          for (const w of op.waiters) w.resolve();
        } catch (err) {
          if (op.kind === 'remove') {
            // etcd still names the peer for these blocks: memory must not
            // trust it either, or this coordinator would count a copy that
            // every other one distrusts (and a catch-up there could replace
            // it with an older one: seed 180). They are put back, as not
            // known durable (what etcd holds exactly is unknown: an
            // addition may have been queued), and count as an addition.
            this.undo(op.peer, op.undo);
            this.log.warn({ err, volumeId: this.volumeId, peer: op.peer }, 'could not clear a stale record in etcd; the peer stays untrusted for those blocks');
          } else if (op.kind === 'refresh') {
            // The caller decides: a pass goes on from memory, an open fails.
          } else if (op.kind === 'narrow') {
            // The whole-volume record stands, in memory and in etcd.
            this.log.warn({ err, volumeId: this.volumeId, peer: op.peer }, 'could not narrow a stale record in etcd');
          } else {
            this.log.warn({ err, volumeId: this.volumeId, peer: op.peer }, 'could not record a stale replica in etcd; the change that needed it fails');
          }
          for (const w of op.waiters) w.reject(err);
        }
      }
    } finally {
      this.running = false;
      if (this.queue.length > 0) this.kick();
    }
  }

  private undo(peer: string, undo: Undo): void {
    if (!undo.all && undo.blocks.length === 0 && undo.unsure.length === 0) return;
    const e = this.entry(peer);
    if (undo.all) e.all = true;
    for (const i of undo.blocks) e.blocks.add(i);
    for (const i of undo.unsure) e.unsure.add(i);
    e.generation++;
  }

  private async applyNarrow(peer: string, plan: readonly number[], token: number): Promise<boolean> {
    const e = this.entry(peer);
    try {
      return await this.applyNarrowNow(e, peer, plan, token);
    } finally {
      e.narrowing--;
    }
  }

  private async applyNarrowNow(e: PeerEntry, peer: string, plan: readonly number[], token: number): Promise<boolean> {
    if (!e.all) return false;
    // Everything recorded for the peer so far is kept, and from this turn
    // on additions queue behind this op and reach etcd on their own: the
    // record there is about to stop being whole.
    const exact = new Set(plan);
    for (const i of e.blocks) exact.add(i);
    // And every unsure block, as stale (the narrowing carries no unsure
    // list of ours; stricter: a catch-up copies them). One recorded while
    // 'all' was durable never reached etcd on its own (recordUnsure), and
    // one whose addition landed while etcd held 'all' was absorbed by it
    // there (addToStale) though memory took it for durable: either way
    // etcd's unsure list lacks it, and the narrowed record would trust the
    // peer where memory does not (both found by
    // test/unit/stale-book-interleavings.test.ts).
    for (const i of e.unsure) exact.add(i);
    // A plan too scattered to list is widened over its smallest gaps: the
    // blocks in them are compared again (cheap when equal), never trusted early.
    const ranges = coarsenRanges(indexesToRanges([...exact]), STALE_RANGES_MAX);
    const keep = new Set<number>();
    for (const [start, end] of ranges) for (let i = start; i < end; i++) keep.add(i);
    await this.metadata.narrowStale(this.volumeId, peer, ranges, token);
    e.all = false;
    // Not a block cleared while the narrowing was on its way (its removal
    // queues behind and takes it out of etcd next): memory forgot it at the
    // clear, and putting it back here would leave memory naming a block
    // etcd does not, so a change skipping the peer for it would find its
    // record durable and wait for nothing (seed 1580 with --readers
    // --etcd-delays --stops: a learning trusted the peer again for a block
    // the plan kept, the narrowing landed, the clear took it out of etcd,
    // and the next write, which left the peer out, was acknowledged with
    // no record naming it).
    for (const i of this.stillHeld(peer, [...keep])) {
      e.blocks.add(i);
      e.durable.add(i);
    }
    e.generation++;
    this.log.info({ volumeId: this.volumeId, peer, blocks: keep.size }, 'narrowed a whole-volume stale record to the blocks still behind');
    return true;
  }
}
