import type { Logger } from 'pino';
import type { PeerTransport, ReplicaApi } from '../model/replica-api.js';
import type { PeerRecord } from '../model/records.js';
import { PeerClient } from '../peer/client.js';
import type { BufferPool } from '../util/buffer-pool.js';
import type { Clock } from '../util/clock.js';

export interface PeerDirectoryOptions {
  readonly blockSize: number;
  readonly clusterId: string;
  /** This process's uuid in peer handshakes. */
  readonly localUuid: string;
  /** This process's incarnation, sent in handshakes. */
  readonly incarnation: string;
  readonly secret: string;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Where READ replies are received (the daemon's data-path pool); plain buffers by default. */
  readonly pool?: BufferPool;
}

/**
 * The TCP transport of torusd and torusblk: one peer client per peer uuid,
 * dialled at the address the peer publishes in etcd. A peer that moved
 * gets a new client; one that is unknown has no replica API (the
 * coordinator counts it as unreachable).
 */
export class PeerDirectory implements PeerTransport {
  private readonly addresses = new Map<string, string>();
  private readonly clients = new Map<string, PeerClient>();
  private readonly restartListeners: ((uuid: string) => void)[] = [];
  /**
   * The last incarnation each peer answered as, kept across its clients (a
   * peer that restarted on a new address gets a new client, whose first
   * handshake has no previous incarnation of its own).
   */
  private readonly incarnations = new Map<string, string>();
  private readonly restartCounts = new Map<string, number>();

  constructor(private readonly opts: PeerDirectoryOptions) {}

  setPeers(peers: readonly PeerRecord[]): void {
    for (const p of peers) {
      const before = this.addresses.get(p.uuid);
      if (before !== undefined && before !== p.address) {
        const old = this.clients.get(p.uuid);
        this.clients.delete(p.uuid);
        void old?.close();
      }
      this.addresses.set(p.uuid, p.address);
    }
  }

  peer(uuid: string): ReplicaApi | null {
    let c = this.clients.get(uuid);
    if (c === undefined) {
      const address = this.addresses.get(uuid);
      if (address === undefined) return null;
      c = new PeerClient({
        address,
        blockSize: this.opts.blockSize,
        clusterId: this.opts.clusterId,
        peerUuid: this.opts.localUuid,
        remotePeerUuid: uuid,
        secret: this.opts.secret,
        clock: this.opts.clock,
        logger: this.opts.logger,
        incarnation: this.opts.incarnation,
        pool: this.opts.pool,
        onIncarnationChange: (change) => {
          const before = this.incarnations.get(uuid);
          this.incarnations.set(uuid, change.current);
          if (before === undefined || before === change.current) return;
          this.restartCounts.set(uuid, (this.restartCounts.get(uuid) ?? 0) + 1);
          for (const l of this.restartListeners) l(uuid);
        },
      });
      this.clients.set(uuid, c);
    }
    return c;
  }

  /** Requests on the wire or waiting for the connection, per peer with a client (status). */
  requestsInFlight(): Record<string, number> {
    return Object.fromEntries([...this.clients].map(([uuid, c]) => [uuid, c.inflightCount]));
  }

  restarts(uuid: string): number {
    return this.restartCounts.get(uuid) ?? 0;
  }

  onPeerRestart(listener: (uuid: string) => void): void {
    this.restartListeners.push(listener);
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }
}
