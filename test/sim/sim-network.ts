import { TorusError, isTorusError } from '../../src/errors/torus-error.js';
import type { PeerTransport, ReplicaApi } from '../../src/model/replica-api.js';
import type { Random } from '../../src/util/random.js';
import { assert } from '../../src/util/assert.js';
import type { SimClock, SimProcess } from './sim-clock.js';

/** Every method of ReplicaApi: what a proxy forwards as a message. */
const REPLICA_METHODS = ['read', 'write', 'zero', 'install', 'confirm', 'meta', 'list', 'verify', 'drop', 'fence', 'flush', 'deleteVolume', 'usage', 'hello'] as const;
type ReplicaMethod = (typeof REPLICA_METHODS)[number];

/** Bytes counted per message on top of its buffers: a frame header, roughly. */
const MESSAGE_OVERHEAD_BYTES = 64;

/**
 * Faults the runner switches on and off. Probabilities are per message, in
 * [0, 1]; all zero is a healthy network.
 */
export interface NetworkFaults {
  /** A request vanishes: the caller sees nothing and its own timeout fires. */
  readonly dropRequest: number;
  /** The request is served but the reply vanishes. */
  readonly dropReply: number;
  /** The request is delivered twice: a resend that got through late, outside the link's order. */
  readonly duplicate: number;
  /** The message ignores the FIFO order of its link. */
  readonly reorder: number;
}

export const NO_FAULTS: NetworkFaults = Object.freeze({ dropRequest: 0, dropReply: 0, duplicate: 0, reorder: 0 });

export interface SimNetworkOptions {
  /** One-way delay of a message on a healthy link, uniform in [min, max] ms. */
  readonly delayMinMs: number;
  readonly delayMaxMs: number;
  /** Extra delay a reordered message may get, ms. */
  readonly reorderMaxMs: number;
  /**
   * A node answered with an assertion failure or a non-TorusError: a bug in
   * the code under test, which the runner turns into a failed seed.
   */
  readonly onBug: (where: string, err: unknown) => void;
}

export interface LinkStats {
  messages: number;
  bytes: number;
}

interface Endpoint {
  readonly uuid: string;
  readonly process: SimProcess;
  readonly replica: ReplicaApi;
  /** Calls delivered (or held for delivery) and not answered yet: reset if the process dies. */
  readonly pending: Set<Call>;
}

interface Call {
  readonly from: string;
  readonly caller: SimProcess;
  /** Told which incarnation answered, before the answer is handed over (a peer client's handshake). */
  readonly servedBy: (ep: Endpoint) => void;
  settled: boolean;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

/**
 * The network between simulated peers. `transportFor(node)` is what a node
 * is given as its PeerTransport; each call on a peer proxy becomes a request
 * message delivered, after a seeded delay, to the target node's own replica
 * rules object, and its outcome travels back the same way. Nothing is
 * shared: buffers and records are copied at the boundary, errors are
 * rebuilt from their code, message and details, as on the wire.
 *
 * Links are FIFO per (from, to) by default, like a TCP connection. A target
 * that is down refuses at once (a refused connect); a frozen one holds
 * messages until it is thawed; one that dies with requests in hand resets
 * them (TORUS_ERR_PEER_UNAVAILABLE).
 */
export class SimNetwork {
  private readonly endpoints = new Map<string, Endpoint>();
  /** Every uuid that was ever attached: peer() knows their address. */
  private readonly known = new Set<string>();
  /** Directed links by sender, then receiver (no string keys on the per-message path). */
  private readonly links = new Map<string, Map<string, Link>>();
  private blockedCount = 0;
  private faultsNow: NetworkFaults = NO_FAULTS;

  constructor(
    private readonly clock: SimClock,
    /** The network's own process: it is never frozen or killed; it carries messages. */
    private readonly wire: SimProcess,
    private readonly random: Random,
    private readonly opts: SimNetworkOptions,
  ) {
    assert(opts.delayMinMs >= 0 && opts.delayMaxMs >= opts.delayMinMs, 'delays are ordered and non-negative');
  }

  /** A node incarnation listens for requests as `uuid` (replacing any earlier incarnation). */
  attach(uuid: string, process: SimProcess, replica: ReplicaApi): void {
    const ep: Endpoint = { uuid, process, replica, pending: new Set() };
    this.endpoints.set(uuid, ep);
    this.known.add(uuid);
    process.whenDead(() => {
      // Like a closed socket: every request in its hands fails for its caller.
      for (const call of [...ep.pending]) {
        ep.pending.delete(call);
        this.answer(uuid, call, { ok: false, err: resetError(uuid) }, true);
      }
    });
  }

  /** The PeerTransport a node incarnation uses. */
  transportFor(uuid: string, process: SimProcess): PeerTransport {
    const proxies = new Map<string, ReplicaApi>();
    // Like the peer clients of torusd (peer-directory.ts): the incarnation
    // each peer last answered as; a new one counts as a restart, told
    // before its first answer is handed over.
    const seen = new Map<string, Endpoint>();
    const restarts = new Map<string, number>();
    const listeners: ((uuid: string) => void)[] = [];
    const servedBy = (ep: Endpoint): void => {
      const before = seen.get(ep.uuid);
      seen.set(ep.uuid, ep);
      if (before === undefined || before === ep) return;
      restarts.set(ep.uuid, (restarts.get(ep.uuid) ?? 0) + 1);
      for (const l of listeners) l(ep.uuid);
    };
    return {
      peer: (target: string): ReplicaApi | null => {
        if (!this.known.has(target)) return null;
        let p = proxies.get(target);
        if (p === undefined) {
          p = this.proxy(uuid, process, target, servedBy);
          proxies.set(target, p);
        }
        return p;
      },
      onPeerRestart: (listener) => {
        listeners.push(listener);
      },
      restarts: (target) => restarts.get(target) ?? 0,
    };
  }

  setFaults(f: NetworkFaults): void {
    for (const v of Object.values(f)) assert(v >= 0 && v <= 1, 'fault probabilities lie in [0, 1]');
    this.faultsNow = f;
  }

  faults(): NetworkFaults {
    return this.faultsNow;
  }

  /** Cuts from -> to (one way). */
  block(from: string, to: string): void {
    const l = this.link(from, to);
    if (!l.blocked) this.blockedCount++;
    l.blocked = true;
  }

  /** Cuts both ways. */
  partition(a: string, b: string): void {
    this.block(a, b);
    this.block(b, a);
  }

  heal(from: string, to: string): void {
    const l = this.link(from, to);
    if (l.blocked) this.blockedCount--;
    l.blocked = false;
  }

  healAll(): void {
    for (const m of this.links.values()) for (const l of m.values()) l.blocked = false;
    this.blockedCount = 0;
  }

  isBlocked(from: string, to: string): boolean {
    return this.link(from, to).blocked;
  }

  anyBlocked(): boolean {
    return this.blockedCount > 0;
  }

  /** Messages and bytes per directed link `from>to`. */
  linkStats(): ReadonlyMap<string, LinkStats> {
    const out = new Map<string, LinkStats>();
    for (const m of this.links.values()) for (const l of m.values()) if (l.messages > 0) out.set(`${l.from}>${l.to}`, { messages: l.messages, bytes: l.bytes });
    return out;
  }

  private link(from: string, to: string): Link {
    let m = this.links.get(from);
    if (m === undefined) this.links.set(from, (m = new Map()));
    let l = m.get(to);
    if (l === undefined) m.set(to, (l = { from, to, blocked: false, lastAt: 0, messages: 0, bytes: 0 }));
    return l;
  }

  private proxy(from: string, caller: SimProcess, to: string, servedBy: (ep: Endpoint) => void): ReplicaApi {
    const api: Partial<Record<ReplicaMethod, (...args: unknown[]) => Promise<unknown>>> = {};
    for (const m of REPLICA_METHODS) {
      api[m] = (...args: unknown[]) => this.send(from, caller, to, m, args, servedBy);
    }
    return api as unknown as ReplicaApi;
  }

  private send(from: string, caller: SimProcess, to: string, method: ReplicaMethod, rawArgs: unknown[], servedBy: (ep: Endpoint) => void): Promise<unknown> {
    // A dead process sends nothing (its code may still be unwinding).
    if (!caller.alive) return new Promise(() => undefined);
    // Copied now: the caller may reuse its buffers as soon as the call is made.
    const args = rawArgs.map(copyValue);
    return new Promise((resolve, reject) => {
      const call: Call = { from, caller, servedBy, settled: false, resolve, reject };
      const link = this.link(from, to);
      count(link, args);
      const ep = this.endpoints.get(to);
      if (ep === undefined || !ep.process.alive) {
        // Nothing listens: the connect is refused after one round trip.
        if (link.blocked) return;
        this.clock.schedule(caller, 2 * this.delay(), () => this.settleCall(call, { ok: false, err: refusedError(to) }));
        return;
      }
      if (link.blocked || this.chance(this.faultsNow.dropRequest)) return;
      const at = this.deliveryTime(link);
      this.clock.schedule(this.wire, at - this.clock.monotonic(), () => this.deliver(ep, call, method, args));
      if (this.chance(this.faultsNow.duplicate)) {
        // A resend that got through late: outside the link's FIFO order, up
        // to reorderMaxMs behind, possibly after requests sent since.
        const late = this.delay() + this.random.next() * this.opts.reorderMaxMs;
        const copy = args.map(copyValue);
        this.clock.schedule(this.wire, late, () => this.deliver(ep, call, method, copy));
      }
    });
  }

  private deliver(ep: Endpoint, call: Call, method: ReplicaMethod, args: unknown[]): void {
    if (!ep.process.alive) {
      // It died while the message was on the wire: the connection is reset.
      this.answer(ep.uuid, call, { ok: false, err: resetError(ep.uuid) }, true);
      return;
    }
    ep.pending.add(call);
    // Held by a frozen process until it is thawed; dropped with it if it dies.
    ep.process.fire(() => {
      let p: Promise<unknown>;
      try {
        const fn = (ep.replica as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method];
        assert(typeof fn === 'function', `the replica implements ${method}`);
        p = Promise.resolve(fn.apply(ep.replica, args));
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        (value) => this.served(ep, call, method, { ok: true, value: copyValue(value) }),
        (err: unknown) => this.served(ep, call, method, { ok: false, err: copyError(err) }),
      );
    });
  }

  private served(ep: Endpoint, call: Call, method: ReplicaMethod, outcome: Outcome): void {
    if (!ep.pending.delete(call)) return; // reset already (the process died), or a duplicate answered first
    if (!ep.process.alive) return;
    if (!outcome.ok && isBug(outcome.err)) this.opts.onBug(`${ep.uuid}.${method}`, outcome.err);
    this.answer(ep.uuid, call, outcome, false, ep);
  }

  /** Sends an outcome back to the caller over the reverse link. */
  private answer(from: string, call: Call, outcome: Outcome, reset: boolean, servedBy?: Endpoint): void {
    if (call.settled) return;
    const link = this.link(from, call.from);
    if (link.blocked) return;
    if (!reset && this.chance(this.faultsNow.dropReply)) return;
    count(link, outcome.ok ? [outcome.value] : []);
    const at = this.deliveryTime(link);
    this.clock.schedule(call.caller, at - this.clock.monotonic(), () => this.settleCall(call, outcome, servedBy));
  }

  private settleCall(call: Call, outcome: Outcome, servedBy?: Endpoint): void {
    if (call.settled) return;
    call.settled = true;
    if (servedBy !== undefined) call.servedBy(servedBy);
    if (outcome.ok) call.resolve(outcome.value);
    else call.reject(outcome.err);
  }

  private deliveryTime(link: Link): number {
    const at = this.clock.monotonic() + this.delay();
    if (this.chance(this.faultsNow.reorder)) {
      // Overtakes or falls behind its neighbours; the link's FIFO mark is left alone.
      return at + this.random.next() * this.opts.reorderMaxMs;
    }
    const fifo = Math.max(at, link.lastAt);
    link.lastAt = fifo;
    return fifo;
  }

  private delay(): number {
    return this.opts.delayMinMs + this.random.next() * (this.opts.delayMaxMs - this.opts.delayMinMs);
  }

  private chance(p: number): boolean {
    // No draw for a zero probability: a healthy network uses less of the random stream.
    return p > 0 && this.random.next() < p;
  }


}

/** One direction between two peers: its FIFO mark, whether it is cut, what crossed it. */
interface Link {
  readonly from: string;
  readonly to: string;
  blocked: boolean;
  /** Latest delivery time scheduled on it: FIFO order. */
  lastAt: number;
  messages: number;
  bytes: number;
}

function count(link: Link, values: unknown[]): void {
  link.messages++;
  let bytes = MESSAGE_OVERHEAD_BYTES;
  for (const v of values) bytes += bufferBytes(v);
  link.bytes += bytes;
}

type Outcome = { ok: true; value: unknown } | { ok: false; err: unknown };

function refusedError(uuid: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${uuid}: connection refused (simulated: the peer is down)`, { details: { peer: uuid } });
}

function resetError(uuid: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${uuid}: connection reset (simulated: the peer died)`, { details: { peer: uuid } });
}

function isBug(err: unknown): boolean {
  return !isTorusError(err) || err.code === 'TORUS_ERR_ASSERTION';
}

/** A deep copy of what crosses the wire: buffers, arrays, plain records, primitives. */
export function copyValue(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (Array.isArray(v)) {
    const out = new Array<unknown>(v.length);
    for (let i = 0; i < v.length; i++) out[i] = copyValue(v[i]);
    return out;
  }
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [copyValue(k), copyValue(x)]));
  const out: Record<string, unknown> = {};
  for (const k in v) out[k] = copyValue((v as Record<string, unknown>)[k]);
  return out;
}

/** Errors cross the wire as code, message and details, as the peer protocol sends them. */
function copyError(err: unknown): unknown {
  if (isTorusError(err)) {
    return new TorusError(err.code, err.message, err.details === undefined ? undefined : { details: copyValue(err.details) as Record<string, unknown> });
  }
  return err;
}

/** Payload bytes: the buffers a value carries (data of writes, reads and copies), found one level down at most. */
function bufferBytes(v: unknown): number {
  if (v === null || typeof v !== 'object') return 0;
  if (Buffer.isBuffer(v)) return v.length;
  if (Array.isArray(v)) return 0; // lists of metadata: counted by the overhead
  let n = 0;
  for (const k in v) {
    const x = (v as Record<string, unknown>)[k];
    if (Buffer.isBuffer(x)) n += x.length;
  }
  return n;
}
