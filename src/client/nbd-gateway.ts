import os from 'node:os';
import type { Logger } from 'pino';
import { ClusterNode, DEFAULT_NODE_SETTINGS } from '../cluster/node.js';
import { PeerDirectory } from '../cluster/peer-directory.js';
import type { OpenMode } from '../cluster/volume-manager.js';
import { TorusError } from '../errors/torus-error.js';
import { EtcdMetadata } from '../metadata/etcd-metadata.js';
import { NbdServer } from '../nbd/server.js';
import type { WriteLevel } from '../replication/settings.js';
import { systemClock } from '../util/clock.js';
import type { InvariantBroken } from '../util/invariant.js';
import { systemIds, systemRandom } from '../util/random.js';
import { VolumeExports } from '../volume/volume-exports.js';
import { resolveClusterSecret } from '../daemon/secret.js';

export interface NbdGatewayOptions {
  readonly etcdEndpoints: string[];
  readonly listen: { host: string; port: number };
  readonly mode: OpenMode;
  /** --cluster-secret-file; null reads the secret from etcd. */
  readonly secretFile: string | null;
  readonly writeLevel?: WriteLevel;
  readonly logger: Logger;
  /** A request or background work broke an invariant (util/invariant.ts): cmd/torusblk.ts logs and exits. */
  readonly onInvariantBroken: InvariantBroken;
}

/** How often the peer addresses are re-read from etcd. */
const PEER_REFRESH_MS = 5_000;

/**
 * `torusblk nbdserve`: an NBD server outside torusd. It holds no blocks: it
 * runs a cluster node without a store (the same replication code torusd
 * runs), reaching the ring's peers over the peer protocol, and takes volume
 * locks in etcd under its own lease like any other writer.
 */
export class NbdGateway {
  private metadata: EtcdMetadata | null = null;
  private peers: PeerDirectory | null = null;
  private node: ClusterNode | null = null;
  private nbd: NbdServer | null = null;
  private peerTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: NbdGatewayOptions) {}

  async start(): Promise<{ host: string; port: number }> {
    const log = this.opts.logger;
    const metadata = (this.metadata = new EtcdMetadata({ endpoints: this.opts.etcdEndpoints, logger: log }));
    const cluster = await metadata.getClusterConfig();
    if (!cluster) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the cluster is not initialised: run "torusctl init"');
    const secret = await resolveClusterSecret({ file: this.opts.secretFile, dataDir: null, metadata, logger: log });
    const uuid = systemIds.uuid();
    const incarnation = systemIds.uuid();
    const peers = (this.peers = new PeerDirectory({ blockSize: cluster.blockSize, clusterId: cluster.id, localUuid: uuid, incarnation, secret, clock: systemClock, logger: log }));
    peers.setPeers(await metadata.listPeers());
    this.peerTimer = setInterval(() => void metadata.listPeers().then((p) => peers.setPeers(p), () => undefined), PEER_REFRESH_MS);
    this.peerTimer.unref();
    const settings = { ...DEFAULT_NODE_SETTINGS, replication: { ...DEFAULT_NODE_SETTINGS.replication, ...(this.opts.writeLevel ? { writeLevel: this.opts.writeLevel } : {}) } };
    this.node = new ClusterNode({
      uuid,
      incarnation,
      metadata,
      store: null,
      fences: null,
      transport: peers,
      clock: systemClock,
      random: systemRandom,
      ids: systemIds,
      logger: log,
      settings,
      holder: `torusblk nbdserve on ${os.hostname()} (pid ${process.pid})`,
      peerRecord: null,
      onInvariantBroken: this.opts.onInvariantBroken,
    });
    await this.node.start();
    this.nbd = new NbdServer({ provider: new VolumeExports(metadata, this.node.volumes, this.opts.mode, { clock: systemClock, logger: log }), logger: log, onInvariantBroken: this.opts.onInvariantBroken });
    const bound = await this.nbd.listen(this.opts.listen.host, this.opts.listen.port);
    return { host: this.opts.listen.host, port: bound.port };
  }

  async stop(): Promise<void> {
    if (this.peerTimer) clearInterval(this.peerTimer);
    await this.nbd?.close();
    await this.node?.stop();
    await this.peers?.close();
    await this.metadata?.close();
  }
}
