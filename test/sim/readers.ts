import { isTorusError } from '../../src/errors/torus-error.js';
import type { Random } from '../../src/util/random.js';
import type { Checker, Violation } from './checker.js';
import type { EventLog } from './event-log.js';
import type { VolumeIo } from './node-under-test.js';
import { SECTOR_BYTES } from './sectors.js';
import type { SimCluster, SimPeer } from './sim-cluster.js';
import { CLIENT_TIMEOUT_MS, ClientTimeout, type QuietState, type VolumeState, type Workload } from './workload.js';

/**
 * Read-only opens while the writers run and faults strike (`--readers`):
 * a second client of a volume on any peer, as `torusblk nbd --read-only`
 * or a read-only FlexVolume mount would be, opens it, reads a few spans
 * and closes. What such a reader may see is what the writer promises other
 * processes (model.ts, readerAllows): at write level all every
 * acknowledged change, at the early levels what a FLUSH made durable, and
 * in both cases any change in flight meanwhile. It never reads garbage,
 * and its requests are answered within the kernel's NBD timeout unless its
 * own peer died or froze.
 */

/** Chance per workload tick, in percent, that a volume without a reader gets one. */
const START_PERCENT = 4;
/** Reads a reader makes before it closes, at most. */
const READS_MAX = 4;
/** Largest unaligned read, in sectors. */
const SPAN_SECTORS_MAX = 16;

export interface ReadersOptions {
  readonly cluster: SimCluster;
  readonly workload: Workload;
  readonly checker: Checker;
  readonly log: EventLog;
  readonly quiet: QuietState;
  /** A stream of its own: the readers' picks do not move the workload's. */
  readonly random: Random;
  readonly blockSize: number;
  readonly writeLevel: 'all' | 'one' | 'local';
  readonly fail: (v: Violation) => void;
}

export class SimReaders {
  /** Volumes with a reader at work: one each at a time. */
  private readonly busy = new Set<VolumeState>();
  private stopped = false;
  private nextId = 1;

  constructor(private readonly opts: ReadersOptions) {}

  /** Called on every workload tick: may start a reader on a volume that has none. */
  tick(): void {
    if (this.stopped) return;
    for (const vol of this.opts.workload.volumes) {
      if (this.busy.has(vol) || this.opts.random.int(100) >= START_PERCENT) continue;
      this.busy.add(vol);
      this.runReader(vol).then(
        () => this.busy.delete(vol),
        (err: unknown) => {
          this.busy.delete(vol);
          this.opts.fail({ guarantee: 'bug', message: `a reader of ${vol.name} failed in the harness: ${String(err)}` });
        },
      );
    }
  }

  /** No new readers or reads; those at work finish their current request and close. */
  stop(): void {
    this.stopped = true;
  }

  idle(): boolean {
    return this.busy.size === 0;
  }

  private async runReader(vol: VolumeState): Promise<void> {
    const { cluster, random } = this.opts;
    const candidates = cluster.peers.filter((p) => p.started && cluster.isRunning(p));
    if (candidates.length === 0) return;
    const peer = candidates[random.int(candidates.length)]!;
    const name = `reader ${this.nextId++} of ${vol.name} on peer ${peer.index}`;
    this.opts.log.add(`${name}: open ro`);
    const openedOn = peer.process;
    const io = await this.call(name, 'open', peer, () => cluster.open(peer, vol.name, 'ro'));
    if (io === null) return;
    // The open's process died (a restart makes a new one): the client saw its connection go.
    const gone = (): boolean => peer.process !== openedOn || !cluster.isAlive(peer);
    const reads = 1 + random.int(READS_MAX);
    for (let i = 0; i < reads && !this.stopped && !gone(); i++) {
      if (!(await this.readOnce(name, vol, peer, io))) break;
    }
    if (gone()) return;
    this.opts.log.add(`${name}: close`);
    await this.call(name, 'close', peer, () => io.close());
  }

  /** One read, checked; false when it failed (the reader then closes). */
  private async readOnce(name: string, vol: VolumeState, peer: SimPeer, io: VolumeIo): Promise<boolean> {
    const { workload, checker } = this.opts;
    const { first, count } = this.pickSpan(vol);
    const ackedVisible = this.opts.writeLevel === 'all';
    // What each sector may read as: allowed when the read starts, changes in
    // flight then, changes issued while it runs, and allowed when it ends
    // (a crash meanwhile may take unflushed changes back).
    const allowed = new Map<number, Set<number>>();
    for (let s = first; s < first + count; s++) allowed.set(s, new Set([...vol.model.readerAllows(s, ackedVisible), ...workload.inflightValues(vol, s)]));
    const stopListening = workload.onChangeIssued((v, f, c, value) => {
      if (v !== vol) return;
      for (let s = Math.max(f, first); s < Math.min(f + c, first + count); s++) allowed.get(s)!.add(value);
    });
    this.opts.log.add(`${name}: read ${first}+${count}`);
    let data: Buffer | null;
    try {
      data = await this.call(name, `read of sectors ${first}+${count}`, peer, () => io.read(first * SECTOR_BYTES, count * SECTOR_BYTES));
    } finally {
      stopListening();
    }
    if (data === null) return false;
    workload.coverage.readerReads++;
    for (let s = first; s < first + count; s++) for (const v of vol.model.readerAllows(s, ackedVisible)) allowed.get(s)!.add(v);
    const bad = checker.checkReaderRead(vol.model, first, data, (s) => allowed.get(s)!);
    if (bad) {
      const spb = this.opts.blockSize / SECTOR_BYTES;
      const blocks: [number, number][] = [];
      for (let b = Math.floor(first / spb); b * spb < first + count; b++) blocks.push([vol.id, b]);
      this.opts.fail({ ...bad, message: `${name}: ${bad.message}`, blocks });
      return false;
    }
    return true;
  }

  /**
   * Runs one request of a reader, bounded by the client's timeout; null
   * when it failed. A failure must be one a fault explains, and no request
   * goes unanswered unless the reader's own peer died, restarted or froze.
   */
  private async call<T>(name: string, what: string, peer: SimPeer, fn: () => Promise<T>): Promise<T | null> {
    const { cluster, quiet, workload } = this.opts;
    const quietAtStart = quiet.isQuiet();
    const epoch = quiet.epoch;
    const process = peer.process;
    try {
      return await workload.bounded(fn(), CLIENT_TIMEOUT_MS);
    } catch (err) {
      this.opts.log.add(`${name}: ${what} failed ${isTorusError(err) ? err.code : String(err)}`);
      const unhealthy = quiet.unhealthy();
      const ownPeerHit = peer.process !== process || !cluster.isRunning(peer) || (unhealthy !== 'cluster' && unhealthy.has(peer.uuid));
      if (err instanceof ClientTimeout) {
        if (!ownPeerHit) this.opts.fail({ guarantee: 'liveness', message: `${name}: the ${what} got no answer within ${CLIENT_TIMEOUT_MS} ms, and the reader's own peer neither died nor froze` });
        return null;
      }
      // A peer that died answers nothing: its client sees the connection go.
      if (ownPeerHit && !cluster.isAlive(peer)) return null;
      const quietThroughout = quietAtStart && quiet.epoch === epoch && quiet.isQuiet();
      const v = this.opts.checker.checkFailure(`${name}: the ${what}`, err, !quietThroughout);
      if (v) this.opts.fail(v);
      return null;
    }
  }

  /** Whole blocks half the time, otherwise any run of sectors; readers may overlap changes in flight. */
  private pickSpan(vol: VolumeState): { first: number; count: number } {
    const random = this.opts.random;
    const spb = this.opts.blockSize / SECTOR_BYTES;
    if (random.int(2) === 0) {
      const blocks = 1 + random.int(2);
      const b = random.int(vol.blocks - blocks + 1);
      return { first: b * spb, count: blocks * spb };
    }
    const count = 1 + random.int(SPAN_SECTORS_MAX);
    return { first: random.int(vol.blocks * spb - count + 1), count };
  }
}
