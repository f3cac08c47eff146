import { readFile, realpath, statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import type { FastifyInstance } from 'fastify';
import { ClusterNode, DEFAULT_NODE_SETTINGS } from '../cluster/node.js';
import { PeerDirectory } from '../cluster/peer-directory.js';
import { TorusError, isTorusError } from '../errors/torus-error.js';
import { buildHttpApp } from '../http/app.js';
import { createMetrics, type NbdCommandName, type TorusMetrics } from '../http/metrics.js';
import type { StatusDocument } from '../http/status.js';
import { EtcdMetadata } from '../metadata/etcd-metadata.js';
import type { ClusterConfig, PeerRecord, RingRecord } from '../model/records.js';
import { DEFAULT_BLOCK_SIZE_BYTES, DEFAULT_REPLICATION } from '../model/defaults.js';
import { NbdServer } from '../nbd/server.js';
import { formatPeerAddress } from '../peer/address.js';
import { PeerServer } from '../peer/server.js';
import { planRingChange } from '../ring/transition.js';
import { FileFencePersistence } from '../store/fence-file.js';
import { FileBlockStore } from '../store/file-block-store.js';
import { BufferPool, poisonFromEnv } from '../util/buffer-pool.js';
import { systemClock, type Clock } from '../util/clock.js';
import { crc32cDescription } from '../util/crc32c.js';
import type { InvariantBroken } from '../util/invariant.js';
import { systemIds, systemRandom } from '../util/random.js';
import { sleep } from '../util/timeout.js';
import { VolumeExports } from '../volume/volume-exports.js';
import { VERSION } from '../version.js';
import { AttachManager } from '../attach/attach-manager.js';
import { AttachApiServer } from '../attach/api-server.js';
import { attachSocketPath } from '../attach/api.js';
import type { DaemonConfig } from './config.js';
import { bindDataDirToCluster, clusterForStart, readStartCopies, RingCopyKeeper, type StartCluster, type StartCopies } from './cluster-copies.js';
import { claimDataDir, loadOrCreatePeerId, readLeaseFile, releaseDataDir, writeLeaseFile } from './identity.js';
import { classifyDataDirFs, mountHazards } from './data-dir-fs.js';
import { mountHolding, parseMountInfo, type MountEntry } from '../k8s/mount/mountinfo.js';
import { resolveClusterSecret } from './secret.js';
import { libuvWorkerThreads } from './process-limits.js';
import { listenRetrying } from './listen-retry.js';

/**
 * Lease TTL of the peer record and volume locks (Torus used 30 s). It bounds
 * both how long a restart may take without losing kernel attachments and how
 * soon another node can take a dead node's volumes; TORUS_LEASE_TTL_SECONDS
 * trades one for the other (README, "Kernel attach").
 */
function leaseTtlFromEnv(v: string | undefined): number {
  if (v === undefined || v === '') return 30;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 5 || n > 3600) throw new TorusError('TORUS_ERR_ARG_INVALID', `TORUS_LEASE_TTL_SECONDS must be a whole number from 5 to 3600, got "${v}"`);
  return n;
}

const PEER_REFRESH_MS = 5_000;
/** What torusd's buffer pool keeps on its free lists at most (README, "Memory"). */
export const POOL_FREE_BYTES_MAX = 16 * 1024 * 1024;
const RETRY_MS_MAX = 5_000;

/**
 * torusd: the shell around one cluster node (src/cluster/node.ts). It
 * brings the real resources (the data dir and its block store, etcd, TCP
 * listeners for peers, NBD and HTTP, the system clock) and wires them to
 * the node, which holds every rule.
 */
export class TorusDaemon {
  private readonly log: Logger;
  private readonly root: Logger;
  private readonly clock: Clock;
  /**
   * One pool, so one bound, for the data path: NBD payloads, the store's read
   * regions, peer frames. Its free lists keep POOL_FREE_BYTES_MAX at most.
   * Smaller is not better: a buffer the free lists cannot take is garbage
   * until V8's next full collection and a fresh one is allocated meanwhile
   * (8 MiB measured a higher peak in the bench than 16).
   */
  private readonly pool = new BufferPool({ poison: poisonFromEnv(process.env), freeBytesMax: POOL_FREE_BYTES_MAX });
  private metadata!: EtcdMetadata;
  private store!: FileBlockStore;
  private peerServer!: PeerServer;
  private peers!: PeerDirectory;
  private node!: ClusterNode;
  private nbd!: NbdServer;
  private http!: FastifyInstance;
  private metrics!: TorusMetrics;
  private cluster!: ClusterConfig;
  private ringCopy: RingCopyKeeper | null = null;
  private uuid = '';
  private capacity = 0;
  private addresses = { peer: '', nbd: null as string | null, http: null as string | null };
  private peerTimer: { cancel(): void } | null = null;
  private claimed = false;
  private stopping = false;
  private flex: { close(): Promise<void> } | null = null;
  // Kernel attach (src/attach/): devices that outlive this process.
  private attach: AttachManager | null = null;
  private attachApi: AttachApiServer | null = null;

  constructor(
    private readonly config: DaemonConfig,
    logger: Logger,
    /**
     * Where a broken invariant on a request path or in background work goes
     * (util/invariant.ts): cmd/torusd.ts logs it and exits with
     * EXIT_INVARIANT_BROKEN.
     */
    private readonly onInvariantBroken: InvariantBroken,
    clock: Clock = systemClock,
  ) {
    this.root = logger;
    this.log = logger.child({ module: 'torusd' });
    this.clock = clock;
  }

  async start(): Promise<void> {
    const cfg = this.config;
    const { uuid, created } = await loadOrCreatePeerId(cfg.dataDir);
    await claimDataDir(cfg.dataDir);
    this.claimed = true;
    this.uuid = uuid;
    this.log.info({ uuid, created, dataDir: path.resolve(cfg.dataDir), crc32c: crc32cDescription() }, 'peer identity');
    await this.checkDataDirFs();

    this.metadata = new EtcdMetadata({ endpoints: cfg.etcdEndpoints, logger: this.root, clock: this.clock });
    const start = await this.waitForCluster();
    this.cluster = start.cluster;
    // Started from the copies: etcd's config is checked against them once it answers (confirmCluster).
    const keptRing: RingRecord | null = start.source === 'copies' ? start.ring : null;
    if (start.source === 'etcd') await bindDataDirToCluster(cfg.dataDir, this.cluster);
    else {
      this.log.warn(
        { clusterId: this.cluster.id, ringVersion: start.ring.version },
        'etcd unreachable: starting from the cluster config and ring kept in the data dir; serving reads to peers until etcd answers',
      );
    }
    this.ringCopy = new RingCopyKeeper(cfg.dataDir, this.cluster.id, this.root);
    this.capacity = await this.resolveCapacity();
    const secret = await this.waitForSecret(start.source === 'copies');

    const registry = new Registry();
    this.metrics = createMetrics(registry);
    this.store = await FileBlockStore.open({
      dir: path.join(cfg.dataDir, 'store'),
      blockSize: this.cluster.blockSize,
      capacity: this.capacity,
      logger: this.root,
      clock: this.clock,
      onCrcFailure: () => this.metrics.storeCrcFailure(),
      pool: this.pool,
      checkpointIntervalMs: cfg.checkpointIntervalMs,
    });
    if (this.pool.poison) this.root.warn('buffer pool poisoning is on (TORUS_POOL_POISON=1): a debugging mode, slower');
    this.metrics.setBufferPoolSource(() => this.pool.stats());
    this.metrics.setStoreUsageSource(() => {
      const u = this.store.usage();
      return { capacityBytes: u.capacity, usedBytes: u.used };
    });

    const incarnation = systemIds.uuid();
    this.peers = new PeerDirectory({ blockSize: this.cluster.blockSize, clusterId: this.cluster.id, localUuid: uuid, incarnation, secret, clock: this.clock, logger: this.root, pool: this.pool });
    // From the copies nothing dials peers before the node is live, and it lists them then.
    if (start.source === 'etcd') this.peers.setPeers(await this.metadata.listPeers().catch(() => []));
    this.node = new ClusterNode({
      uuid,
      metadata: this.metadata,
      store: this.store,
      fences: new FileFencePersistence(path.join(cfg.dataDir, 'store')),
      transport: this.peers,
      clock: this.clock,
      random: systemRandom,
      ids: systemIds,
      logger: this.root,
      incarnation,
      settings: {
        ...DEFAULT_NODE_SETTINGS,
        sessionTtlSeconds: leaseTtlFromEnv(process.env['TORUS_LEASE_TTL_SECONDS']),
        downOutIntervalMs: cfg.downOutIntervalMs,
        replication: {
          ...DEFAULT_NODE_SETTINGS.replication,
          replicaTimeoutMs: cfg.replicaTimeoutMs,
          writeLevel: cfg.writeLevel,
          copyBytesPerSec: cfg.rebalanceBytesPerSec,
          scrubIntervalMs: cfg.scrubIntervalMs,
        },
      },
      holder: `torusd ${uuid} on ${nodeName()} (pid ${process.pid})`,
      peerRecord: () => this.peerRecord(),
      onSessionOpened: (id) => writeLeaseFile(cfg.dataDir, id),
      onRing: (ring) => this.ringCopy?.offer(ring),
      onLiveChange: (live) => this.metrics.setEtcdHealthy(live),
      onInvariantBroken: this.onInvariantBroken,
    });

    // Started from the copies: the replica answers reads as soon as the peer
    // port is bound, at the kept ring's version, and refuses every change
    // until the node has an etcd session (docs/replication.md, "Starting
    // while etcd is unreachable").
    if (keptRing !== null) await this.node.open({ ring: keptRing });

    this.peerServer = new PeerServer({
      replica: this.node.replicaHandle(),
      blockSize: this.cluster.blockSize,
      logger: this.root,
      clusterId: this.cluster.id,
      peerUuid: uuid,
      incarnation,
      secret,
      clock: this.clock,
      pool: this.pool,
      onInvariantBroken: this.onInvariantBroken,
    });
    const peerServer = this.peerServer;
    const peerBound = await listenRetrying('peer', () => peerServer.listen(cfg.peerAddress.host, cfg.peerAddress.port), { clock: this.clock, log: this.log });
    // Others dial the configured address; a port of 0 (tests) means the bound one.
    this.addresses.peer = formatPeerAddress({ host: cfg.peerAddress.host, port: peerBound.port });

    // Kernel attach: devices attached by the previous run keep their locks on
    // its lease; that lease is resumed below, not revoked.
    this.attach = new AttachManager({
      dataDir: cfg.dataDir,
      metadata: this.metadata,
      volumes: this.node.volumes,
      session: () => this.node.currentSession(),
      uuid,
      holder: `torusd ${uuid} on ${nodeName()} (pid ${process.pid})`,
      logger: this.root,
      faultInjection: process.env['TORUS_FAULT_INJECTION'] === '1',
      onInvariantBroken: this.onInvariantBroken,
    });
    const resumeLease = await this.attach.load();

    // etcd has the last word on what the copies said; until it answers, only the replica serves.
    if (keptRing !== null) await this.confirmCluster(secret);

    // A predecessor killed with -9 left its lease (and with it the locks of
    // the volumes it served) alive for up to a TTL. It is dead (we hold its
    // data dir), so revoke it: clients can reconnect at once.
    const stale = await readLeaseFile(cfg.dataDir);
    if (stale !== null && stale !== resumeLease) {
      await this.metadata.revokeStaleLease(stale).then(
        () => this.log.info({ lease: stale }, 'revoked the lease of the previous run'),
        (err) => this.log.warn({ err, lease: stale }, 'could not revoke the lease of the previous run; its locks expire with it'),
      );
    }
    const { resumed } = await this.node.start({ resumeLeaseId: resumeLease });
    this.metrics.setReplicationSource(() => {
      const ring = this.node.currentRing();
      return {
        ...this.node.stats,
        copiedBytes: this.node.throttle.totalBytes(),
        copyBytesPerSec: this.node.throttle.rate(),
        failingPeers: this.node.health.failingPeers().length,
        ringVersion: ring.version,
        ringPhase: ring.transition === null ? 0 : ring.transition.phase === 'moving' ? 1 : 2,
        downOutHeld: this.node.downOutHeld(),
      };
    });
    this.refreshPeersEvery();
    if (cfg.autoJoin) await this.joinRing();

    this.nbd = new NbdServer({
      provider: new VolumeExports(this.metadata, this.node.volumes, 'rw', { clock: this.clock, logger: this.root }),
      logger: this.root,
      onRequest: (r) => this.metrics.nbdRequest(r.command as NbdCommandName, r.bytes, r.latencyMs, r.error),
      onConnection: (event) => (event === 'open' ? this.metrics.nbdConnectionOpened() : this.metrics.nbdConnectionClosed()),
      pool: this.pool,
      onInvariantBroken: this.onInvariantBroken,
    });
    const nbd = this.nbd;
    const nbdBound = await listenRetrying('nbd', () => nbd.listen(cfg.nbd.host, cfg.nbd.port), { clock: this.clock, log: this.log });
    this.addresses.nbd = `${cfg.nbd.host}:${nbdBound.port}`;

    this.http = buildHttpApp({ registry, status: () => this.status(), health: () => this.health(), blocks: (id) => this.localBlocks(id), logger: this.root, clock: this.clock });
    const http = this.http;
    const listenHttp = (): Promise<string> =>
      http.listen({ host: cfg.http.host, port: cfg.http.port }).catch((err: Error) => {
        throw new TorusError('TORUS_ERR_DAEMON_START', `cannot listen for HTTP on ${cfg.http.host}:${cfg.http.port}: ${err.message}`, { cause: err });
      });
    await listenRetrying('http', listenHttp, { clock: this.clock, log: this.log });
    const httpAddr = this.http.server.address();
    this.addresses.http = `${cfg.http.host}:${typeof httpAddr === 'object' && httpAddr ? httpAddr.port : cfg.http.port}`;
    // The first record went out before the NBD and HTTP listeners were bound.
    await this.node.currentSession()?.putPeer(this.peerRecord()).catch((err) => this.log.warn({ err }, 'could not publish the peer record'));
    // Kernel attach: take back the previous run's devices, then serve the local attach API.
    await this.attach.resume(resumed);
    // What the previous run left on the resumed lease besides the devices
    // just taken back (an NBD client's volume, a maintenance pass: it was
    // killed, or etcd did not answer its unlock) would hold those volumes
    // for as long as this run keeps the lease alive (earlier-run-locks.ts).
    if (resumed) {
      await this.node
        .currentSession()
        ?.releaseLocksOfEarlierRun()
        .then(
          (locks) => this.log.info({ locks }, 'looked for locks the previous run left on the resumed lease'),
          (err: unknown) => this.log.warn({ err }, 'could not look for locks the previous run left on the resumed lease yet; tried again at each heartbeat'),
        );
    }
    this.attachApi = new AttachApiServer(this.attach, this.root);
    await this.attachApi.listen(attachSocketPath(cfg.dataDir));
    if (cfg.flex) {
      // The FlexVolume driver's requests (src/k8s/flex), on a unix socket
      // only; attachments go through the same AttachManager as the attach API.
      // Loaded only here: a torusd without --flex does not carry the driver's
      // modules in its heap (README, "Memory").
      const [{ startFlexService }, { kernelAttacher }] = await Promise.all([import('../k8s/flex/service.js'), import('../k8s/flex/attacher.js')]);
      this.flex = await startFlexService({
        socketPath: cfg.flex.socket,
        stateDir: cfg.flex.stateDir,
        localEtcd: cfg.etcdEndpoints,
        localClusterId: this.cluster.id,
        attacher: kernelAttacher(this.attach),
        logger: this.root,
      });
    }
    this.log.info({ uuid, peer: this.addresses.peer, nbd: this.addresses.nbd, http: this.addresses.http, capacity: this.capacity, blockSize: this.cluster.blockSize, threadpoolThreads: libuvWorkerThreads() }, 'torusd ready');
  }

  /** Orderly stop: NBD clients get their replies, volumes flush, locks and the lease are released. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.peerTimer?.cancel();
    this.node?.beginStop();
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        this.log.error({ err, step: what }, 'shutdown step failed');
      }
    };
    if (this.flex) await step('flex', () => this.flex!.close());
    // Kernel attach: devices stay attached; their volumes flush but keep their locks and our lease.
    if (this.attachApi) await step('attach api', () => this.attachApi!.close());
    if (this.attach) await step('attachments', () => this.attach!.suspend());
    const keepLease = this.attach?.keepsLease() ?? false;
    if (this.nbd) await step('nbd', () => this.nbd.close());
    if (this.http) await step('http', () => this.http.close());
    if (this.node) await step('node', () => this.node.stop({ keepLock: (ov) => this.attach?.keepsLock(ov) ?? false, keepLease }));
    if (this.peerServer) await step('peer server', () => this.peerServer.close());
    if (this.peers) await step('peer clients', () => this.peers.close());
    if (this.ringCopy) await step('ring copy', () => this.ringCopy!.settled());
    if (this.store) await step('store', () => this.store.close());
    if (this.metadata) await step('etcd', () => this.metadata.close());
    if (this.claimed) await step('data dir', () => releaseDataDir(this.config.dataDir));
    this.log.info({}, 'torusd stopped');
  }

  // ------------------------------------------------------------ etcd: cluster and ring

  /**
   * Waits for etcd and an initialised cluster (or makes one with
   * --debug-init). While etcd is unreachable, a data dir that kept the
   * cluster config and a ring (src/daemon/cluster-copies.ts) starts from
   * them instead; etcd wins whenever it answers.
   */
  private async waitForCluster(): Promise<StartCluster> {
    // Read once, and only when etcd does not answer (nothing writes them meanwhile).
    let kept: Promise<StartCopies | null> | null = null;
    return this.retryWhileUnreachable(() => clusterForStart(() => this.clusterFromEtcd(), () => (kept ??= this.keptCopies())));
  }

  /** The copies in the data dir, or null (none, or unusable: said once, and the start waits for etcd). */
  private async keptCopies(): Promise<StartCopies | null> {
    try {
      return await readStartCopies(this.config.dataDir);
    } catch (err) {
      this.log.warn({ err }, 'the cluster copies in the data dir cannot be used; the start waits for etcd');
      return null;
    }
  }

  private async clusterFromEtcd(): Promise<ClusterConfig> {
    for (;;) {
      const existing = await this.metadata.getClusterConfig();
      if (existing) return existing;
      if (!this.config.debugInit) {
        throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', `the cluster in etcd at ${this.config.etcdEndpoints.join(',')} is not initialised: run "torusctl init" or start torusd with --debug-init`);
      }
      try {
        const made = await this.metadata.initCluster({ blockSize: DEFAULT_BLOCK_SIZE_BYTES, replication: DEFAULT_REPLICATION }, { force: false });
        this.log.info({ blockSize: made.blockSize, replication: made.replication }, 'cluster initialised (--debug-init)');
        return made;
      } catch (err) {
        // Another peer with --debug-init won the race: use its config.
        if (!isTorusError(err, 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED')) throw err;
      }
    }
  }

  /**
   * The cluster secret (secret.ts); while etcd is unreachable and the data
   * dir has no copy of it, waits for etcd as for the cluster config. With
   * `etcdUnreachable` (a start from the copies) the first attempt takes the
   * copy without asking etcd again: confirmCluster checks it against etcd.
   */
  private waitForSecret(etcdUnreachable = false): Promise<string> {
    const cfg = this.config;
    let first = etcdUnreachable;
    return this.retryWhileUnreachable(() => {
      const skip = first;
      first = false;
      return resolveClusterSecret({ file: cfg.clusterSecretFile, dataDir: cfg.dataDir, metadata: this.metadata, logger: this.root, etcdUnreachable: skip });
    });
  }

  /**
   * A start from the copies goes on once etcd answers, and only if etcd
   * holds the same cluster (else TORUS_ERR_DATA_DIR_FOREIGN) with the
   * secret this run authenticates peers with (else it must restart to use
   * etcd's): then the copy of the config is refreshed and the node joins.
   */
  private async confirmCluster(secretInUse: string): Promise<void> {
    const cfg = this.config;
    const fromEtcd = await this.retryWhileUnreachable(() => this.clusterFromEtcd());
    await bindDataDirToCluster(cfg.dataDir, fromEtcd);
    if (fromEtcd.blockSize !== this.cluster.blockSize) {
      throw new TorusError('TORUS_ERR_DAEMON_START', `etcd holds block size ${fromEtcd.blockSize} for cluster ${fromEtcd.id}, the copy this run started from ${this.cluster.blockSize}: start again`);
    }
    this.cluster = fromEtcd;
    const secret = await this.waitForSecret();
    if (secret !== secretInUse) {
      throw new TorusError('TORUS_ERR_DAEMON_START', 'the cluster secret etcd holds differs from the copy this run started with: start again to use it');
    }
    this.log.info({ clusterId: fromEtcd.id }, 'etcd answers again: joining the cluster');
  }

  /** Runs `fn` until etcd answers (backing off to RETRY_MS_MAX); a stop ends the wait. */
  private async retryWhileUnreachable<T>(fn: () => Promise<T>): Promise<T> {
    let delay = 200;
    for (;;) {
      if (this.stopping) throw new TorusError('TORUS_ERR_DAEMON_START', 'torusd was stopped while it waited for etcd');
      try {
        return await fn();
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE') || this.stopping) throw err;
        this.log.warn({ err, retryMs: delay }, 'etcd unreachable; retrying');
        await sleep(this.clock, delay);
        delay = Math.min(RETRY_MS_MAX, delay * 2);
      }
    }
  }

  /** --auto-join: a ring change like `torusctl peer add`, so blocks move to this peer before it serves them. */
  private async joinRing(): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const ring = await this.metadata.getRing();
      if (ring.members.some((m) => m.uuid === this.uuid)) return;
      const members = [...ring.members, { uuid: this.uuid, weight: this.capacity }];
      const next = planRingChange(ring, members, ring.replication, ring.minReplicas, `peer add ${this.uuid} (--auto-join)`, this.clock.now());
      if (next === null) return;
      try {
        await this.metadata.setRing(next);
        this.log.info({ ringVersion: next.version, transition: next.transition !== null }, 'joined the ring (--auto-join)');
        return;
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT')) throw err;
      }
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', 'could not join the ring: it kept changing under us');
  }

  /**
   * Peer addresses for the transport while the node is not live (session
   * lost, re-registering). A live node's heartbeat lists the peers and hands
   * them to the same transport every heartbeat: listing them here too only
   * doubled an idle torusd's etcd calls.
   */
  private refreshPeersEvery(): void {
    const tick = () => {
      if (this.node?.isLive) {
        if (!this.stopping) this.peerTimer = this.clock.setTimeout(tick, PEER_REFRESH_MS);
        return;
      }
      void this.metadata
        .listPeers()
        .then((p) => this.peers.setPeers(p), () => undefined)
        .finally(() => {
          if (!this.stopping) this.peerTimer = this.clock.setTimeout(tick, PEER_REFRESH_MS);
        });
    };
    this.peerTimer = this.clock.setTimeout(tick, PEER_REFRESH_MS);
  }

  // ------------------------------------------------------------ helpers

  private peerRecord(): PeerRecord {
    const u = this.store.usage();
    return {
      schema: 1,
      uuid: this.uuid,
      address: this.addresses.peer,
      nbdAddress: this.addresses.nbd,
      httpAddress: this.addresses.http,
      capacity: u.capacity,
      used: u.used,
      updatedAt: new Date(this.clock.now()).toISOString(),
      hostname: nodeName(),
      pid: process.pid,
      version: VERSION,
      incarnation: this.node?.incarnation ?? '',
      rebalanceBytesPerSec: Math.round(this.node?.throttle.rate() ?? 0),
    };
  }

  /** This peer's copies of one volume's blocks, for GET /v1/blocks. */
  private localBlocks(volumeId: number) {
    const out = [];
    let after = null;
    for (;;) {
      const page = this.store.list({ volumeId, after, limit: 4096 });
      for (const b of page) out.push({ index: b.ref.index, generation: b.ref.generation, state: b.state, version: b.version, digest: b.digest, suspect: b.suspect });
      if (page.length < 4096) return out;
      after = page[page.length - 1]!.ref;
    }
  }

  /** Logs the data dir's file system and mount, and warns about what cannot keep data or weakens a FLUSH (data-dir-fs.ts). */
  private async checkDataDirFs(): Promise<void> {
    const dataDir = await realpath(this.config.dataDir);
    const fs = classifyDataDirFs((await statfs(dataDir)).type);
    let mount: MountEntry | null = null;
    try {
      mount = mountHolding(parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8')), dataDir);
    } catch (err) {
      this.log.debug({ err }, 'could not read /proc/self/mountinfo');
    }
    const fields = { dataDir, fs: fs.name, verdict: fs.verdict, mountPoint: mount?.mountPoint, device: mount?.source };
    this.log.info({ ...fields, options: mount ? [...new Set([...mount.options, ...mount.superOptions])].join(',') : undefined }, 'data dir file system');
    if (fs.verdict === 'ephemeral' || fs.verdict === 'remote') this.log.warn(fields, `the data dir is on ${fs.name}: ${fs.why}`);
    for (const hazard of mount ? mountHazards(mount) : []) this.log.warn(fields, `the data dir's mount: ${hazard}`);
  }

  private async resolveCapacity(): Promise<number> {
    const size = this.config.size;
    if ('bytes' in size) return size.bytes;
    const st = await statfs(this.config.dataDir);
    return Math.floor((st.blocks * st.bsize * size.percent) / 100);
  }

  private async status(): Promise<StatusDocument> {
    const u = this.store.usage();
    const open = await this.node.volumes.list();
    const ring = this.node.currentRing();
    return {
      uuid: this.uuid,
      version: VERSION,
      addresses: { ...this.addresses },
      capacity: u.capacity,
      used: u.used,
      openVolumes: open.map((ov) => ({ name: ov.name, id: ov.volume.record.id, mode: ov.mode, connections: ov.users, lockToken: ov.lock?.token ?? null })),
      etcd: { endpoints: this.config.etcdEndpoints, healthy: this.node.isLive },
      crc32c: crc32cDescription(),
      ring: { version: ring.version, phase: ring.transition?.phase ?? 'stable', members: ring.members.length, replication: ring.replication, minReplicas: ring.minReplicas },
      replication: { copiedBytes: this.node.throttle.totalBytes(), copyBytesPerSec: Math.round(this.node.throttle.rate()), failingPeers: this.node.health.failingPeers(), peerRequestsInFlight: this.peers.requestsInFlight() },
    };
  }

  private health() {
    const ring = this.node.currentRing();
    const member = ring.members.some((m) => m.uuid === this.uuid);
    const ok = this.node.isLive;
    return {
      ok,
      checks: {
        etcd: { ok, ...(ok ? {} : { detail: 'etcd session lost or not yet re-established' }) },
        ring: { ok: true, detail: member ? 'member' : 'not a ring member (torusctl peer add or --auto-join)' },
      },
    };
  }
}

/**
 * The name this node goes by in lock holders and the peer record. In a pod
 * the hostname is the pod's name; the DaemonSet passes the node's name in
 * TORUS_NODE_NAME, so "in use by torusd ... on <node>" names the node.
 */
function nodeName(): string {
  const fromEnv = process.env['TORUS_NODE_NAME']?.trim();
  return fromEnv ? fromEnv : os.hostname();
}
