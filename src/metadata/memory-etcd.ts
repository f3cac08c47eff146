import { TorusError } from '../errors/torus-error.js';
import type { Clock } from '../util/clock.js';

/**
 * The in-memory stand-in for an etcd server behind MemoryMetadata: keys with
 * revisions, leases that expire on an injected clock, a bounded event
 * history with compaction, and watches. Every change happens in one
 * synchronous step, so a batch of operations is a transaction.
 *
 * Several MemoryMetadata clients may share one MemoryEtcd, each with its own
 * faults (a partition between one peer and etcd), as peers share one etcd.
 *
 * Watch delivery is deterministic: events go into one queue, in revision
 * order across all watches, and are handed over by the clock's
 * setTimeout(fn, 0), never by real timers or setImmediate, so a simulation
 * on a virtual clock sees them at a well-defined point (its next timer
 * step) and in the same order on every run. Events a callback causes are
 * delivered at the next step, not nested in the current one.
 */

export interface KvEntry {
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  /** Puts since creation (1 for a new key), as etcd counts them. */
  readonly version: number;
  readonly lease: string | null;
}

export interface KvEvent {
  readonly type: 'put' | 'delete';
  readonly key: string;
  /** The new value; null for a delete. */
  readonly value: string | null;
  readonly revision: number;
}

export type KvOp =
  | { readonly type: 'put'; readonly key: string; readonly value: string; readonly lease?: string | null }
  | { readonly type: 'delete'; readonly key: string }
  | { readonly type: 'deletePrefix'; readonly prefix: string };

export interface MemoryEtcdOptions {
  readonly clock: Clock;
  /** Events kept for watches that start in the past; older ones are compacted away, as etcd's auto-compaction would. */
  readonly historyEventsMax?: number;
}

export const HISTORY_EVENTS_MAX_DEFAULT = 10_000;

interface Lease {
  readonly id: string;
  readonly ttlMs: number;
  expiresAt: number; // monotonic ms
  timer: { cancel(): void } | undefined;
  readonly onGone: Set<(why: string) => void>;
}

interface ServerWatch {
  readonly prefix: string;
  readonly exact: boolean;
  readonly onEvents: (events: KvEvent[]) => void;
  readonly onCompacted: () => void;
  live: boolean;
}

/** One hand-over: events for a watch, or the news that its history is gone. */
type Delivery = { readonly watch: ServerWatch; readonly events: KvEvent[] } | { readonly watch: ServerWatch; readonly compacted: true };

function matches(w: { prefix: string; exact: boolean }, key: string): boolean {
  return w.exact ? key === w.prefix : key.startsWith(w.prefix);
}

export class MemoryEtcd {
  private readonly clock: Clock;
  private readonly historyEventsMax: number;
  private readonly kv = new Map<string, KvEntry>();
  private rev = 1; // a fresh etcd is at revision 1
  private history: KvEvent[] = [];
  /** Watches may not start at or below this revision. */
  private compactedRevision = 0;
  private readonly leases = new Map<string, Lease>();
  private readonly watches = new Set<ServerWatch>();
  private readonly observers = new Set<(events: readonly KvEvent[]) => void>();
  private deliveries: Delivery[] = [];
  private deliveryScheduled = false;
  private nextLeaseId = 7_000_000_001n;

  constructor(opts: MemoryEtcdOptions) {
    this.clock = opts.clock;
    this.historyEventsMax = opts.historyEventsMax ?? HISTORY_EVENTS_MAX_DEFAULT;
  }

  revision(): number {
    this.expireDue();
    return this.rev;
  }

  get(key: string): KvEntry | undefined {
    this.expireDue();
    return this.kv.get(key);
  }

  /** Keys under `prefix`, in key order, as etcd lists them. */
  range(prefix: string): { key: string; entry: KvEntry }[] {
    this.expireDue();
    const out: { key: string; entry: KvEntry }[] = [];
    for (const [key, entry] of this.kv) if (key.startsWith(prefix)) out.push({ key, entry });
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /**
   * Applies `ops` atomically at one new revision (none when nothing
   * changed) and returns the revision after them. A put under a lease that
   * does not exist fails like etcd's: TORUS_ERR_SESSION_LOST, nothing applied.
   */
  commit(ops: readonly KvOp[]): number {
    this.expireDue();
    for (const op of ops) {
      if (op.type === 'put' && op.lease != null && !this.leases.has(op.lease)) {
        throw new TorusError('TORUS_ERR_SESSION_LOST', `lease ${op.lease} has expired or was revoked`);
      }
    }
    const next = this.rev + 1;
    const events: KvEvent[] = [];
    const del = (key: string): void => {
      if (this.kv.delete(key)) events.push({ type: 'delete', key, value: null, revision: next });
    };
    for (const op of ops) {
      if (op.type === 'put') {
        const old = this.kv.get(op.key);
        this.kv.set(op.key, {
          value: op.value,
          createRevision: old?.createRevision ?? next,
          modRevision: next,
          version: (old?.version ?? 0) + 1,
          lease: op.lease ?? null,
        });
        events.push({ type: 'put', key: op.key, value: op.value, revision: next });
      } else if (op.type === 'delete') {
        del(op.key);
      } else {
        for (const key of [...this.kv.keys()]) if (key.startsWith(op.prefix)) del(key);
      }
    }
    if (events.length === 0) return this.rev;
    this.rev = next;
    this.record(events);
    return this.rev;
  }

  /**
   * Calls `fn` with every commit's events, synchronously, inside the commit.
   * For a simulation's checkers: unlike a watch it schedules nothing, so a
   * seed's run is the same with or without observers. Returns an unsubscribe.
   */
  observe(fn: (events: readonly KvEvent[]) => void): () => void {
    this.observers.add(fn);
    return () => void this.observers.delete(fn);
  }

  private record(events: KvEvent[]): void {
    for (const fn of this.observers) fn(events);
    this.history.push(...events);
    if (this.history.length > this.historyEventsMax) {
      const drop = this.history.length - this.historyEventsMax;
      this.compactedRevision = Math.max(this.compactedRevision, this.history[drop - 1]!.revision);
      this.history = this.history.slice(drop);
    }
    for (const w of this.watches) {
      const mine = events.filter((e) => matches(w, e.key));
      if (mine.length > 0) this.enqueue({ watch: w, events: mine });
    }
  }

  private enqueue(d: Delivery): void {
    this.deliveries.push(d);
    if (this.deliveryScheduled) return;
    this.deliveryScheduled = true;
    this.clock.setTimeout(() => {
      this.deliveryScheduled = false;
      const batch = this.deliveries;
      this.deliveries = [];
      for (const item of batch) {
        if (!item.watch.live) continue;
        if ('compacted' in item) item.watch.onCompacted();
        else item.watch.onEvents(item.events);
      }
    }, 0);
  }

  /**
   * Watches `prefix` (or exactly that key) from `startRevision`: past events
   * from the history first, then live ones. When history at or after
   * `startRevision` is compacted, `onCompacted` is called (once, through the
   * clock) and the watch delivers nothing: its owner re-reads and watches anew.
   */
  watch(
    prefix: string,
    opts: { exact: boolean; startRevision: number },
    onEvents: (events: KvEvent[]) => void,
    onCompacted: () => void,
  ): { cancel(): void } {
    this.expireDue();
    const w: ServerWatch = { prefix, exact: opts.exact, onEvents, onCompacted, live: true };
    if (opts.startRevision <= this.compactedRevision) {
      this.enqueue({ watch: w, compacted: true });
      return { cancel: () => void (w.live = false) };
    }
    const past = this.history.filter((e) => e.revision >= opts.startRevision && matches(w, e.key));
    this.watches.add(w);
    if (past.length > 0) this.enqueue({ watch: w, events: past });
    return {
      cancel: () => {
        w.live = false;
        this.watches.delete(w);
      },
    };
  }

  /** Drops history up to `revision` (default: all of it), like `etcdctl compact`. */
  compact(revision = this.rev): void {
    this.compactedRevision = Math.max(this.compactedRevision, Math.min(revision, this.rev));
    this.history = this.history.filter((e) => e.revision > this.compactedRevision);
  }

  // ---- leases

  grantLease(ttlMs: number): string {
    this.expireDue();
    const id = String(this.nextLeaseId++);
    const lease: Lease = { id, ttlMs, expiresAt: 0, timer: undefined, onGone: new Set() };
    this.leases.set(id, lease);
    this.refresh(lease);
    return id;
  }

  /** False when the lease no longer exists. */
  keepalive(id: string): boolean {
    this.expireDue();
    const lease = this.leases.get(id);
    if (lease === undefined) return false;
    this.refresh(lease);
    return true;
  }

  hasLease(id: string): boolean {
    this.expireDue();
    return this.leases.has(id);
  }

  leaseIds(): string[] {
    this.expireDue();
    return [...this.leases.keys()];
  }

  /** Calls `fn` once when the lease expires or is revoked. Returns an unsubscribe. */
  onLeaseGone(id: string, fn: (why: string) => void): () => void {
    const lease = this.leases.get(id);
    if (lease === undefined) return () => undefined;
    lease.onGone.add(fn);
    return () => void lease.onGone.delete(fn);
  }

  /** Revokes a lease: its keys go at one revision, its listeners hear `why`. Unknown ids are ignored. */
  revokeLease(id: string, why = 'lease revoked'): void {
    const lease = this.leases.get(id);
    if (lease === undefined) return;
    this.leases.delete(id);
    lease.timer?.cancel();
    const keys = [...this.kv].filter(([, e]) => e.lease === id).map(([k]) => k);
    this.commit(keys.map((key) => ({ type: 'delete', key })));
    for (const fn of [...lease.onGone]) fn(why);
  }

  private refresh(lease: Lease): void {
    lease.expiresAt = this.clock.monotonic() + lease.ttlMs;
    lease.timer?.cancel();
    lease.timer = this.clock.setTimeout(() => this.expireDue(), lease.ttlMs);
  }

  private expireDue(): void {
    const now = this.clock.monotonic();
    for (const lease of [...this.leases.values()]) {
      if (lease.expiresAt <= now) this.revokeLease(lease.id, 'lease expired');
    }
  }
}
