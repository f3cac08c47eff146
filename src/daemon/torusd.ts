import { readFile, statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import type { FastifyInstance } from 'fastify';
import { TorusError, isTorusError } from '../errors/torus-error.js';
import { buildHttpApp } from '../http/app.js';
import { createMetrics, type NbdCommandName, type TorusMetrics } from '../http/metrics.js';
import type { StatusDocument } from '../http/status.js';
import { EtcdMetadata } from '../metadata/etcd-metadata.js';
import type { MetadataSession } from '../metadata/metadata-service.js';
import type { ClusterConfig, PeerRecord, RingRecord } from '../model/records.js';
import { NbdServer } from '../nbd/server.js';
import { formatPeerAddress } from '../peer/address.js';
import { PeerServer } from '../peer/server.js';
import { FileBlockStore } from '../store/file-block-store.js';
import { systemClock, type Clock } from '../util/clock.js';
import { crc32cDescription } from '../util/crc32c.js';
import { VolumeExports } from '../volume/volume-exports.js';
import { VolumeManager } from '../volume/volume-manager.js';
import { ClusterPlacement } from '../volume/cluster-placement.js';
import type { DaemonConfig } from './config.js';
import { bindDataDirToCluster, claimDataDir, loadOrCreatePeerId, readLeaseFile, releaseDataDir, writeLeaseFile } from './identity.js';
import { DEFAULT_BLOCK_SIZE_BYTES, DEFAULT_REPLICATION } from '../model/defaults.js';
import { VERSION } from '../version.js';
import { kernelAttacher } from '../k8s/flex/attacher.js';
import { startFlexService } from '../k8s/flex/service.js';
import { AttachManager } from '../attach/attach-manager.js';
import { AttachApiServer } from '../attach/api-server.js';
import { attachSocketPath } from '../attach/api.js';

/**
 * Lease TTL of the peer record and volume locks (Torus used 30 s). It bounds
 * both how long a restart may take without losing kernel attachments and how
 * soon another node can take a dead node's volumes; TORUS_LEASE_TTL_SECONDS
 * trades one for the other (README, "Kernel attach").
 */
const LEASE_TTL_SECONDS = leaseTtlFromEnv(process.env.TORUS_LEASE_TTL_SECONDS);

function leaseTtlFromEnv(v: string | undefined): number {
  if (v === undefined || v === '') return 30;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 5 || n > 3600) throw new TorusError('TORUS_ERR_ARG_INVALID', `TORUS_LEASE_TTL_SECONDS must be a whole number from 5 to 3600, got "${v}"`);
  return n;
}
const HEARTBEAT_MS = 5_000;
const GC_INTERVAL_MS = 30_000;
const RETRY_MS_MAX = 5_000;

/**
 * torusd: one peer of the cluster. Wires the local block store, the peer
 * listener, the etcd session (membership, ring, volume locks), the NBD server
 * and the HTTP endpoints. Each part is its own module; this file only wires
 * and supervises them.
 */
export class TorusDaemon {
  private readonly log: Logger;
  /** Parts get the root logger and add their own `module` field. */
  private readonly root: Logger;
  private readonly clock: Clock;
  private metadata!: EtcdMetadata;
  private store!: FileBlockStore;
  private peerServer!: PeerServer;
  private nbd!: NbdServer;
  private http!: FastifyInstance;
  private metrics!: TorusMetrics;
  private placement!: ClusterPlacement;
  private volumes!: VolumeManager;
  private session: MetadataSession | null = null;
  private cluster!: ClusterConfig;
  private uuid = '';
  private capacity = 0;
  private addresses = { peer: '', nbd: null as string | null, http: null as string | null };
  private stopRingWatch: (() => Promise<void>) | null = null;
  private stopVolumeWatch: (() => Promise<void>) | null = null;
  private gcRunning = false;
  private claimed = false;
  private gcAgain = false;
  private timers: { cancel(): void }[] = [];
  private stopping = false;
  private etcdHealthy = false;
  private reconnecting = false;
  private flex: { close(): Promise<void> } | null = null;
  // Kernel attach (src/attach/): devices that outlive this process.
  private attach: AttachManager | null = null;
  private attachApi: AttachApiServer | null = null;

  constructor(
    private readonly config: DaemonConfig,
    logger: Logger,
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

    this.metadata = new EtcdMetadata({ endpoints: cfg.etcdEndpoints, logger: this.root, clock: this.clock });
    this.cluster = await this.waitForCluster();
    await bindDataDirToCluster(cfg.dataDir, this.cluster.id);
    this.capacity = await this.resolveCapacity();

    const registry = new Registry();
    this.metrics = createMetrics(registry);
    this.store = await FileBlockStore.open({
      dir: path.join(cfg.dataDir, 'store'),
      blockSize: this.cluster.blockSize,
      capacity: this.capacity,
      logger: this.root,
      clock: this.clock,
      onCrcFailure: () => this.metrics.storeCrcFailure(),
    });
    this.metrics.setStoreUsageSource(() => {
      const u = this.store.usage();
      return { capacityBytes: u.capacity, usedBytes: u.used };
    });
    const secret = await this.loadSecret();

    this.peerServer = new PeerServer({ store: this.store, logger: this.root, clusterId: this.clusterId(), peerUuid: uuid, secret, clock: this.clock });
    const peerBound = await this.peerServer.listen(cfg.peerAddress.host, cfg.peerAddress.port);
    // Others dial the configured address; a port of 0 (tests) means the bound one.
    this.addresses.peer = formatPeerAddress({ host: cfg.peerAddress.host, port: peerBound.port });

    this.placement = new ClusterPlacement({ self: { uuid, store: this.store }, blockSize: this.cluster.blockSize, clusterId: this.clusterId(), secret, logger: this.root, localUuid: uuid });
    this.volumes = new VolumeManager({
      metadata: this.metadata,
      session: () => this.session,
      placement: () => this.placement,
      holder: `torusd ${uuid} on ${os.hostname()} (pid ${process.pid})`,
      logger: this.root,
      clock: this.clock,
    });

    // Kernel attach: devices attached by the previous run keep their locks on
    // its lease; that lease is resumed below, not revoked.
    this.attach = new AttachManager({
      dataDir: cfg.dataDir,
      metadata: this.metadata,
      volumes: this.volumes,
      session: () => this.session,
      uuid,
      logger: this.root,
      faultInjection: process.env.TORUS_FAULT_INJECTION === '1',
    });
    const resumeLease = await this.attach.load();

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
    const resumed = await this.openSession(resumeLease);
    await this.refreshPeers();
    this.stopRingWatch = await this.metadata.watchRing((ring) => this.onRing(ring));
    if (cfg.autoJoin) await this.joinRing();

    this.nbd = new NbdServer({
      provider: new VolumeExports(this.metadata, this.volumes, 'rw'),
      logger: this.root,
      onRequest: (r) => this.metrics.nbdRequest(r.command as NbdCommandName, r.bytes, r.latencyMs, r.error),
      onConnection: (event) => (event === 'open' ? this.metrics.nbdConnectionOpened() : this.metrics.nbdConnectionClosed()),
    });
    const nbdBound = await this.nbd.listen(cfg.nbd.host, cfg.nbd.port);
    this.addresses.nbd = `${cfg.nbd.host}:${nbdBound.port}`;

    this.http = buildHttpApp({ registry, status: () => this.status(), health: () => this.health(), logger: this.root, clock: this.clock });
    await this.http.listen({ host: cfg.http.host, port: cfg.http.port });
    const httpAddr = this.http.server.address();
    this.addresses.http = `${cfg.http.host}:${typeof httpAddr === 'object' && httpAddr ? httpAddr.port : cfg.http.port}`;

    this.every(HEARTBEAT_MS, () => this.heartbeat());
    // Deletions free space at once; the periodic run catches deletions made
    // while this peer was down or its watch was disconnected.
    this.stopVolumeWatch = await this.metadata.watchVolumeDeletes(() => void this.collectGarbage());
    this.every(GC_INTERVAL_MS, () => this.collectGarbage());
    void this.collectGarbage();
    // The first record went out before the NBD and HTTP listeners were bound.
    await this.session?.putPeer(this.peerRecord()).catch((err) => this.log.warn({ err }, 'could not publish the peer record'));
    // Kernel attach: take back the previous run's devices, then serve the local attach API.
    await this.attach.resume(resumed);
    this.attachApi = new AttachApiServer(this.attach, this.root);
    await this.attachApi.listen(attachSocketPath(cfg.dataDir));
    if (cfg.flex) {
      // The FlexVolume driver's requests (src/k8s/flex), on a unix socket
      // only; attachments go through the same AttachManager as the attach API.
      this.flex = await startFlexService({
        socketPath: cfg.flex.socket,
        stateDir: cfg.flex.stateDir,
        localEtcd: cfg.etcdEndpoints,
        localClusterId: this.cluster.id,
        attacher: kernelAttacher(this.attach),
        logger: this.root,
      });
    }
    this.log.info({ uuid, peer: this.addresses.peer, nbd: this.addresses.nbd, http: this.addresses.http, capacity: this.capacity, blockSize: this.cluster.blockSize }, 'torusd ready');
  }

  /** Orderly stop: NBD clients get their replies, volumes flush, locks and the lease are released. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) t.cancel();
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
    if (this.volumes) await step('volumes', () => this.volumes.closeAll({ keepLock: (ov) => this.attach?.keepsLock(ov) ?? false }));
    if (this.http) await step('http', () => this.http.close());
    if (this.stopRingWatch) await step('ring watch', () => this.stopRingWatch!());
    if (this.stopVolumeWatch) await step('volume watch', () => this.stopVolumeWatch!());
    if (this.peerServer) await step('peer server', () => this.peerServer.close());
    if (this.placement) await step('peer clients', () => this.placement.close());
    if (this.store) await step('store', () => this.store.close());
    if (this.session) await step('session', () => (keepLease ? this.session!.suspend() : this.session!.close()));
    if (this.metadata) await step('etcd', () => this.metadata.close());
    if (this.claimed) await step('data dir', () => releaseDataDir(this.config.dataDir));
    this.log.info({}, 'torusd stopped');
  }

  // ------------------------------------------------------------ etcd: cluster, session, ring

  /** Waits for etcd and an initialised cluster (or makes one with --debug-init). */
  private async waitForCluster(): Promise<ClusterConfig> {
    let delay = 200;
    for (;;) {
      try {
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
          if (isTorusError(err, 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED')) continue;
          throw err;
        }
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE')) throw err;
        this.log.warn({ err, retryMs: delay }, 'etcd unreachable; retrying');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(RETRY_MS_MAX, delay * 2);
      }
    }
  }

  /** Returns true when `resumeLeaseId` (kernel attachments of the previous run) was resumed. */
  private async openSession(resumeLeaseId: string | null = null): Promise<boolean> {
    let session: MetadataSession | null = null;
    if (resumeLeaseId !== null) {
      session = await this.metadata.resumeSession({ leaseId: resumeLeaseId, ttlSeconds: LEASE_TTL_SECONDS }).catch((err: unknown) => {
        this.log.error({ err, lease: resumeLeaseId }, 'could not resume the lease of the attached devices; their volumes may have been taken over');
        return null;
      });
    }
    const resumed = session !== null;
    session ??= await this.metadata.openSession({ ttlSeconds: LEASE_TTL_SECONDS });
    session.on((ev) => {
      if (ev.type === 'degraded') {
        this.etcdHealthy = false;
        this.metrics.setEtcdHealthy(false);
        this.log.warn({ err: ev.err }, 'etcd keepalive failing; serving on until the lease deadline');
      } else if (ev.type === 'healthy') {
        this.etcdHealthy = true;
        this.metrics.setEtcdHealthy(true);
        this.log.info({}, 'etcd keepalive healthy again');
      } else if (ev.type === 'lost') {
        this.etcdHealthy = false;
        this.metrics.setEtcdHealthy(false);
        this.log.error({ err: ev.err }, 'etcd lease lost: volume locks are gone; reconnecting');
        void this.volumes.leaseLost().then(() => this.reconnect());
      }
    });
    this.session = session;
    await writeLeaseFile(this.config.dataDir, session.id);
    this.etcdHealthy = true;
    this.metrics.setEtcdHealthy(true);
    await session.putPeer(this.peerRecord());
    return resumed;
  }

  /** After a lost lease: a new session, the peer record again, the locks again. */
  private async reconnect(): Promise<void> {
    if (this.reconnecting || this.stopping) return;
    this.reconnecting = true;
    const old = this.session;
    this.session = null;
    let delay = 200;
    try {
      while (!this.stopping) {
        try {
          // Our old lease may outlive the outage on etcd's side (its clock
          // stood still too); its locks would refuse our own relock. We know
          // it is dead to us, so revoke it first.
          if (old) {
            await this.metadata.revokeStaleLease(old.id);
            await old.close().catch(() => undefined);
          }
          await this.openSession();
          await this.volumes.relock();
          this.log.info({}, 'etcd session re-established');
          return;
        } catch (err) {
          this.log.warn({ err, retryMs: delay }, 'etcd session could not be re-established; retrying');
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(RETRY_MS_MAX, delay * 2);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  private onRing(ring: RingRecord): void {
    this.placement.setRing(ring);
    const member = ring.members.some((m) => m.uuid === this.uuid);
    this.log.info({ version: ring.version, replication: ring.replication, members: ring.members.length, member }, 'ring changed');
    void this.refreshPeers();
  }

  private async joinRing(): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const ring = await this.metadata.getRing();
      if (ring.members.some((m) => m.uuid === this.uuid)) return;
      try {
        await this.metadata.setRing({ ...ring, version: ring.version + 1, members: [...ring.members, { uuid: this.uuid, weight: this.capacity }] });
        this.log.info({ version: ring.version + 1 }, 'joined the ring (--auto-join)');
        return;
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT')) throw err;
      }
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', 'could not join the ring: it kept changing under us');
  }

  private async heartbeat(): Promise<void> {
    const session = this.session;
    if (!session) return;
    this.metrics.setVolumesOpen((await this.volumes.list()).length);
    try {
      await session.putPeer(this.peerRecord());
      // A relock that failed after a reconnect (the old lock not yet gone) is
      // tried again on every heartbeat; nothing to do when no lock was lost.
      await this.volumes.relock();
      await this.refreshPeers();
    } catch (err) {
      this.log.warn({ err }, 'heartbeat to etcd failed');
    }
  }

  private async refreshPeers(): Promise<void> {
    try {
      this.placement.setPeers(await this.metadata.listPeers());
    } catch (err) {
      this.log.warn({ err }, 'could not list peers');
    }
  }

  /**
   * Frees blocks of deleted volumes. Only volumes that etcd *said* are gone:
   * a failed read throws and nothing is deleted; ids above the highest id
   * etcd has handed out may belong to volumes created since, so they stay.
   */
  private async collectGarbage(): Promise<void> {
    if (this.gcRunning) {
      this.gcAgain = true;
      return;
    }
    this.gcRunning = true;
    try {
      const { live, lastId } = await this.metadata.volumeIdsForGc();
      const ids = new Set(live);
      for (const id of this.store.volumeIds()) {
        if (!ids.has(id) && id <= lastId) {
          this.log.info({ volumeId: id }, 'freeing the blocks of a deleted volume');
          await this.store.deleteVolume(id);
        }
      }
    } catch (err) {
      this.log.warn({ err }, 'garbage collection skipped: could not list volumes');
    } finally {
      this.gcRunning = false;
      if (this.gcAgain && !this.stopping) {
        this.gcAgain = false;
        void this.collectGarbage();
      }
    }
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
      hostname: os.hostname(),
      pid: process.pid,
      version: VERSION,
    };
  }

  private clusterId(): string {
    return this.cluster.id;
  }

  private async resolveCapacity(): Promise<number> {
    const size = this.config.size;
    if ('bytes' in size) return size.bytes;
    const st = await statfs(this.config.dataDir);
    return Math.floor((st.blocks * st.bsize * size.percent) / 100);
  }

  private async loadSecret(): Promise<string> {
    const file = this.config.clusterSecretFile;
    if (!file) return '';
    try {
      return (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read the cluster secret file ${file}: ${(err as Error).message}`, { cause: err });
    }
  }

  private every(ms: number, fn: () => Promise<void>): void {
    let handle: { cancel(): void };
    const tick = () => {
      void fn().finally(() => {
        if (!this.stopping) handle = this.clock.setTimeout(tick, ms);
      });
    };
    handle = this.clock.setTimeout(tick, ms);
    this.timers.push({ cancel: () => handle.cancel() });
  }

  private async status(): Promise<StatusDocument> {
    const u = this.store.usage();
    const open = await this.volumes.list();
    return {
      uuid: this.uuid,
      version: VERSION,
      addresses: { ...this.addresses },
      capacity: u.capacity,
      used: u.used,
      openVolumes: open.map((ov) => ({ name: ov.name, id: ov.volume.record.id, mode: ov.mode, connections: ov.users, lockToken: ov.lock?.token ?? null })),
      etcd: { endpoints: this.config.etcdEndpoints, healthy: this.etcdHealthy },
      crc32c: crc32cDescription(),
    };
  }

  private health() {
    const ring = this.placement.getRing();
    const member = ring.members.some((m) => m.uuid === this.uuid);
    return {
      ok: this.etcdHealthy,
      checks: {
        etcd: { ok: this.etcdHealthy, ...(this.etcdHealthy ? {} : { detail: 'etcd session lost or keepalive failing' }) },
        ring: { ok: true, detail: member ? 'member' : 'not a ring member (torusctl peer add or --auto-join)' },
      },
    };
  }
}
