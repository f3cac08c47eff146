import pino, { type Logger } from 'pino';
import { TorusError } from '../../src/errors/torus-error.js';
import { KEYS, staleKey } from '../../src/metadata/keys.js';
import { MemoryEtcd } from '../../src/metadata/memory-etcd.js';
import { decodeRingRecord, decodeStaleRecord } from '../../src/metadata/record-codec.js';
import { MemoryMetadata, type MemoryFault, type MemoryFlakiness } from '../../src/metadata/memory-metadata.js';
import type { ReplicaApi } from '../../src/model/replica-api.js';
import type { PeerRecord, RingMember, RingRecord, StaleRecord } from '../../src/model/records.js';
import { minReplicasDefault, planRingChange } from '../../src/ring/transition.js';
import { MemoryFencePersistence } from '../../src/store/fence-file.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import type { Clock } from '../../src/util/clock.js';
import { SeededIds, SeededRandom, type Random } from '../../src/util/random.js';
import { assert } from '../../src/util/assert.js';
import type { StoreView } from './checker.js';
import type { AppliedChangeLike, NodeFactory, NodeUnderTest, SimTiming, VolumeIo } from './node-under-test.js';
import { guardObject } from './process-guard.js';
import { SimClock, SimProcess } from './sim-clock.js';
import { SimNetwork } from './sim-network.js';
import { rangesContain, staleContains } from '../../src/model/ranges.js';
import { watchStore, type StoreChange } from './store-watch.js';

/** Sync methods of LocalBlockStore: after a crash they throw instead of hanging. */
const STORE_SYNC_METHODS: ReadonlySet<string> = new Set(['meta', 'markSuspect', 'list', 'suspects', 'volumeIds', 'usage']);

/** Ring weight of every simulated peer: equal shares. */
const MEMBER_WEIGHT = 1 << 30;

export interface SimClusterOptions {
  readonly seed: number;
  readonly blockSize: number;
  /** Peers that exist (running or not); the first `members` start in the ring. */
  readonly peers: number;
  readonly members: number;
  readonly replication: number;
  /** Bytes each peer's store may hold. */
  readonly capacity: number;
  readonly timing: SimTiming;
  readonly factory: NodeFactory;
  readonly network: { readonly delayMinMs: number; readonly delayMaxMs: number; readonly reorderMaxMs: number };
  /** Each way of every etcd call takes up to this long, seeded (`--etcd-delays`); 0 or absent: none. */
  readonly etcdDelayMaxMs?: number;
  /** A bug surfaced (an assertion or a non-TorusError crossing the wire). */
  readonly onBug: (where: string, err: unknown) => void;
  readonly onApplied: (uuid: string, change: AppliedChangeLike) => void;
  /** Every change a peer is about to make to its store (the version checks). */
  readonly onStoreChange?: (uuid: string, change: StoreChange) => void;
  readonly logger?: Logger;
}

/** One peer: its disk outlives its processes. */
export interface SimPeer {
  readonly uuid: string;
  readonly index: number;
  readonly store: MemoryBlockStore;
  readonly fences: MemoryFencePersistence;
  process: SimProcess | null;
  node: NodeUnderTest | null;
  metadata: MemoryMetadata | null;
  /** Started (its start() resolved) in the current incarnation. */
  started: boolean;
  incarnations: number;
}

/**
 * A whole simulated cluster in one process: one etcd twin, a network, and
 * peers whose processes can be started, killed (their stores crash),
 * frozen and thawed. Everything runs on one SimClock from one seed; every
 * random stream is derived from it so that a seed replays exactly.
 */
export class SimCluster {
  readonly clock = new SimClock();
  readonly etcdProcess: SimProcess;
  /** The runner's own process: the workload client and the operator. */
  readonly admin: SimProcess;
  readonly etcd: MemoryEtcd;
  readonly network: SimNetwork;
  readonly adminMetadata: MemoryMetadata;
  readonly peers: SimPeer[] = [];
  private readonly random: SeededRandom;
  private readonly log: Logger;
  private etcdFault: MemoryFault = 'none';
  private etcdFlaky: MemoryFlakiness | null = null;

  constructor(private readonly opts: SimClusterOptions) {
    this.random = new SeededRandom(opts.seed);
    this.log = opts.logger ?? pino({ level: 'silent' });
    this.etcdProcess = new SimProcess('etcd', this.clock);
    this.admin = new SimProcess('admin', this.clock);
    const wire = new SimProcess('wire', this.clock);
    this.etcd = new MemoryEtcd({ clock: this.clock.clockFor(this.etcdProcess) });
    this.network = new SimNetwork(this.clock, wire, this.fork(), { ...opts.network, onBug: opts.onBug });
    // The operator's client answers at once (the runner awaits it outside the simulated loop); the peers' clients may be delayed.
    this.adminMetadata = this.metadataClient(this.clock.clockFor(this.admin), false);
    const ids = new SeededIds(this.fork());
    for (let i = 0; i < opts.peers; i++) {
      this.peers.push({
        uuid: ids.uuid(),
        index: i,
        store: new MemoryBlockStore({ blockSize: opts.blockSize, capacity: opts.capacity }),
        fences: new MemoryFencePersistence(),
        process: null,
        node: null,
        metadata: null,
        started: false,
        incarnations: 0,
      });
    }
  }

  /** An independent random stream, derived from the seed in a fixed order. */
  fork(): Random {
    return new SeededRandom((this.random.next() * 2 ** 32) >>> 0);
  }

  get rng(): Random {
    return this.random;
  }

  /** Formats the cluster, sets the first ring, creates the volumes: before any peer starts. */
  async bootstrap(volumes: readonly { name: string; size: number }[]): Promise<void> {
    const md = this.adminMetadata;
    await md.initCluster({ blockSize: this.opts.blockSize, replication: this.opts.replication }, { force: false });
    await md.ensureClusterSecret();
    const ring = await md.getRing();
    const members: RingMember[] = this.peers.slice(0, this.opts.members).map((p) => ({ uuid: p.uuid, weight: MEMBER_WEIGHT }));
    const next = planRingChange(ring, members, this.opts.replication, minReplicasDefault(this.opts.replication), 'simulation bootstrap', this.clock.now());
    assert(next !== null && next.transition === null, 'the first ring is stable at once');
    await md.setRing(next);
    for (const v of volumes) await md.createVolume(v.name, v.size);
  }

  // ------------------------------------------------------------ peer lifecycle

  /** Starts a new incarnation of a peer. Resolves when its start() resolves (or never, if it dies first). */
  start(peer: SimPeer): Promise<void> {
    assert(peer.process === null || !peer.process.alive, 'a peer runs one incarnation at a time');
    peer.incarnations++;
    const process = new SimProcess(`${peer.uuid.slice(0, 8)}#${peer.incarnations}`, this.clock);
    const clock = this.clock.clockFor(process);
    const metadata = this.metadataClient(clock, true);
    metadata.setFault(this.etcdFault);
    metadata.setFlaky(this.etcdFlaky);
    peer.process = process;
    peer.metadata = metadata;
    peer.started = false;
    const random = this.fork();
    const node = this.opts.factory({
      uuid: peer.uuid,
      metadata: guardObject(metadata, process),
      store: guardObject(this.opts.onStoreChange ? watchStore(peer.store, (c) => this.opts.onStoreChange!(peer.uuid, c)) : peer.store, process, { syncMethods: STORE_SYNC_METHODS, guardResults: false }),
      fences: guardObject(peer.fences, process, { guardResults: false }),
      transport: this.network.transportFor(peer.uuid, process),
      clock,
      random,
      ids: new SeededIds(random),
      logger: this.log.child({ peer: peer.uuid.slice(0, 8) }),
      timing: this.opts.timing,
      peerRecord: () => this.peerRecord(peer),
      onApplied: (c) => this.opts.onApplied(peer.uuid, c),
      onInvariantBroken: (err, context) => this.opts.onBug(`${peer.uuid.slice(0, 8)} ${String(context['where'] ?? context['module'] ?? 'node')}`, err),
    });
    peer.node = node;
    this.network.attach(peer.uuid, process, lateReplica(peer.uuid, () => (peer.process === process ? node.replica : null)));
    return this.inside(process, async () => {
      await node.start();
      peer.started = true;
    });
  }

  /** SIGKILL and power loss: the process stops, unflushed writes may be lost. */
  crash(peer: SimPeer): void {
    assert(peer.process !== null && peer.process.alive, 'only a running peer crashes');
    peer.process.kill();
    peer.started = false;
    peer.store.crash(this.fork());
    peer.fences.crash(this.fork());
  }

  /**
   * SIGTERM, the first half: the peer is no longer offered to new clients
   * and its node learns that it stops (what torusd does before it lets its
   * NBD clients go). The caller lets the clients go, then calls stop().
   */
  beginStop(peer: SimPeer): void {
    assert(peer.process !== null && peer.process.alive, 'only a running peer stops');
    peer.started = false;
    const node = peer.node!;
    void this.inside(peer.process, async () => node.beginStop());
  }

  /**
   * SIGTERM, the second half: the node's orderly stop, then the process
   * exits. Nothing on its disk is lost: torusd's store syncs as it closes,
   * and the machine keeps running. A stop that has not finished within
   * `graceMs` is cut short by SIGKILL (Kubernetes' grace period), taken
   * here as a crash. Resolves with which it was once the process is gone.
   */
  stop(peer: SimPeer, graceMs: number): Promise<'stopped' | 'killed'> {
    const process = peer.process!;
    const node = peer.node!;
    assert(process.alive, 'only a running peer stops');
    return new Promise((resolve) => {
      let done = false;
      const finish = (how: 'stopped' | 'killed'): void => {
        if (done) return;
        done = true;
        if (peer.process !== process || !process.alive) {
          // Crashed meanwhile (by another fault): it is gone already.
          resolve('killed');
          return;
        }
        if (how === 'stopped') {
          // As the disk store's close: everything synced and checkpointed
          // (its body runs now; nothing else touches the store meanwhile).
          void peer.store.checkpoint();
          process.kill();
          peer.started = false;
        } else {
          this.crash(peer);
        }
        resolve(how);
      };
      this.inside(process, () => node.stop()).then(
        () => finish('stopped'),
        (err: unknown) => {
          this.opts.onBug(`${peer.uuid.slice(0, 8)} stop`, err);
          finish('killed');
        },
      );
      this.clock.schedule(this.admin, graceMs, () => finish('killed'));
    });
  }

  /** SIGSTOP; with `suspend`, its clocks stop too (a VM paused by its hypervisor). */
  freeze(peer: SimPeer, opts: { suspend?: boolean } = {}): void {
    peer.process!.freeze(opts);
  }

  thaw(peer: SimPeer): void {
    peer.process!.thaw();
  }

  isRunning(peer: SimPeer): boolean {
    return peer.process !== null && peer.process.state === 'running';
  }

  isAlive(peer: SimPeer): boolean {
    return peer.process !== null && peer.process.alive;
  }

  /**
   * Runs fn as `process` (held while it is frozen) and returns its outcome
   * to the caller. If the process dies first, the promise never settles:
   * callers bound their waits with their own timers.
   */
  inside<T>(process: SimProcess, fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      process.post(() => {
        let p: Promise<T>;
        try {
          p = fn();
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(
          (v) => {
            if (process.alive) resolve(v);
          },
          (e: unknown) => {
            if (process.alive) reject(e);
          },
        );
      });
    });
  }

  /** Opens a volume through a peer (as an NBD client connecting to it). */
  open(peer: SimPeer, name: string, mode: 'rw' | 'ro'): Promise<VolumeIo> {
    const process = peer.process!;
    const node = peer.node!;
    return this.inside(process, () => node.open(name, mode)).then((io) => this.ioInside(process, io));
  }

  /** A volume handle whose calls run inside the peer's process. */
  private ioInside(process: SimProcess, io: VolumeIo): VolumeIo {
    return {
      read: (o, l) => this.inside(process, () => io.read(o, l)),
      write: (o, d, f) => {
        // The client's buffer is the client's: the peer gets its own copy, as over a socket.
        const copy = Buffer.from(d);
        return this.inside(process, () => io.write(o, copy, f));
      },
      zero: (o, l, z) => this.inside(process, () => io.zero(o, l, z)),
      flush: () => this.inside(process, () => io.flush()),
      close: () => this.inside(process, () => io.close()),
    };
  }

  // ------------------------------------------------------------ etcd

  /** An etcd outage (every client, the peers and the operator) or its end. */
  setEtcdFault(fault: MemoryFault): void {
    this.etcdFault = fault;
    for (const p of this.peers) if (p.process?.alive) p.metadata?.setFault(fault);
    this.adminMetadata.setFault(fault);
  }

  /**
   * Every peer's etcd calls fail or lose their answers one at a time (or
   * no longer: null). The operator's and the checkers' client is spared.
   */
  setEtcdFlaky(flaky: MemoryFlakiness | null): void {
    this.etcdFlaky = flaky;
    for (const p of this.peers) if (p.process?.alive) p.metadata?.setFlaky(flaky);
  }

  /** One peer's etcd calls flaky (or back to what the others have). */
  setPeerEtcdFlaky(peer: SimPeer, flaky: MemoryFlakiness | null): void {
    peer.metadata?.setFlaky(flaky ?? this.etcdFlaky);
  }

  /** One peer cut off from etcd (or back). */
  setPeerEtcdFault(peer: SimPeer, fault: MemoryFault): void {
    peer.metadata?.setFault(fault === 'none' ? this.etcdFault : fault);
  }

  private metadataClient(clock: Clock, delayed: boolean): MemoryMetadata {
    const maxMs = delayed ? (this.opts.etcdDelayMaxMs ?? 0) : 0;
    // Forked only in that mode: the other modes' seeds replay as before.
    const delays = maxMs > 0 ? { random: this.fork(), maxMs } : undefined;
    return new MemoryMetadata({ clock, server: this.etcd, callTimeoutMs: this.opts.timing.etcdCallTimeoutMs, random: this.fork(), ids: new SeededIds(this.fork()), delays });
  }

  // ------------------------------------------------------------ ring (the operator)

  /** The ring as etcd holds it now (read directly: the checkers must not wait on a faulty client). */
  async ring(): Promise<RingRecord> {
    const saved = this.etcdFault;
    if (saved === 'none') return this.adminMetadata.getRing();
    this.adminMetadata.setFault('none');
    try {
      return await this.adminMetadata.getRing();
    } finally {
      this.adminMetadata.setFault(saved);
    }
  }

  /**
   * A ring change as `torusctl` makes it: members and replication, by
   * compare-and-swap, retried on conflict. Returns the new ring, or null
   * when it would change nothing.
   */
  async changeRing(members: readonly string[], replication: number, reason: string): Promise<RingRecord | null> {
    for (let attempt = 0; ; attempt++) {
      const ring = await this.adminMetadata.getRing();
      const next = planRingChange(
        ring,
        members.map((uuid) => ({ uuid, weight: MEMBER_WEIGHT })),
        replication,
        minReplicasDefault(replication),
        reason,
        this.clock.now(),
      );
      if (next === null) return null;
      try {
        await this.adminMetadata.setRing(next);
        return next;
      } catch (err) {
        if (!(err instanceof TorusError) || err.code !== 'TORUS_ERR_CLUSTER_CONFLICT' || attempt >= 10) throw err;
      }
    }
  }

  // ------------------------------------------------------------ checkers' view

  storeViews(): StoreView[] {
    return this.peers.map((p) => ({ uuid: p.uuid, alive: this.isAlive(p), store: p.store }));
  }

  /** The ring as etcd holds it now, read straight from the twin's store (no simulated time passes), or null before bootstrap. */
  ringNow(): RingRecord | null {
    const entry = this.etcd.get(KEYS.ring);
    return entry === undefined ? null : decodeRingRecord(KEYS.ring, entry.value);
  }

  /** Whether etcd names `peer` stale (or unsure) for this block now (read straight from the twin's store). */
  isRecordedStale(volumeId: number, peer: string, index: number): boolean {
    const rec = this.staleRecordNow(volumeId, peer);
    return rec !== null && staleContains(rec, index);
  }

  /** Whether etcd names `peer` as having missed a change to this block now: the whole volume or the block, not merely unsure. */
  isRecordedMissed(volumeId: number, peer: string, index: number): boolean {
    const rec = this.staleRecordNow(volumeId, peer);
    return rec !== null && (rec.all || rangesContain(rec.ranges, index));
  }

  private staleRecordNow(volumeId: number, peer: string): StaleRecord | null {
    const key = staleKey(volumeId, peer);
    const entry = this.etcd.get(key);
    if (entry === undefined) return null;
    // Decoded once per version of the record: the liveness checks ask on every write.
    let cached = this.staleCache.get(key);
    if (cached === undefined || cached.revision !== entry.modRevision) {
      cached = { revision: entry.modRevision, record: decodeStaleRecord(key, entry.value) };
      this.staleCache.set(key, cached);
    }
    return cached.record;
  }

  private readonly staleCache = new Map<string, { revision: number; record: StaleRecord }>();

  peerByUuid(uuid: string): SimPeer | undefined {
    return this.peers.find((p) => p.uuid === uuid);
  }

  private peerRecord(peer: SimPeer): PeerRecord {
    const u = peer.store.usage();
    return {
      schema: 1,
      uuid: peer.uuid,
      address: `sim-${peer.index}:4000`,
      nbdAddress: null,
      httpAddress: null,
      capacity: u.capacity,
      used: u.used,
      updatedAt: new Date(this.clock.now()).toISOString(),
      hostname: `sim-${peer.index}`,
      pid: 1000 + peer.incarnations,
      version: 'sim',
      incarnation: `${peer.uuid.slice(0, 8)}#${peer.incarnations}`,
    };
  }
}

/**
 * The replica a peer serves, looked up at each request: before its
 * start() has made one, requests are refused as by a port not yet listening.
 */
function lateReplica(uuid: string, get: () => ReplicaApi | null): ReplicaApi {
  return new Proxy({} as ReplicaApi, {
    get(_t, prop) {
      return (...args: unknown[]) => {
        const r = get();
        if (r === null) {
          return Promise.reject(new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${uuid}: not listening yet (simulated)`));
        }
        return (r as unknown as Record<PropertyKey, (...a: unknown[]) => unknown>)[prop]!(...args);
      };
    },
  });
}
