import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { MetadataService, MetadataSession } from '../metadata/metadata-service.js';
import type { BlockRef } from '../model/block-ref.js';
import type { PeerTransport, ReplicaApi, RequestContext } from '../model/replica-api.js';
import { PEER_SUSPECT_VOLUMES_MAX, type PeerRecord, type RingRecord } from '../model/records.js';
import type { ClusterContext } from '../replication/cluster-context.js';
import { FenceTable, type FencePersistence } from '../replication/fence-table.js';
import { ringPeers } from '../replication/owners.js';
import { PeerHealth } from '../replication/peer-health.js';
import { Replica, type AppliedChange } from '../replication/replica.js';
import { DEFAULT_REPLICATION_SETTINGS, type ReplicationSettings } from '../replication/settings.js';
import { ReplicationStats } from '../replication/stats.js';
import { Throttle } from '../replication/throttle.js';
import type { LocalBlockStore } from '../store/local-store.js';
import type { Clock } from '../util/clock.js';
import { crashOnInvariantBroken, isAssertionFailure, reportAssertion, rethrowAssertion, type InvariantBroken } from '../util/invariant.js';
import type { Ids, Random } from '../util/random.js';
import { withTimeout } from '../util/timeout.js';
import { GarbageCollector } from './gc.js';
import { Maintenance } from './maintenance.js';
import { Timers } from './timers.js';
import { TransitionDriver } from './transition-driver.js';
import { VolumeManager, type OpenVolume } from './volume-manager.js';

export interface NodeSettings {
  readonly replication: ReplicationSettings;
  /** Lease TTL of the peer record, ring acknowledgement and volume locks. */
  readonly sessionTtlSeconds: number;
  /** How often the peer record and ring acknowledgement are refreshed and the peer list re-read. */
  readonly heartbeatMs: number;
  /** A ring member DOWN this long is taken out of the ring (0: never). */
  readonly downOutIntervalMs: number;
  /** Garbage collection of deleted volumes and leftover copies this often. */
  readonly gcIntervalMs: number;
  /** Volumes a peer maintains at once. */
  readonly maintenanceVolumesMax: number;
  /** After an etcd failure, the next attempt waits this long (doubling up to 5 s). */
  readonly retryMs: number;
}

/** How long an orderly stop waits for a maintenance pass to end (Maintenance.stop). */
const MAINTENANCE_STOP_WAIT_MS = 10_000;

export const DEFAULT_NODE_SETTINGS: NodeSettings = {
  replication: DEFAULT_REPLICATION_SETTINGS,
  sessionTtlSeconds: 30,
  heartbeatMs: 5_000,
  downOutIntervalMs: 10 * 60_000,
  gcIntervalMs: 30_000,
  maintenanceVolumesMax: 2,
  retryMs: 200,
};

export interface NodeDeps {
  /** This peer's uuid (a client without a store gets one too: it names it in locks and acks). */
  readonly uuid: string;
  readonly metadata: MetadataService;
  /** Null for a client (torusblk): it coordinates volumes but stores nothing. */
  readonly store: LocalBlockStore | null;
  readonly fences: FencePersistence | null;
  readonly transport: PeerTransport;
  readonly clock: Clock;
  readonly random: Random;
  readonly ids: Ids;
  readonly logger: Logger;
  readonly settings: NodeSettings;
  /** New at every start of the process (default: a fresh id); the transport sends it in handshakes too. */
  readonly incarnation?: string;
  /** `torusd <uuid> on <host> (pid N)`: who holds locks. */
  readonly holder: string;
  /** The peer record to publish (addresses, capacity); null for clients. */
  readonly peerRecord: (() => PeerRecord) | null;
  /** Every change the local replica applies (simulation checkers). */
  readonly onApplied?: (change: AppliedChange) => void;
  /** The node began or stopped serving (it has an etcd session, or lost it). */
  readonly onLiveChange?: (live: boolean) => void;
  /** A new etcd session (lease) was opened: torusd keeps its id in the data dir. */
  readonly onSessionOpened?: (leaseId: string) => Promise<void>;
  /**
   * The node took a ring of another version from etcd: torusd keeps a copy
   * in the data dir (src/daemon/cluster-copies.ts) for a start while etcd is
   * unreachable. Called in order; must not throw.
   */
  readonly onRing?: (ring: RingRecord) => void;
  /**
   * Background work (or work nobody awaits) broke an invariant
   * (util/invariant.ts): torusd logs and exits, the simulation fails the
   * seed. Default: crash.
   */
  readonly onInvariantBroken?: InvariantBroken;
}

/**
 * One peer of the cluster, composed from interfaces (metadata, local
 * store, transport, clock, randomness, ids) so that torusd, torusblk and
 * the simulation run the same code (docs/replication.md). It owns: the
 * local replica (what other peers reach), the etcd session, the ring and
 * fence views, peer health, the volumes this process coordinates, and the
 * background work (maintenance of volumes no one writes, ring transitions,
 * garbage collection).
 */
export class ClusterNode {
  readonly uuid: string;
  readonly incarnation: string;
  readonly health: PeerHealth;
  readonly throttle: Throttle;
  readonly stats = new ReplicationStats();
  readonly ctx: ClusterContext;
  readonly volumes: VolumeManager;
  private readonly deps: NodeDeps;
  private readonly log: Logger;
  private readonly invariantBroken: InvariantBroken;
  private readonly timers: Timers;
  private fenceTable: FenceTable | null = null;
  private replicaObj: Replica | null = null;
  private ring!: RingRecord;
  private session: MetadataSession | null = null;
  private live = false;
  /** A start() whose session was lost while it joined waits here for the reconnect to finish the join. */
  private liveWaiters: { resolve(): void; reject(err: unknown): void }[] = [];
  private fenceRevision = 0;
  private stopRingWatch: (() => Promise<void>) | null = null;
  private stopDeleteWatch: (() => Promise<void>) | null = null;
  private stopFenceWatch: (() => Promise<void>) | null = null;
  private ringRefresh: Promise<void> | null = null;
  private readonly acked = new Set<number>();
  private maintenance: Maintenance | null = null;
  private driver: TransitionDriver | null = null;
  private gc: GarbageCollector | null = null;
  private reconnecting = false;
  /** The session was lost again while a reconnect was under way. */
  private lostWhileReconnecting = false;
  private stopped = false;
  private opening: Promise<void> | null = null;
  private peersKnown = new Set<string>();
  /** Live peers and their suspect volumes at the last listing: a change wakes the background pass. */
  private peersSignature = '';
  private backgroundTimer: { wake(now?: boolean): void } | null = null;
  private peerRecords = new Map<string, PeerRecord>();
  private suspectVolumes = new Set<number>();

  constructor(deps: NodeDeps) {
    this.deps = deps;
    this.uuid = deps.uuid;
    this.incarnation = deps.incarnation ?? deps.ids.uuid();
    this.log = deps.logger.child({ module: 'node', peer: deps.uuid });
    this.invariantBroken = deps.onInvariantBroken ?? crashOnInvariantBroken;
    this.timers = new Timers(deps.clock, this.invariantBroken);
    this.health = new PeerHealth(deps.clock);
    this.throttle = new Throttle(deps.clock, deps.settings.replication.copyBytesPerSec);
    const self = this;
    this.ctx = {
      selfUuid: deps.store === null ? null : deps.uuid,
      clock: deps.clock,
      random: deps.random,
      metadata: deps.metadata,
      health: this.health,
      settings: deps.settings.replication,
      throttle: this.throttle,
      stats: this.stats,
      logger: deps.logger,
      invariantBroken: this.invariantBroken,
      ring: () => self.ring,
      requestContext: (): RequestContext => ({ ringVersion: self.ring.version }),
      replica: (u) => self.replicaOf(u),
      refreshRing: (min) => self.refreshRing(min),
      refreshPeers: () => self.refreshPeers(),
      suspectVolumesOf: (u) => self.suspectVolumesOf(u),
      livePeers: () => [...self.peersKnown],
      ringAcknowledged: (v) => self.ringAcknowledged(v, false),
      leaseDeadline: () => self.session?.leaseDeadline() ?? -Infinity,
      sessionId: () => self.session?.id ?? null,
      peerRestarts: (u) => deps.transport.restarts?.(u) ?? 0,
    };
    this.volumes = new VolumeManager({
      ctx: this.ctx,
      session: () => this.session,
      holder: deps.holder,
      logger: deps.logger,
      writeLevel: deps.settings.replication.writeLevel,
      releaseRetryMs: deps.settings.retryMs,
    });
    deps.transport.onPeerRestart?.((u) => {
      this.log.info({ peer: u }, 'peer restarted');
      void this.volumes.list().then((all) => {
        for (const ov of all) ov.coordinator?.peerRestarted(u);
      });
    });
  }

  /** What other peers reach through the peer protocol (null for a client). */
  get replica(): Replica | null {
    return this.replicaObj;
  }

  /**
   * A stable ReplicaApi for the peer listener, which must be bound (its
   * address goes into the peer record) before the node starts: it refuses
   * with TORUS_ERR_PEER_NOT_LIVE until the local replica exists.
   */
  replicaHandle(): ReplicaApi {
    const target = (): ReplicaApi => {
      const r = this.replicaObj;
      if (r === null) throw new TorusError('TORUS_ERR_PEER_NOT_LIVE', `peer ${this.uuid} is starting`);
      return r;
    };
    const handle: EveryMethod<ReplicaApi> = {
      read: (...a) => target().read(...a),
      write: (...a) => target().write(...a),
      zero: (...a) => target().zero(...a),
      install: (...a) => target().install(...a),
      confirm: (...a) => target().confirm(...a),
      meta: (...a) => target().meta(...a),
      list: (...a) => target().list(...a),
      verify: (...a) => target().verify(...a),
      drop: (...a) => target().drop(...a),
      fence: (...a) => target().fence(...a),
      flush: (...a) => target().flush(...a),
      deleteVolume: (...a) => target().deleteVolume(...a),
      usage: (...a) => target().usage(...a),
      hello: (...a) => target().hello(...a),
      // A hint: nothing to refuse while starting, it is dropped.
      expectWrites: (...a) => this.replicaObj?.expectWrites(...a),
    };
    return handle;
  }

  get isLive(): boolean {
    return this.live;
  }

  currentRing(): RingRecord {
    return this.ring;
  }

  /** DOWN members past the down-out interval whose down-out this node holds back (too few members, a survivor too full). */
  downOutHeld(): number {
    return this.driver?.downOutHeld() ?? 0;
  }

  currentSession(): MetadataSession | null {
    return this.session;
  }

  /**
   * Opens the local replica (fences from their file), with `ring` as the
   * ring until etcd gives one: what other peers reach answers from here on.
   * Without a session it admits reads, meta, list and verify and refuses
   * every change (Replica, live()); nothing else runs until start() has a
   * session. torusd opens early with the ring kept in its data dir when it
   * starts while etcd is unreachable; start() opens if nobody did.
   */
  open(opts: { ring?: RingRecord | null } = {}): Promise<void> {
    this.opening ??= this.openReplica(opts.ring ?? null);
    return this.opening;
  }

  private async openReplica(ring: RingRecord | null): Promise<void> {
    const d = this.deps;
    if (ring !== null) this.ring = ring;
    if (d.store !== null) {
      if (d.fences === null) throw new TorusError('TORUS_ERR_ASSERTION', 'a node with a store needs fence persistence');
      this.fenceTable = await FenceTable.open(d.fences);
      this.replicaObj = new Replica({
        uuid: this.uuid,
        incarnation: this.incarnation,
        store: d.store,
        fences: this.fenceTable,
        ringVersion: () => this.ring?.version ?? 0,
        // Past our own lease deadline (a pause, a partition from etcd) our
        // fences may be behind: tokens taken meanwhile reach us through
        // etcd only. Changes wait for a renewed lease, or for the new
        // session that re-reads every fence (docs/replication.md, "Fencing").
        live: () => this.live && d.clock.monotonic() <= (this.session?.leaseDeadline() ?? -Infinity),
        onNewerRing: (v) => void this.refreshRing(v).catch(reportAssertion(this.invariantBroken, { module: 'node', peer: this.uuid, where: 'ring refresh' })),
        onSuspect: (ref, why) => this.reportSuspect(ref, why),
        ...(d.onApplied ? { onApplied: d.onApplied } : {}),
        logger: d.logger,
      });
    }
  }

  /**
   * Joins the cluster: opens the replica (if open() has not), reads the
   * ring, opens a session, learns every fence from etcd, records blocks
   * left suspect by an unclean stop as stale, then serves. Background work
   * (maintenance, transitions and down-out, garbage collection) starts only
   * once live.
   */
  async start(opts: { resumeLeaseId?: string | null } = {}): Promise<{ resumed: boolean }> {
    const d = this.deps;
    await this.open();
    this.takeRing(await this.retryEtcd('read the ring', () => d.metadata.getRing()));
    const resumed = await this.becomeLive(opts.resumeLeaseId ?? null).catch(async (err: unknown) => {
      if (!isTorusError(err, 'TORUS_ERR_SESSION_LOST') || this.stopped) throw err;
      // The session was lost while the node joined (its lease ran out
      // during an etcd outage, or etcd answered too slowly): the reconnect
      // that loss begins finishes the join with a new session. Before, the
      // start failed and torusd exited (simulation seed 884 with --readers
      // --etcd-delays).
      this.log.warn({ err }, 'etcd session lost while starting; joining with a new session');
      if (!this.reconnecting && !this.live) this.sessionLost();
      await this.untilLive();
      return false;
    });
    this.stopRingWatch = await this.retryEtcd('watch the ring', () => d.metadata.watchRing((ring) => this.applyRing(ring)));
    if (d.store !== null) {
      this.maintenance = new Maintenance({ node: this, ctx: this.ctx, logger: d.logger, holder: d.holder, volumesMax: d.settings.maintenanceVolumesMax, releaseRetryMs: d.settings.retryMs, expiredGraceMs: d.settings.sessionTtlSeconds * 1000 });
      this.driver = new TransitionDriver({ node: this, ctx: this.ctx, logger: d.logger, downOutIntervalMs: d.settings.downOutIntervalMs });
      this.gc = new GarbageCollector({ node: this, store: d.store, metadata: d.metadata, ctx: this.ctx, logger: d.logger });
    }
    // Suspect blocks left by an unclean stop are compared and repaired (or
    // adopted) now rather than at the first background tick: until then a
    // read-only opener cannot read them.
    if (this.suspectVolumes.size > 0) void this.background();
    this.timers.every(d.settings.heartbeatMs, () => this.heartbeat());
    this.timers.every(d.settings.replication.probeIntervalMs, () => this.probe());
    const bg = d.settings.replication;
    this.backgroundTimer = this.timers.adaptive(bg.backgroundIntervalMs, Math.max(bg.backgroundIntervalMs, bg.backgroundIdleIntervalMaxMs), () => this.background());
    if (this.gc) {
      this.timers.every(d.settings.gcIntervalMs, async () => void (await this.gc!.run()));
      // A deleted volume's space comes back at once, not at the next pass;
      // the pass itself still re-reads etcd and frees only what it lists.
      const gc = this.gc;
      this.stopDeleteWatch = await d.metadata
        .watchVolumeDeletes(() => void gc.run().catch((err: unknown) => this.backgroundFailed(err, 'garbage collection after a volume delete failed')))
        .catch((err: unknown) => {
          this.log.warn({ err }, 'could not watch volume deletions; deleted volumes are freed at the periodic pass');
          return null;
        });
    }
    this.log.info({ incarnation: this.incarnation, ringVersion: this.ring.version, store: d.store !== null, resumedLease: resumed }, 'node started');
    return { resumed };
  }

  /** One garbage collection pass now (as the periodic one; none without a store, or while one runs). */
  collectGarbage(): Promise<{ volumes: number; leftovers: number }> {
    return this.gc === null ? Promise.resolve({ volumes: 0, leftovers: 0 }) : this.gc.run();
  }

  /** A new session, fences from etcd, suspects recorded, acknowledgement published: then live. */
  private async becomeLive(resumeLeaseId: string | null = null): Promise<boolean> {
    const d = this.deps;
    let session: MetadataSession | null = null;
    if (resumeLeaseId !== null) {
      // Kernel attachments of the previous run keep their locks on its lease.
      // Tried again while etcd does not answer (a start during an outage):
      // the lease may well outlive the outage.
      session = await this.retryEtcd('resume the lease of the previous run', () => d.metadata.resumeSession({ leaseId: resumeLeaseId, ttlSeconds: d.settings.sessionTtlSeconds })).catch((err: unknown) => {
        rethrowAssertion(err);
        if (this.stopped) throw err;
        this.log.error({ err, lease: resumeLeaseId }, 'could not resume the lease of the previous run; its locks may have been taken over');
        return null;
      });
    }
    const resumed = session !== null;
    session ??= await this.retryEtcd('open a session', () => d.metadata.openSession({ ttlSeconds: d.settings.sessionTtlSeconds }));
    session.on((ev) => {
      if (ev.type === 'lost' && this.session === session) this.sessionLost();
    });
    this.session = session;
    // Lost meanwhile (and replaced by the reconnect that began then): this
    // join stops at its next step, rather than go on beside that one.
    const current = (): void => {
      if (this.session !== session) throw new TorusError('TORUS_ERR_SESSION_LOST', `etcd session ${session.id} was lost while the node joined`);
    };
    if (d.onSessionOpened) await d.onSessionOpened(session.id).catch((err: unknown) => this.log.warn({ err }, 'could not record the session lease'));
    current();
    this.takeRing(await this.retryEtcd('read the ring', () => d.metadata.getRing()));
    current();
    if (this.fenceTable !== null) {
      const { fences, revision } = await this.retryEtcd('read the fences', () => d.metadata.listFences());
      for (const [volumeId, token] of fences) await this.fenceTable.learn(volumeId, token);
      current();
      this.fenceRevision = revision;
      await this.stopFenceWatch?.().catch(() => undefined);
      const stopWatch = await this.retryEtcd('watch the fences', () =>
        d.metadata.watchFences(
          revision,
          (volumeId, token, rev) => void this.fenceTable!.learn(volumeId, token).then(() => (this.fenceRevision = Math.max(this.fenceRevision, rev))),
          (all) => {
            void Promise.all([...all.fences].map(([v, t]) => this.fenceTable!.learn(v, t))).then(() => (this.fenceRevision = Math.max(this.fenceRevision, all.revision)));
          },
        ),
      );
      // A join that lost its session leaves the fences to the one replacing it.
      if (this.session !== session) await stopWatch().catch(() => undefined);
      else this.stopFenceWatch = stopWatch;
    }
    current();
    this.refreshSuspectVolumes();
    if (d.peerRecord) await this.retryEtcd('publish the peer record', () => session.putPeer(this.record()));
    current();
    await this.retryEtcd('acknowledge the ring', () => this.ack());
    await this.refreshPeers();
    current();
    this.live = true;
    d.onLiveChange?.(true);
    for (const w of this.liveWaiters.splice(0)) w.resolve();
    return resumed;
  }

  /** Resolves once the node is live; rejects if it stops first. */
  private untilLive(): Promise<void> {
    if (this.live) return Promise.resolve();
    if (this.stopped) return Promise.reject(new TorusError('TORUS_ERR_STORE_CLOSED', 'node stopped before it joined'));
    return new Promise((resolve, reject) => this.liveWaiters.push({ resolve, reject }));
  }

  /**
   * A local copy became suspect (a gap, a checksum failure). The replica
   * already refuses to serve it; the peer record names its volume so that a
   * coordinator or maintainer compares and repairs it (docs/replication.md,
   * "Versions").
   */
  private reportSuspect(ref: BlockRef, why: string): void {
    this.log.warn({ volumeId: ref.volumeId, block: ref.index, why }, 'a local copy became suspect; it is not served until repaired');
    this.suspectVolumes.add(ref.volumeId);
    this.wakeBackground();
  }

  /** Volumes with suspect blocks here, from the store (after an unclean stop) and since. */
  private refreshSuspectVolumes(): void {
    const store = this.deps.store;
    if (store === null) return;
    this.suspectVolumes = new Set(store.suspects().map((r) => r.volumeId));
  }

  /** The peer record as the shell builds it, plus what only the node knows. */
  private record(): PeerRecord {
    const base = this.deps.peerRecord!();
    const suspectVolumes = [...this.suspectVolumes].sort((a, b) => a - b).slice(0, PEER_SUSPECT_VOLUMES_MAX);
    return suspectVolumes.length === 0 ? base : { ...base, suspectVolumes };
  }

  /** Volumes a peer says hold suspect blocks (from its last record). */
  suspectVolumesOf(uuid: string): readonly number[] {
    return this.peerRecords.get(uuid)?.suspectVolumes ?? [];
  }

  /**
   * Starts the reconnect of a lost session; nothing awaits it, so its
   * failure is handled here, never left unhandled (Node would end the
   * process on it). A stop during the reconnect ends it quietly. Any other
   * failure (not an etcd outage: those are retried inside) is logged and
   * the reconnect tried again after retryMs; a broken invariant is
   * reported as everywhere else.
   */
  private sessionLost(): void {
    this.onSessionLost().catch((err: unknown) => {
      if (this.stopped) return;
      if (isAssertionFailure(err)) return this.invariantBroken(err, { module: 'node', peer: this.uuid, where: 'session reconnect' });
      this.log.error({ err, retryMs: this.deps.settings.retryMs }, 'could not re-establish the etcd session; trying again');
      this.deps.clock.setTimeout(() => {
        if (!this.stopped && !this.reconnecting && !this.live) this.sessionLost();
      }, this.deps.settings.retryMs);
    });
  }

  private async onSessionLost(): Promise<void> {
    if (this.stopped) return;
    if (this.reconnecting) {
      // The new session was lost before the reconnect finished (its lease
      // expired during an etcd outage): start again once it has, or the
      // node would keep a dead session for good (seed 397).
      this.lostWhileReconnecting = true;
      return;
    }
    this.reconnecting = true;
    this.live = false;
    this.deps.onLiveChange?.(false);
    this.log.error({}, 'etcd session lost: serving nothing until re-registered; volume locks are gone');
    await this.volumes.leaseLost();
    const old = this.session;
    this.session = null;
    try {
      if (old) {
        await this.deps.metadata.revokeStaleLease(old.id).catch(() => undefined);
        await old.close().catch(() => undefined);
      }
      await this.becomeLive();
      await this.volumes.relock();
      this.log.info({}, 'etcd session re-established');
    } finally {
      this.reconnecting = false;
      if (this.lostWhileReconnecting) {
        this.lostWhileReconnecting = false;
        this.sessionLost();
      }
    }
  }

  // ------------------------------------------------------------ ring

  /** etcd's ring, whatever the node had (etcd wins over a ring kept in the data dir). */
  private takeRing(ring: RingRecord): void {
    const changed = this.ring?.version !== ring.version;
    this.ring = ring;
    if (changed) this.deps.onRing?.(ring);
  }

  private applyRing(ring: RingRecord): void {
    if (ring.version <= (this.ring?.version ?? 0)) return;
    this.takeRing(ring);
    this.wakeBackground();
    this.log.info({ ringVersion: ring.version, phase: ring.transition?.phase ?? 'stable', members: ring.members.length }, 'ring changed');
    void this.ack().catch((err: unknown) => this.backgroundFailed(err, 'could not acknowledge the ring'));
    this.updateDown();
  }

  /** Re-reads the ring if ours is older than `minVersion` (one read at a time). */
  async refreshRing(minVersion: number): Promise<void> {
    if (this.ring.version >= minVersion) return;
    if (this.ringRefresh === null) {
      this.ringRefresh = this.deps.metadata
        .getRing()
        .then((r) => this.applyRing(r))
        .finally(() => (this.ringRefresh = null));
    }
    await this.ringRefresh;
  }

  private async ack(): Promise<void> {
    const s = this.session;
    if (s === null) return;
    await s.ackRing({ peer: this.deps.store === null ? null : this.uuid, kind: this.deps.store === null ? 'client' : 'peer', ringVersion: this.ring.version, fenceRevision: this.fenceRevision });
  }

  /**
   * Has every live peer (and, with `clients`, every process doing I/O)
   * acknowledged this ring version? Positive answers are remembered.
   */
  async ringAcknowledged(version: number, clients: boolean): Promise<boolean> {
    const key = clients ? -version : version;
    if (this.acked.has(key)) return true;
    try {
      const [acks, peers] = await Promise.all([this.deps.metadata.listRingAcks(), this.deps.metadata.listPeers()]);
      const peerAck = new Map<string, number>();
      for (const a of acks) if (a.peer !== null) peerAck.set(a.peer, Math.max(peerAck.get(a.peer) ?? 0, a.ringVersion));
      const members = new Set(ringPeers(this.ring));
      for (const p of peers) if (members.has(p.uuid) && (peerAck.get(p.uuid) ?? 0) < version) return false;
      if (clients && acks.some((a) => a.ringVersion < version)) return false;
      this.acked.add(key);
      return true;
    } catch (err) {
      rethrowAssertion(err);
      return false;
    }
  }

  // ------------------------------------------------------------ peers

  private replicaOf(u: string): ReplicaApi | null {
    if (u === this.uuid && this.replicaObj !== null) return this.replicaObj;
    return this.deps.transport.peer(u);
  }

  private async refreshPeers(): Promise<void> {
    try {
      const peers = await this.deps.metadata.listPeers();
      // Before anything dials them: a coordinator opening a volume right
      // after a peer restarted on a new address must reach the new one.
      this.deps.transport.setPeers?.(peers);
      // A peer that came or went, or names other suspect volumes, may have made background work.
      const sig = peers
        .map((p) => `${p.uuid}:${(p.suspectVolumes ?? []).join(',')}`)
        .sort()
        .join(' ');
      if (sig !== this.peersSignature) {
        this.peersSignature = sig;
        this.wakeBackground();
      }
      this.peersKnown = new Set(peers.map((p) => p.uuid));
      this.peerRecords = new Map(peers.map((p) => [p.uuid, p]));
      this.updateDown();
      this.driver?.observePeers(peers);
    } catch (err) {
      rethrowAssertion(err);
      this.log.debug({ err }, 'could not list peers');
    }
  }

  /** Ring members without a live peer record are DOWN (never this node itself while it runs). */
  private updateDown(): void {
    if (this.ring === undefined) return;
    this.health.setDown(ringPeers(this.ring).filter((u) => u !== this.uuid && !this.peersKnown.has(u)));
  }

  /** Peers peers may hold: for transports that need addresses (torusd) and status. */
  knownPeers(): ReadonlySet<string> {
    return this.peersKnown;
  }

  private async probe(): Promise<void> {
    await Promise.all(
      this.health.failingPeers().map(async (u) => {
        const api = this.deps.transport.peer(u);
        if (api === null) return;
        try {
          // The deadline lets a peer client drop a probe that got no answer
          // at the replica timeout, as it does data-path calls, instead of
          // keeping it on the wire (a request slot) for its own 30 s limit;
          // withTimeout bounds transports that do not enforce deadlines.
          const ms = this.deps.settings.replication.replicaTimeoutMs;
          const ctx: RequestContext = { ...this.ctx.requestContext(), deadline: this.deps.clock.monotonic() + ms };
          await withTimeout(api.hello(ctx), ms, this.deps.clock, `probe of peer ${u}`);
          this.health.succeeded(u);
          this.log.info({ peer: u }, 'peer answers again');
          this.wakeBackground();
        } catch (err) {
          // Still failing, unless this process broke an invariant.
          rethrowAssertion(err);
        }
      }),
    );
  }

  private async heartbeat(): Promise<void> {
    const s = this.session;
    if (s === null || !this.live) return;
    try {
      this.refreshSuspectVolumes();
      if (this.deps.peerRecord) await s.putPeer(this.record());
      await this.ack();
      await this.volumes.relock();
      // A lock call whose answer was lost may have left a lock no one here
      // holds, keeping every other process out of its volume.
      await s.reclaimUnansweredLocks();
    } catch (err) {
      rethrowAssertion(err);
      this.log.warn({ err }, 'heartbeat to etcd failed');
    }
    await this.refreshPeers();
  }

  // ------------------------------------------------------------ background

  /**
   * One background pass; true when it found nothing to do, and the next
   * may wait longer (settings.replication.backgroundIdleIntervalMaxMs).
   * Anything else (work done or pending, a failure, not live) is not idle.
   */
  private async background(): Promise<boolean> {
    if (!this.live) return false;
    let idle = this.suspectVolumes.size === 0 && this.health.failingPeers().length === 0;
    for (const ov of await this.volumes.list()) {
      if (ov.jobs === null || ov.lockLost) {
        idle = false;
        continue;
      }
      try {
        const r = await ov.jobs.runOnce();
        if (!r.idle || r.caughtUp + r.moved + r.scrubbed + r.repaired > 0) idle = false;
      } catch (err) {
        idle = false;
        if (!isTorusError(err, 'TORUS_ERR_VOLUME_FENCED')) this.backgroundFailed(err, 'background work of an open volume failed', { volume: ov.name });
      }
    }
    const driverIdle = (await this.driver?.run().catch((err: unknown) => this.backgroundFailed(err, 'transition driver failed'))) ?? true;
    const maintenanceIdle = (await this.maintenance?.run().catch((err: unknown) => this.backgroundFailed(err, 'maintenance failed'))) ?? true;
    return idle && driverIdle === true && maintenanceIdle === true;
  }

  /** A failure of background work: logged, or, for a broken invariant, reported (util/invariant.ts). */
  private backgroundFailed(err: unknown, msg: string, fields: Record<string, unknown> = {}): void {
    if (isAssertionFailure(err)) this.invariantBroken(err, { module: 'node', peer: this.uuid, ...fields, where: msg });
    else this.log.warn({ err, ...fields }, msg);
  }

  /** The next background pass within backgroundIntervalMs (it may have backed off while idle). */
  private wakeBackground(): void {
    this.backgroundTimer?.wake();
  }

  /** Runs background work now (tests and the simulation drive it explicitly too). */
  async runBackground(): Promise<void> {
    await this.background();
  }

  // ------------------------------------------------------------ lifecycle

  /**
   * Orderly stop: volumes flushed and unlocked, watches cancelled, the
   * session revoked. Kernel attachments (src/attach/) keep some locks and the
   * lease itself alive for the next run: `keepLock` and `keepLease`.
   */
  async stop(opts: { keepLock?: (ov: OpenVolume) => boolean; keepLease?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.timers.cancelAll();
    for (const w of this.liveWaiters.splice(0)) w.reject(new TorusError('TORUS_ERR_STORE_CLOSED', 'node stopped before it joined'));
    // While the session is live: a maintenance lock released cleanly spares
    // the volume's next holder a whole-volume catch-up of this peer.
    const maintenanceStopped = this.maintenance?.stop(MAINTENANCE_STOP_WAIT_MS);
    await this.volumes.closeAll(opts.keepLock ? { keepLock: opts.keepLock } : {});
    await maintenanceStopped;
    this.live = false;
    // Side by side: against an etcd that does not answer each waits out a
    // call timeout, and one after the other they held a stop for 10 s more.
    // Neither needs the others done: cancelling a watch does not touch the
    // lease, and revoking the lease does not touch the watches.
    await Promise.all([
      this.stopRingWatch?.().catch(() => undefined),
      this.stopDeleteWatch?.().catch(() => undefined),
      this.stopFenceWatch?.().catch(() => undefined),
      opts.keepLease
        ? this.session?.suspend().catch((err: unknown) => this.log.warn({ err }, 'could not suspend the session lease'))
        : this.session?.close().catch((err: unknown) => this.log.warn({ err }, 'could not revoke the session lease')),
    ]);
    this.log.info({}, 'node stopped');
  }

  /**
   * The process begins to stop (before its NBD clients are let go): lock
   * releases etcd does not answer are not tried again (volume-manager.ts,
   * beginStop), since the lease holding them is revoked by stop() or ends
   * with its TTL.
   */
  beginStop(): void {
    this.volumes.beginStop();
  }

  /** Stops as a killed process would (simulation): no flush, no unlock, nothing more happens. */
  halt(): void {
    this.stopped = true;
    this.live = false;
    this.timers.cancelAll();
  }

  private async retryEtcd<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let delay = this.deps.settings.retryMs;
    for (;;) {
      if (this.stopped) throw new TorusError('TORUS_ERR_STORE_CLOSED', `node stopped while trying to ${what}`);
      try {
        return await fn();
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE') && !isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT') && !isTorusError(err, 'TORUS_ERR_TIMEOUT')) throw err;
        this.log.warn({ err, retryMs: delay }, `could not ${what}; retrying`);
        await new Promise<void>((r) => this.deps.clock.setTimeout(r, delay));
        delay = Math.min(5_000, delay * 2);
      }
    }
  }
}

/**
 * Every method of T, the optional ones too: an object that forwards T's
 * calls must name each, or one added later (optional, like
 * ReplicaApi.expectWrites) would be dropped without a word.
 */
type EveryMethod<T> = { [K in keyof T as NonNullable<T[K]> extends (...args: never[]) => unknown ? K : never]-?: NonNullable<T[K]> };
