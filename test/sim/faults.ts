import type { MemoryFault, MemoryFlakiness } from '../../src/metadata/memory-metadata.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import { ownersOf } from '../../src/replication/owners.js';
import { PAGE_BYTES } from '../../src/store/block-file.js';
import type { Random } from '../../src/util/random.js';
import type { Checker, Violation } from './checker.js';
import type { EventLog } from './event-log.js';
import type { SimTiming } from './node-under-test.js';
import type { SimCluster, SimPeer } from './sim-cluster.js';
import { NO_FAULTS } from './sim-network.js';
import type { QuietState, Workload } from './workload.js';

/**
 * The faults a seed injects, planned up front from the seed (at which
 * request each starts, how long it lasts) and applied to the cluster and
 * the workload as the run reaches them. Ring changes and orderly takeovers
 * are events, not faults: writes must go on through them.
 */
export type FaultKind =
  | 'crash'
  | 'partition'
  | 'partition-one-way'
  | 'ring-add'
  | 'ring-remove'
  | 'ring-replication'
  | 'etcd-outage'
  | 'peer-etcd-cut'
  | 'takeover-close'
  | 'takeover-lease'
  | 'freeze'
  | 'messages'
  | 'corrupt'
  | 'full-store';

export interface PlannedFault {
  /** Starts once the workload has issued this many requests. */
  atOp: number;
  readonly kind: FaultKind;
  readonly durationMs: number;
}

/** Kinds every seed has at least one of. */
export const REQUIRED_KINDS: readonly (readonly FaultKind[])[] = [['ring-add', 'ring-remove', 'ring-replication'], ['crash'], ['partition', 'partition-one-way']];

/** Random faults per seed on top of the required ones. */
const EXTRA_FAULTS_MIN = 6;
const EXTRA_FAULTS_MAX = 12;
/** A fault that cannot start now (nothing fits) is retried this many requests later. */
const RETRY_AFTER_OPS = 15;
/** Attempts before a planned fault is dropped (the required ones are never dropped). */
const ATTEMPTS_MAX = 20;

const EXTRA: readonly [FaultKind, number][] = [
  ['crash', 10],
  ['partition', 8],
  ['partition-one-way', 8],
  ['ring-add', 5],
  ['ring-remove', 5],
  ['ring-replication', 4],
  ['etcd-outage', 7],
  ['peer-etcd-cut', 5],
  ['takeover-close', 6],
  ['takeover-lease', 6],
  ['freeze', 6],
  ['messages', 8],
  ['corrupt', 5],
  ['full-store', 5],
];

/**
 * With --stops: a stop not over by then is cut short by SIGKILL, as
 * Kubernetes does after its default grace period (30 s).
 */
const STOP_GRACE_MS = 30_000;
/** --etcd-flaky: the share of a flaky window's etcd calls that fail unapplied, and that are applied with their answer lost. */
const FLAKY_FAIL_PERCENT = 10;
const FLAKY_LOSE_PERCENT = 10;

/** A flaky network while a ring change moves blocks, ms [min, max]. */
const MOVE_MESSAGE_FAULT_MS: readonly [number, number] = [3_000, 8_000];

/** How long each kind lasts, ms [min, max]. */
const DURATION_MS: Record<FaultKind, readonly [number, number]> = {
  crash: [500, 15_000],
  partition: [1_000, 12_000],
  'partition-one-way': [1_000, 12_000],
  'ring-add': [0, 0],
  'ring-remove': [0, 0],
  'ring-replication': [0, 0],
  'etcd-outage': [1_000, 10_000],
  'peer-etcd-cut': [1_000, 10_000],
  'takeover-close': [0, 0],
  'takeover-lease': [0, 0],
  freeze: [500, 10_000],
  messages: [2_000, 10_000],
  corrupt: [0, 0],
  'full-store': [2_000, 10_000],
};

export function planFaults(random: Random, opsTotal: number): PlannedFault[] {
  const plan: PlannedFault[] = [];
  const duration = (k: FaultKind): number => {
    const [lo, hi] = DURATION_MS[k];
    return lo + random.int(hi - lo + 1);
  };
  // The required ones early enough that a retry or two still lands them.
  REQUIRED_KINDS.forEach((kinds, i) => {
    const kind = kinds[random.int(kinds.length)]!;
    const atOp = Math.floor(opsTotal * (0.1 + 0.2 * i + 0.1 * random.next()));
    plan.push({ atOp, kind, durationMs: duration(kind) });
  });
  const extra = EXTRA_FAULTS_MIN + random.int(EXTRA_FAULTS_MAX - EXTRA_FAULTS_MIN + 1);
  const total = EXTRA.reduce((n, [, w]) => n + w, 0);
  for (let i = 0; i < extra; i++) {
    let r = random.int(total);
    let kind: FaultKind = 'crash';
    for (const [k, w] of EXTRA) {
      if (r < w) {
        kind = k;
        break;
      }
      r -= w;
    }
    plan.push({ atOp: Math.floor(opsTotal * (0.05 + 0.8 * random.next())), kind, durationMs: duration(kind) });
  }
  return plan.sort((a, b) => a.atOp - b.atOp);
}

interface FaultRecord {
  readonly what: string;
  /** Peers it touches, or the whole cluster (etcd, every link). */
  readonly peers: ReadonlySet<string> | 'cluster';
  endedAt: number | null;
}

export interface FaultInjectorOptions {
  readonly cluster: SimCluster;
  readonly workload: Workload;
  readonly checker: Checker;
  readonly log: EventLog;
  readonly random: Random;
  /**
   * With --suspend: picks which lease takeovers suspend the old writer's
   * clocks too (half of them). A stream of its own, so that the choice
   * leaves every other draw of a seed where it was. Null: SIGSTOP only.
   */
  readonly suspendRandom: Random | null;
  /**
   * With --stops: picks which crashes are orderly stops instead (half of
   * them; a seed's required crash stays a crash). A stream of its own, as
   * suspendRandom. Null: crashes only.
   */
  readonly stopsRandom: Random | null;
  /**
   * With --etcd-flaky: picks which etcd outages and peer cuts are flaky
   * windows instead (half of them: every call fails unapplied or loses its
   * answer, FLAKY_FAIL_PERCENT and FLAKY_LOSE_PERCENT of them, the rest go
   * through), and draws each call's fate. A stream of its own, as
   * suspendRandom. Null: outages and cuts only.
   */
  readonly flakyRandom: Random | null;
  /** A stop that did not finish within its grace period though nothing else was wrong. */
  readonly fail: (v: Violation) => void;
  readonly timing: SimTiming;
  readonly volumeBlocks: (name: string) => number;
  /** Quiet returns this long after the last fault ends: time to notice, re-register and catch up. */
  readonly graceMs: number;
}

/** Applies planned faults and knows whether any is active (the liveness checks' "quiet"). */
export class FaultInjector implements QuietState {
  private readonly pending: (PlannedFault & { attempts: number; required: boolean })[];
  private readonly active = new Map<number, FaultRecord>();
  /** Faults that ended within the grace period: their peers may still be catching up. */
  private recent: FaultRecord[] = [];
  private nextId = 1;
  private epochNow = 0;
  private lastEndAt = -Infinity;
  /** Refcounts of blocked links, so overlapping partitions heal independently. */
  private readonly linkRefs = new Map<string, number>();
  /** Peers down (crashed) or frozen by a fault now. */
  private readonly down = new Set<SimPeer>();
  /** Peers whose store is held full now (full-store). */
  private readonly full = new Set<SimPeer>();
  private readonly restores: (() => void)[] = [];
  /** What each kind did, for the seed's report ('stop': crashes made orderly stops, with --stops; 'flaky': outages and cuts made flaky windows, with --etcd-flaky). */
  readonly done = new Map<FaultKind | 'stop' | 'flaky', number>();
  /** Calls of flaky windows that failed unapplied, and that were applied with their answer lost. */
  private readonly flakyCounts = { failed: 0, lost: 0 };

  /** For the seed's report: what each kind did, and the calls flaky windows failed or answered into the void. */
  report(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.done);
    if (this.done.has('flaky')) Object.assign(out, { flakyCallsFailed: this.flakyCounts.failed, flakyCallsLost: this.flakyCounts.lost });
    return out;
  }
  private readonly cluster: SimCluster;

  constructor(
    private readonly opts: FaultInjectorOptions,
    plan: readonly PlannedFault[],
  ) {
    this.cluster = opts.cluster;
    const required = new Set<PlannedFault>();
    for (const kinds of REQUIRED_KINDS) {
      const f = plan.find((p) => kinds.includes(p.kind) && !required.has(p));
      if (f) required.add(f);
    }
    this.pending = plan.map((p) => ({ ...p, attempts: 0, required: required.has(p) }));
  }

  get epoch(): number {
    return this.epochNow;
  }

  anyActive(): boolean {
    return this.active.size > 0;
  }

  isQuiet(): boolean {
    return this.active.size === 0 && this.cluster.clock.monotonic() - this.lastEndAt >= this.opts.graceMs;
  }

  /**
   * Peers a fault touches now or touched within the grace period, or
   * 'cluster' when etcd or the whole network is (or just was) faulty.
   */
  unhealthy(): Set<string> | 'cluster' {
    const now = this.cluster.clock.monotonic();
    this.recent = this.recent.filter((f) => now - f.endedAt! < this.opts.graceMs);
    const out = new Set<string>();
    for (const f of [...this.active.values(), ...this.recent]) {
      if (f.peers === 'cluster') return 'cluster';
      for (const u of f.peers) out.add(u);
    }
    return out;
  }

  /** Planned faults not yet applied. */
  remaining(): number {
    return this.pending.length;
  }

  /** Starts every planned fault due by now. */
  async poll(opsIssued: number): Promise<void> {
    for (const f of [...this.pending]) {
      if (f.atOp > opsIssued) break;
      // Polls overlap (a start may wait on etcd): one that got here first
      // took this fault. splice(-1, 1) would drop the last planned fault
      // instead, a required one included (seed 27155 lost its partition).
      const at = this.pending.indexOf(f);
      if (at < 0) continue;
      this.pending.splice(at, 1);
      const started = await this.start(f);
      if (started !== false) {
        const kind = started === 'stop' || started === 'flaky' ? started : f.kind;
        this.done.set(kind, (this.done.get(kind) ?? 0) + 1);
        continue;
      }
      f.attempts++;
      if (f.attempts < ATTEMPTS_MAX || f.required) {
        f.atOp = opsIssued + RETRY_AFTER_OPS;
        this.pending.push(f);
        this.pending.sort((a, b) => a.atOp - b.atOp);
      }
    }
  }

  /** True when every required kind has happened. */
  requiredDone(): boolean {
    return REQUIRED_KINDS.every((kinds) => kinds.some((k) => (this.done.get(k) ?? 0) > 0));
  }

  /**
   * Starts a crashed peer again; `then` once it has started. A start that
   * fails is logged, not a crash of the whole run: the settle phase fails
   * the seed (liveness) if the peer never starts.
   */
  private restart(p: SimPeer, then?: () => void): void {
    const log = this.opts.log;
    void this.cluster.start(p).then(
      () => {
        log.add(`peer ${p.index} started`);
        then?.();
      },
      (err: unknown) => log.add(`peer ${p.index} failed to start: ${String(err)}`),
    );
  }

  /** Ends every fault now (the settle phase): heals, thaws, restarts, restores. */
  endAll(): void {
    for (const fn of this.restores.splice(0)) fn();
  }

  // ------------------------------------------------------------ applying

  /** Whether the fault started ('stop': a crash made an orderly stop; 'flaky': an outage or cut made a flaky window). */
  private async start(f: PlannedFault & { readonly required: boolean }): Promise<boolean | 'stop' | 'flaky'> {
    const c = this.cluster;
    const r = this.opts.random;
    const log = this.opts.log;
    const running = c.peers.filter((p) => p.started && c.isRunning(p));
    const pick = <T>(xs: readonly T[]): T | undefined => (xs.length === 0 ? undefined : xs[r.int(xs.length)]);
    switch (f.kind) {
      case 'crash': {
        if (this.down.size > 0) return false;
        const p = pick(running);
        if (!p) return false;
        if (!f.required && this.opts.stopsRandom !== null && this.opts.stopsRandom.int(2) === 0) {
          this.orderlyStop(p, f.durationMs);
          return 'stop';
        }
        const end = this.begin(`crash ${p.index}`, [p.uuid]);
        this.down.add(p);
        c.crash(p);
        this.opts.workload.peerDied(p);
        this.afterCrash();
        this.until(f.durationMs, () => {
          this.down.delete(p);
          log.add(`restart ${p.index}`);
          this.restart(p);
          end();
        });
        return true;
      }
      case 'partition':
      case 'partition-one-way': {
        const a = pick(running);
        if (!a) return false;
        const others = c.peers.filter((p) => p !== a);
        const alone = r.int(3) === 0;
        const targets = alone ? others : [pick(others)!];
        const links: [string, string][] = [];
        for (const b of targets) {
          links.push([a.uuid, b.uuid]);
          if (f.kind === 'partition') links.push([b.uuid, a.uuid]);
        }
        if (f.kind === 'partition-one-way' && r.int(2) === 0) links.forEach((l) => l.reverse());
        const end = this.begin(`${f.kind} ${links.map(([x, y]) => `${c.peerByUuid(x)!.index}>${c.peerByUuid(y)!.index}`).join(',')}`, links.flat());
        for (const [x, y] of links) this.blockLink(x, y);
        this.until(f.durationMs, () => {
          for (const [x, y] of links) this.healLink(x, y);
          end();
        });
        return true;
      }
      case 'etcd-outage': {
        if ([...this.active.values()].some((a) => a.what.startsWith('etcd-outage'))) return false;
        if (this.flakyWindow('etcd-outage flaky', 'cluster', f.durationMs, (flaky) => c.setEtcdFlaky(flaky))) return 'flaky';
        const mode = (['unavailable', 'hang', 'lose-replies'] as const)[r.int(3)]!;
        const end = this.begin(`etcd-outage ${mode}`, 'cluster');
        c.setEtcdFault(mode);
        this.until(f.durationMs, () => {
          c.setEtcdFault('none');
          end();
        });
        return true;
      }
      case 'peer-etcd-cut': {
        const p = pick(running);
        if (!p) return false;
        if (this.flakyWindow(`peer-etcd-cut ${p.index} flaky`, [p.uuid], f.durationMs, (flaky) => c.setPeerEtcdFlaky(p, flaky))) return 'flaky';
        const mode: MemoryFault = r.int(2) === 0 ? 'unavailable' : 'hang';
        const end = this.begin(`peer-etcd-cut ${p.index} ${mode}`, [p.uuid]);
        c.setPeerEtcdFault(p, mode);
        this.until(f.durationMs, () => {
          c.setPeerEtcdFault(p, 'none');
          end();
        });
        return true;
      }
      case 'freeze': {
        if (this.down.size > 0) return false;
        const p = pick(running);
        if (!p) return false;
        const end = this.begin(`freeze ${p.index}`, [p.uuid]);
        this.down.add(p);
        c.freeze(p);
        this.until(f.durationMs, () => {
          this.down.delete(p);
          if (p.process?.state === 'frozen') c.thaw(p);
          end();
        });
        return true;
      }
      case 'takeover-lease': {
        if (this.down.size > 0) return false;
        const writers = running.filter((p) => this.opts.workload.volumes.some((v) => v.writer?.peer === p));
        const p = pick(writers);
        if (!p) return false;
        // Half the time as a paused VM: its clocks stop, so on resume it
        // believes its lease still runs and sends what it had queued, with
        // its old token. The fences the other peers keep must stop it.
        const suspend = this.opts.suspendRandom !== null && this.opts.suspendRandom.int(2) === 0;
        const end = this.begin(`takeover-lease ${suspend ? 'suspend' : 'freeze'} ${p.index}`, [p.uuid]);
        this.down.add(p);
        c.freeze(p, { suspend });
        const taken = this.opts.workload.takeOverFrozen(p);
        // Thawed once every volume it wrote has a new writer (its lease ran out first), or at the latest after a minute.
        const startedAt = c.clock.monotonic();
        const thaw = (): void => {
          this.down.delete(p);
          if (p.process?.state === 'frozen') {
            log.add(`thaw ${p.index}`);
            c.thaw(p);
            this.later(1_000, () => this.opts.workload.closeAbandoned(p));
          }
          end();
        };
        // Half the time a replica restarts while the old writer is paused,
        // after the new writers published their tokens: a peer that forgot
        // them would take the old writer's queued changes on the thaw.
        const restartOne = r.int(2) === 0;
        const check = (): void => {
          if (p.process?.state !== 'frozen') return;
          const allNew = taken.every((v) => v.writer !== null && v.writer.peer !== p);
          if (!allNew && c.clock.monotonic() - startedAt <= 60_000) {
            this.later(500, check);
            return;
          }
          const others = c.peers.filter((x) => x !== p && x.started && c.isRunning(x));
          const q = restartOne ? pick(others) : undefined;
          if (q === undefined) {
            this.later(500 + r.int(2_500), thaw);
            return;
          }
          log.add(`crash ${q.index} while ${p.index} is paused`);
          const endQ = this.begin(`crash ${q.index}`, [q.uuid]);
          c.crash(q);
          this.opts.workload.peerDied(q);
          this.afterCrash();
          this.later(200 + r.int(800), () => {
            log.add(`restart ${q.index}`);
            endQ();
            this.restart(q, () => this.later(200 + r.int(1_800), thaw));
          });
        };
        this.restores.push(thaw);
        this.later(500, check);
        return true;
      }
      case 'takeover-close': {
        const vols = this.opts.workload.volumes.filter((v) => v.writer !== null && !v.paused);
        const v = pick(vols);
        if (!v) return false;
        log.add(`takeover-close ${v.name}`);
        v.avoid = v.writer!.peer;
        void this.opts.workload.closeWriter(v, 'takeover').then(() => this.opts.workload.ensureWriter(v));
        return true;
      }
      case 'messages':
        return this.messageFaults(f.durationMs);
      case 'corrupt': {
        const holders = running.filter((p) => p.store.list({ limit: 1 }).length > 0);
        const p = pick(holders);
        if (!p) return false;
        // Bit rot is one fault: some other peer keeps the same copy durably,
        // so a repair can come from it even if its peer crashes later. Rot
        // of the only good copy is a double fault no replication survives.
        // That peer must stay an owner: an old owner's copy is garbage once
        // the transition is over (seed 2944: the only good copy left was on
        // an old owner, both new owners had rotted unnoticed, and it was
        // dropped when the ring went stable).
        const ring = c.ringNow();
        const durableElsewhere = (ref: BlockRef): boolean => {
          const mine = p.store.inspect(ref).visible;
          if (mine === null || mine.data === null || ring === null) return false;
          const keeps = ownersOf(ring, ref).now;
          return c.peers.some((q) => {
            if (q === p || !keeps.includes(q.uuid)) return false;
            const theirs = q.store.inspect(ref).durable;
            return theirs !== null && theirs.version === mine.version && theirs.data !== null && theirs.data.equals(mine.data!);
          });
        };
        const data = p.store.list({ limit: Number.MAX_SAFE_INTEGER }).filter((b) => b.state === 'data' && !b.suspect && durableElsewhere(b.ref));
        const b = pick(data);
        if (!b) return false;
        const page = r.int(p.store.blockSize / PAGE_BYTES);
        const end = this.begin(`corrupt ${p.index} volume ${b.ref.volumeId} block ${b.ref.index} page ${page}`, [p.uuid]);
        p.store.corrupt(b.ref, page);
        this.opts.checker.corrupted(p.uuid, b.ref);
        end();
        return true;
      }
      case 'full-store': {
        // One at a time per peer: a second one would save the first one's
        // reduced capacity and leave the store full for good when it ends.
        const p = pick(running.filter((x) => !this.full.has(x)));
        if (!p) return false;
        const capacity = p.store.capacity;
        const end = this.begin(`full-store ${p.index}`, [p.uuid]);
        this.full.add(p);
        p.store.setCapacity(p.store.usage().used);
        this.until(f.durationMs, () => {
          p.store.setCapacity(capacity);
          this.full.delete(p);
          end();
        });
        return true;
      }
      case 'ring-add':
      case 'ring-remove':
      case 'ring-replication':
        return this.ringChange(f.kind);
    }
  }

  /**
   * With --etcd-flaky, half the time: an outage or cut becomes a flaky
   * window instead (its calls' fates drawn from the mode's stream), set
   * with `set` now and cleared after `durationMs`. False: it stays what
   * was planned.
   */
  private flakyWindow(what: string, targets: readonly string[] | 'cluster', durationMs: number, set: (flaky: MemoryFlakiness | null) => void): boolean {
    const r = this.opts.flakyRandom;
    if (r === null || r.int(2) !== 0) return false;
    const end = this.begin(what, targets);
    set({ random: r, failPercent: FLAKY_FAIL_PERCENT, losePercent: FLAKY_LOSE_PERCENT, counts: this.flakyCounts });
    this.until(durationMs, () => {
      set(null);
      end();
    });
    return true;
  }

  /**
   * SIGTERM, as a rolling upgrade or a node drain sends it: torusd answers
   * what its NBD clients sent and lets them go (they attach elsewhere: the
   * workload closes each writer on the peer, which flushes), its node stops
   * (locks released, lease revoked), its disk keeps everything. Restarted
   * after `durationMs`. Nothing acknowledged may be lost, so the model is
   * not widened, unless the stop overran its grace period and was killed.
   */
  private orderlyStop(p: SimPeer, durationMs: number): void {
    const c = this.cluster;
    const log = this.opts.log;
    const wl = this.opts.workload;
    const end = this.begin(`stop ${p.index}`, [p.uuid]);
    const aloneAtStart = this.active.size === 1;
    const epoch = this.epochNow;
    this.down.add(p);
    c.beginStop(p);
    const stopped = (async (): Promise<void> => {
      await Promise.all(
        wl.volumes
          .filter((v) => v.writer?.peer === p)
          .map(async (v) => {
            await wl.closeWriter(v, 'peer stopping');
            wl.ensureWriter(v);
          }),
      );
      if (!c.isAlive(p)) return;
      const startedAt = c.clock.monotonic();
      const how = await c.stop(p, STOP_GRACE_MS);
      log.add(`peer ${p.index} ${how} after ${c.clock.monotonic() - startedAt} ms`);
      // A writer whose open was under way when the stop began.
      wl.peerDied(p);
      if (how === 'killed') {
        this.afterCrash();
        if (aloneAtStart && this.epochNow === epoch) {
          this.opts.fail({ guarantee: 'liveness', message: `peer ${p.index} did not finish an orderly stop within ${STOP_GRACE_MS} ms while no other fault was active` });
        }
      }
    })();
    this.until(durationMs, () => {
      void stopped.then(() => {
        this.down.delete(p);
        log.add(`restart ${p.index}`);
        this.restart(p);
        end();
      });
    });
  }

  /** Drops, duplicates and reordering on every link for `ms`; false if such a window is already open. */
  private messageFaults(ms: number): boolean {
    if ([...this.active.values()].some((a) => a.what.startsWith('messages'))) return false;
    const r = this.opts.random;
    const faults = { dropRequest: 0.02 + 0.1 * r.next(), dropReply: 0.02 + 0.1 * r.next(), duplicate: 0.1 + 0.3 * r.next(), reorder: 0.05 + 0.2 * r.next() };
    const end = this.begin(`messages drop ${faults.dropRequest.toFixed(2)}/${faults.dropReply.toFixed(2)} dup ${faults.duplicate.toFixed(2)} reorder ${faults.reorder.toFixed(2)}`, 'cluster');
    this.cluster.network.setFaults(faults);
    this.until(ms, () => {
      this.cluster.network.setFaults(NO_FAULTS);
      end();
    });
    return true;
  }

  private async ringChange(kind: 'ring-add' | 'ring-remove' | 'ring-replication'): Promise<boolean> {
    const c = this.cluster;
    const r = this.opts.random;
    let ring;
    try {
      ring = await c.ring();
    } catch {
      return false;
    }
    const members = ring.members.map((m) => m.uuid);
    let next: string[] = members;
    let replication = ring.replication;
    const outside = c.peers.filter((p) => p.started && c.isRunning(p) && !members.includes(p.uuid));
    let what = kind as string;
    if (kind === 'ring-add' && outside.length === 0) what = 'ring-remove';
    if (what === 'ring-remove' && members.length - 1 < Math.max(replication, 2)) what = outside.length > 0 ? 'ring-add' : 'ring-replication';
    // Two members at R=2 leave no other replication to go to: grow instead.
    if (what === 'ring-replication' && replication === 2 && members.length < 3 && outside.length > 0) what = 'ring-add';
    if (what === 'ring-add') {
      const p = outside[r.int(outside.length)]!;
      next = [...members, p.uuid];
    } else if (what === 'ring-remove') {
      const drop = r.int(members.length);
      next = members.filter((_, i) => i !== drop);
    } else {
      replication = replication === 2 && members.length >= 3 ? 3 : 2;
    }
    try {
      const done = await c.changeRing(next, replication, what);
      if (done === null) {
        this.opts.log.add(`${what} not started: it would change nothing (ring ${ring.version}${ring.transition ? ' in transition' : ''})`);
        return false;
      }
      this.opts.log.add(`${what} -> ring ${done.version} members ${done.members.map((m) => c.peerByUuid(m.uuid)!.index).join(',')} R=${done.replication} min=${done.minReplicas}`);
      // A third of the ring changes move blocks over a flaky network: copies
      // dropped, duplicated and reordered while writes go on.
      if (r.int(3) === 0) this.messageFaults(MOVE_MESSAGE_FAULT_MS[0] + r.int(MOVE_MESSAGE_FAULT_MS[1] - MOVE_MESSAGE_FAULT_MS[0]));
      return true;
    } catch (err) {
      this.opts.log.add(`${what} failed ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
  }

  /** After a power loss: the model widens what may be lost (per sector, back to what some store still holds). */
  private afterCrash(): void {
    for (const v of this.opts.workload.volumes) v.model.crashed(this.opts.checker.heldValues(v.model, (ref) => this.opts.workload.currentOwners(ref)));
  }

  // ------------------------------------------------------------ bookkeeping

  /** Marks a fault active, touching `peers` (or the whole cluster); returns its end (idempotent). */
  private begin(what: string, peers: readonly string[] | 'cluster'): () => void {
    const id = this.nextId++;
    const rec: FaultRecord = { what, peers: peers === 'cluster' ? 'cluster' : new Set(peers), endedAt: null };
    this.active.set(id, rec);
    this.epochNow++;
    this.opts.log.add(`fault start ${what}`);
    return () => {
      if (rec.endedAt !== null) return;
      rec.endedAt = this.cluster.clock.monotonic();
      this.active.delete(id);
      this.recent.push(rec);
      this.lastEndAt = rec.endedAt;
      this.opts.log.add(`fault end ${what}`);
    };
  }

  /** Runs `end` after ms, or at once when the settle phase ends every fault. */
  private until(ms: number, end: () => void): void {
    let done = false;
    const run = (): void => {
      if (done) return;
      done = true;
      end();
    };
    this.restores.push(run);
    this.later(ms, run);
  }

  private later(ms: number, fn: () => void): void {
    this.cluster.clock.schedule(this.cluster.admin, ms, fn);
  }

  private blockLink(from: string, to: string): void {
    const k = `${from}>${to}`;
    this.linkRefs.set(k, (this.linkRefs.get(k) ?? 0) + 1);
    this.cluster.network.block(from, to);
  }

  private healLink(from: string, to: string): void {
    const k = `${from}>${to}`;
    const n = (this.linkRefs.get(k) ?? 1) - 1;
    if (n <= 0) {
      this.linkRefs.delete(k);
      this.cluster.network.heal(from, to);
    } else {
      this.linkRefs.set(k, n);
    }
  }
}
