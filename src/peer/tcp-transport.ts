import type { Logger } from 'pino';
import type { PeerTransport, ReplicaApi } from '../model/replica-api.js';
import { PeerClient, type IncarnationChange, type PeerClientOptions } from './client.js';

/** Everything a PeerClient needs except whom to reach. */
export type TcpPeerTransportOptions = Omit<PeerClientOptions, 'address' | 'remotePeerUuid' | 'onIncarnationChange' | 'logger'> & {
  readonly logger: Logger;
  /** A peer restarted (or was reached for the first time, previous null): see PeerClientOptions.onIncarnationChange. */
  readonly onIncarnationChange?: (change: IncarnationChange) => void;
};

/**
 * How torusd reaches the other peers over TCP: one PeerClient per peer
 * uuid, made on first use from the addresses pushed in by whoever watches
 * the peer records. A client is bound to the address and uuid it was made
 * for: when a peer moves or leaves, its client is closed (the requests on
 * it finish first) and the next call makes a new one.
 */
export class TcpPeerTransport implements PeerTransport {
  private readonly addresses = new Map<string, string>();
  private readonly clients = new Map<string, PeerClient>();
  private closed = false;

  constructor(private readonly opts: TcpPeerTransportOptions) {}

  /** The peers that report now, by uuid. Peers missing from the list are forgotten. */
  setPeers(peers: readonly { readonly uuid: string; readonly address: string }[]): void {
    const next = new Map(peers.map((p) => [p.uuid, p.address]));
    for (const [uuid, address] of this.addresses) {
      if (next.get(uuid) !== address) this.dropClient(uuid);
    }
    this.addresses.clear();
    for (const [uuid, address] of next) this.addresses.set(uuid, address);
  }

  peer(uuid: string): ReplicaApi | null {
    if (this.closed) return null;
    const existing = this.clients.get(uuid);
    if (existing !== undefined) return existing;
    const address = this.addresses.get(uuid);
    if (address === undefined) return null;
    const client = new PeerClient({
      ...this.opts,
      address,
      remotePeerUuid: uuid,
      logger: this.opts.logger,
      onIncarnationChange: this.opts.onIncarnationChange,
    });
    this.clients.set(uuid, client);
    return client;
  }

  /** Clients open now (tests, metrics). */
  get clientCount(): number {
    return this.clients.size;
  }

  /** Closes every client once the requests on it have finished. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.clients.values()];
    this.clients.clear();
    await Promise.all(all.map((c) => c.close()));
  }

  private dropClient(uuid: string): void {
    const c = this.clients.get(uuid);
    if (c === undefined) return;
    this.clients.delete(uuid);
    c.close().catch((err: unknown) => this.opts.logger.warn({ err, peer: uuid }, 'closing a peer client failed'));
  }
}
