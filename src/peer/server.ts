import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockStore } from '../store/block-store.js';
import { assert } from '../util/assert.js';
import { systemClock, type Clock } from '../util/clock.js';
import { formatPeerAddress, type PeerAddress } from './address.js';
import type { HandshakeConfig } from './handshake.js';
import { NONCE_BYTES } from './protocol.js';
import { ServerConnection } from './server-connection.js';
import { tuneSocket } from './transport.js';

export interface PeerServerOptions {
  /** The blocks this peer serves (its disk store, or a MemoryBlockStore in tests). */
  readonly store: BlockStore;
  readonly logger: Logger;
  readonly clusterId: string;
  /** This peer's uuid, sent in the handshake. */
  readonly peerUuid: string;
  /** The shared cluster secret; '' means no authentication (then clients must have none either). */
  readonly secret: string | Buffer;
  readonly clock?: Clock;
  readonly randomBytes?: (size: number) => Buffer;
  /** Requests handled at once per connection; further requests wait in the socket. Default 64. */
  readonly inflightMax?: number;
  /**
   * Payload bytes of the requests handled at once plus unsent replies, per
   * connection, before reading stops. Default 64 MiB; one request is always admitted.
   */
  readonly inflightBytesMax?: number;
  /** Connections at once; more are refused. Default 1024. */
  readonly connectionsMax?: number;
  /** Time from accept to a finished handshake. Default 5 s. */
  readonly handshakeTimeoutMs?: number;
  /** close() waits this long for requests in flight, then cuts connections. Default 10 s. */
  readonly closeTimeoutMs?: number;
}

const DEFAULTS = {
  inflightMax: 64,
  inflightBytesMax: 64 * 1024 * 1024,
  connectionsMax: 1024,
  handshakeTimeoutMs: 5_000,
  closeTimeoutMs: 10_000,
};

/**
 * Serves a BlockStore to other peers over the peer protocol. The listener is
 * optional: handleConnection() takes any byte stream, so the server can be
 * driven without a network.
 */
export class PeerServer {
  private readonly opts: Required<Omit<PeerServerOptions, 'secret'>> & { secret: Buffer };
  private readonly log: Logger;
  private readonly connections = new Set<ServerConnection>();
  private server: net.Server | null = null;
  private bound: PeerAddress | null = null;
  private closing = false;

  constructor(options: PeerServerOptions) {
    this.opts = {
      ...DEFAULTS,
      clock: systemClock,
      randomBytes: cryptoRandomBytes,
      ...stripUndefined(options),
      secret: typeof options.secret === 'string' ? Buffer.from(options.secret, 'utf8') : options.secret,
    };
    assert(this.opts.inflightMax > 0, 'inflightMax is positive');
    assert(this.opts.inflightBytesMax > 0, 'inflightBytesMax is positive');
    this.log = options.logger.child({ module: 'peer-server' });
  }

  /** Listens on host:port (port 0 picks a free one) and resolves with the bound address. */
  async listen(host: string, port: number): Promise<PeerAddress> {
    assert(this.server === null, 'listen() is called once');
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => {
      this.handleConnection(socket, formatPeerAddress({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 }));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        this.server = null;
        reject(
          new TorusError('TORUS_ERR_DAEMON_START', `cannot listen for peers on ${formatPeerAddress({ host, port })}: ${err.message}`, {
            cause: err,
          }),
        );
      };
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'peer listener error'));
    const addr = server.address() as net.AddressInfo;
    this.bound = { host: addr.address, port: addr.port };
    this.log.info({ address: formatPeerAddress(this.bound) }, 'peer server listening');
    return this.bound;
  }

  /** The address listen() bound. */
  address(): PeerAddress {
    assert(this.bound !== null, 'address() after listen()');
    return this.bound;
  }

  /** Serves one client connection over any byte stream. */
  handleConnection(socket: Duplex, remote: string): void {
    const log = this.opts.logger.child({ module: 'peer-server', remote });
    if (this.closing || this.connections.size >= this.opts.connectionsMax) {
      log.warn({ connectionsMax: this.opts.connectionsMax, closing: this.closing }, 'peer connection refused');
      socket.destroy();
      return;
    }
    tuneSocket(socket);
    const handshake: HandshakeConfig = {
      clusterId: this.opts.clusterId,
      peerUuid: this.opts.peerUuid,
      secret: this.opts.secret,
      blockSize: this.opts.store.blockSize,
    };
    const conn = new ServerConnection(
      socket,
      this.opts.store,
      handshake,
      this.opts.randomBytes(NONCE_BYTES),
      this.opts,
      this.opts.clock,
      log,
    );
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }

  /** Connections open now (tests, metrics). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Stops accepting, answers the requests in flight, then closes every
   * connection; connections still busy after closeTimeoutMs are cut.
   */
  async close(): Promise<void> {
    this.closing = true;
    const listenerClosed = this.closeListener();
    for (const conn of this.connections) conn.drain();
    const all = Promise.all([...this.connections].map((c) => c.closed));
    let timer: { cancel(): void } | null = null;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = this.opts.clock.setTimeout(() => resolve(true), this.opts.closeTimeoutMs);
    });
    const late = await Promise.race([all.then(() => false), timedOut]);
    (timer as { cancel(): void } | null)?.cancel();
    if (late) {
      this.log.warn({ connections: this.connections.size }, 'peer connections did not drain in time; cutting them');
      for (const conn of this.connections) conn.destroy();
    }
    await listenerClosed;
  }

  /** Cuts every connection at once without answering anything: a crash, for tests. */
  abort(): void {
    this.closing = true;
    void this.closeListener();
    for (const conn of this.connections) conn.destroy();
  }

  private closeListener(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server === null) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
