import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockRef } from '../model/block-ref.js';
import type { PeerRecord, RingRecord } from '../model/records.js';
import { PeerClient } from '../peer/client.js';
import { replicasOf } from '../ring/placement.js';
import type { BlockStore } from '../store/block-store.js';
import type { Placement } from './volume.js';

export interface ClusterPlacementOptions {
  /** This process's peer uuid and its own store (null for clients such as torusblk). */
  readonly self: { uuid: string; store: BlockStore } | null;
  readonly blockSize: number;
  readonly clusterId: string;
  readonly secret: string;
  readonly logger: Logger;
  /** This process's uuid in peer handshakes. */
  readonly localUuid: string;
}

/**
 * Turns the ring (a pure placement function) into block stores: this peer's
 * own store for itself, a PeerClient per other member. Ring and peer records
 * are pushed in by whoever watches etcd.
 */
export class ClusterPlacement implements Placement {
  private ring: RingRecord = { schema: 2, version: 0, replication: 1, minReplicas: 1, members: [], transition: null };
  private readonly addresses = new Map<string, string>();
  private readonly clients = new Map<string, PeerClient>();

  constructor(private readonly opts: ClusterPlacementOptions) {}

  setRing(ring: RingRecord): void {
    this.ring = ring;
  }

  getRing(): RingRecord {
    return this.ring;
  }

  setPeers(peers: readonly PeerRecord[]): void {
    for (const p of peers) {
      const before = this.addresses.get(p.uuid);
      if (before !== undefined && before !== p.address) {
        // The peer moved: drop the client bound to its old address.
        const old = this.clients.get(p.uuid);
        this.clients.delete(p.uuid);
        void old?.close();
      }
      this.addresses.set(p.uuid, p.address);
    }
  }

  replicas(ref: BlockRef): BlockStore[] {
    const uuids = replicasOf(this.ring, ref);
    const self = this.opts.self;
    if (self) {
      // Reads try the local copy first; writes go to all replicas anyway.
      const i = uuids.indexOf(self.uuid);
      if (i > 0) {
        uuids.splice(i, 1);
        uuids.unshift(self.uuid);
      }
    }
    return uuids.map((u) => this.storeOf(u));
  }

  all(): BlockStore[] {
    return this.ring.members.map((m) => this.storeOf(m.uuid));
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }

  private storeOf(uuid: string): BlockStore {
    const self = this.opts.self;
    if (self && uuid === self.uuid) return self.store;
    let c = this.clients.get(uuid);
    if (!c) {
      const address = this.addresses.get(uuid);
      // Unknown until the peer reports: a store that fails when used, so that
      // reads go on to the other replicas and writes fail with a clear error.
      if (address === undefined) return unavailableStore(uuid, this.opts.blockSize);
      c = new PeerClient({
        address,
        blockSize: this.opts.blockSize,
        clusterId: this.opts.clusterId,
        peerUuid: this.opts.localUuid,
        remotePeerUuid: uuid,
        secret: this.opts.secret,
        logger: this.opts.logger,
      });
      this.clients.set(uuid, c);
    }
    return c;
  }
}

function unavailableStore(uuid: string, blockSize: number): BlockStore {
  const fail = async (): Promise<never> => {
    throw new TorusError('TORUS_ERR_RING_PEER_UNKNOWN', `ring member ${uuid} has no known address (it is not reporting to etcd)`);
  };
  return {
    blockSize,
    read: fail,
    write: fail,
    zero: fail,
    flush: fail,
    allocated: fail,
    deleteVolume: fail,
    usage: () => ({ capacity: 0, used: 0, blocks: 0 }),
    close: async () => undefined,
  };
}
