import os from 'node:os';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { EtcdMetadata } from '../metadata/etcd-metadata.js';
import type { MetadataSession } from '../metadata/metadata-service.js';
import { NbdServer } from '../nbd/server.js';
import { ClusterPlacement } from '../volume/cluster-placement.js';
import { VolumeExports } from '../volume/volume-exports.js';
import { VolumeManager, type OpenMode } from '../volume/volume-manager.js';

export interface NbdGatewayOptions {
  readonly etcdEndpoints: string[];
  readonly listen: { host: string; port: number };
  readonly mode: OpenMode;
  readonly secret: string;
  readonly logger: Logger;
}

/**
 * `torusblk nbdserve`: an NBD server outside torusd. It holds no blocks; it
 * reaches the peers of the ring over the peer protocol, and takes volume
 * locks in etcd under its own lease like any other writer.
 */
export class NbdGateway {
  private metadata: EtcdMetadata | null = null;
  private session: MetadataSession | null = null;
  private placement: ClusterPlacement | null = null;
  private volumes: VolumeManager | null = null;
  private nbd: NbdServer | null = null;
  private stopRing: (() => Promise<void>) | null = null;
  private peerTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: NbdGatewayOptions) {}

  async start(): Promise<{ host: string; port: number }> {
    const log = this.opts.logger;
    const metadata = (this.metadata = new EtcdMetadata({ endpoints: this.opts.etcdEndpoints, logger: log }));
    const cluster = await metadata.getClusterConfig();
    if (!cluster) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the cluster is not initialised: run "torusctl init"');
    const uuid = `torusblk-${os.hostname()}-${process.pid}`;
    const placement = (this.placement = new ClusterPlacement({ self: null, blockSize: cluster.blockSize, clusterId: cluster.id, secret: this.opts.secret, logger: log, localUuid: uuid }));
    placement.setPeers(await metadata.listPeers());
    this.stopRing = await metadata.watchRing((ring) => {
      placement.setRing(ring);
      void metadata.listPeers().then((p) => placement.setPeers(p), () => undefined);
    });
    this.peerTimer = setInterval(() => void metadata.listPeers().then((p) => placement.setPeers(p), () => undefined), 5_000);
    this.peerTimer.unref();
    if (this.opts.mode === 'rw') {
      this.session = await metadata.openSession({ ttlSeconds: 30 });
      this.session.on((ev) => {
        if (ev.type === 'lost') {
          log.error({ err: ev.err }, 'etcd lease lost: volume locks are gone; writes are refused');
          void this.volumes?.leaseLost();
        }
      });
    }
    this.volumes = new VolumeManager({
      metadata,
      session: () => this.session,
      placement: () => placement,
      holder: `torusblk nbdserve on ${os.hostname()} (pid ${process.pid})`,
      logger: log,
    });
    this.nbd = new NbdServer({ provider: new VolumeExports(metadata, this.volumes, this.opts.mode), logger: log });
    const bound = await this.nbd.listen(this.opts.listen.host, this.opts.listen.port);
    return { host: this.opts.listen.host, port: bound.port };
  }

  async stop(): Promise<void> {
    if (this.peerTimer) clearInterval(this.peerTimer);
    await this.nbd?.close();
    await this.volumes?.closeAll();
    await this.stopRing?.();
    await this.placement?.close();
    await this.session?.close();
    await this.metadata?.close();
  }
}
