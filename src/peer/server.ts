import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { ReplicaApi } from '../model/replica-api.js';
import { assert } from '../util/assert.js';
import type { BufferPool } from '../util/buffer-pool.js';
import { systemClock, type Clock } from '../util/clock.js';
import { crashOnInvariantBroken, type InvariantBroken } from '../util/invariant.js';
import { systemRandom, type Random } from '../util/random.js';
import { formatPeerAddress, type PeerAddress } from './address.js';
import { resolveSecret } from './auth.js';
import type { PayloadBuffers } from './codec.js';
import type { HandshakeConfig } from './handshake.js';
import { NONCE_BYTES, PAYLOAD_BYTES_MAX, SERVER_INFLIGHT_BYTES_MAX } from './protocol.js';
import { RefusalLog } from './refusal-log.js';
import { ServerConnection } from './server-connection.js';
import { tuneSocket } from './transport.js';

export interface PeerServerOptions {
  /** What this peer serves: its replica rules over its store (src/replication/replica.ts), or a fake in tests. */
  readonly replica: ReplicaApi;
  /** The cluster block size: the handshake refuses a client with another, and requests are validated against it. */
  readonly blockSize: number;
  readonly logger: Logger;
  readonly clusterId: string;
  /** This peer's uuid, sent in the handshake. */
  readonly peerUuid: string;
  /** New at every start of this peer, sent in the handshake so clients learn of a restart. */
  readonly incarnation: string;
  /** The shared cluster secret. Required: an empty one is refused unless `insecure`. */
  readonly secret: string | Buffer;
  /** Allows an empty secret (no authentication). For tests only. */
  readonly insecure?: boolean;
  readonly clock?: Clock;
  /** Handshake nonces. */
  readonly random?: Random;
  /** Requests handled at once per connection; further requests wait in the socket. Default 64. */
  readonly inflightMax?: number;
  /**
   * Per connection: payload bytes of the requests being handled (a READ
   * counts the bytes it asked for) before reading stops, and reply bytes
   * queued on the socket before reading stops. One request is always
   * admitted, so a connection holds at most inflightBytesMax + one block of
   * requests and as much again of replies (README, "Memory"). Default 8 MiB.
   */
  readonly inflightBytesMax?: number;
  /** Where request payloads are received; the daemon shares its data-path pool. Default: plain buffers. */
  readonly pool?: BufferPool;
  /** Connections at once; more are refused. Default 1024. */
  readonly connectionsMax?: number;
  /** Time from accept to a finished handshake. Default 5 s. */
  readonly handshakeTimeoutMs?: number;
  /** close() waits this long for requests in flight, then cuts connections. Default 10 s. */
  readonly closeTimeoutMs?: number;
  /**
   * The replica broke an invariant serving a request (util/invariant.ts):
   * no error reply goes out, the connection is cut, and this hook (torusd:
   * log and exit) is called. Default: crash.
   */
  readonly onInvariantBroken?: InvariantBroken;
}

const DEFAULTS = {
  inflightMax: 64,
  inflightBytesMax: SERVER_INFLIGHT_BYTES_MAX,
  connectionsMax: 1024,
  handshakeTimeoutMs: 5_000,
  closeTimeoutMs: 10_000,
  onInvariantBroken: crashOnInvariantBroken,
};

/**
 * Serves a ReplicaApi to other peers over the peer protocol. The listener is
 * optional: handleConnection() takes any byte stream, so the server can be
 * driven without a network. Refused connections (wrong secret, another
 * cluster, an old protocol, garbage) are logged at most once per address per
 * minute and never disturb the other connections.
 */
export class PeerServer {
  private readonly opts: Required<Omit<PeerServerOptions, 'secret' | 'insecure' | 'pool'>> & { secret: Buffer };
  private readonly buffers: PayloadBuffers | undefined;
  private readonly log: Logger;
  private readonly refusals: RefusalLog;
  private readonly connections = new Set<ServerConnection>();
  private server: net.Server | null = null;
  private bound: PeerAddress | null = null;
  private closing = false;

  constructor(options: PeerServerOptions) {
    const { insecure, pool, ...rest } = options;
    this.buffers = pool === undefined ? undefined : { acquire: (n) => pool.acquire(n) };
    this.opts = {
      ...DEFAULTS,
      clock: systemClock,
      random: systemRandom,
      ...stripUndefined(rest),
      secret: resolveSecret(options.secret, insecure, 'peer server'),
    };
    assert(Number.isInteger(this.opts.blockSize) && this.opts.blockSize > 0 && this.opts.blockSize <= PAYLOAD_BYTES_MAX, 'blockSize is sane');
    assert(this.opts.incarnation.length > 0, 'an incarnation is set');
    assert(this.opts.inflightMax > 0, 'inflightMax is positive');
    assert(this.opts.inflightBytesMax > 0, 'inflightBytesMax is positive');
    this.log = options.logger.child({ module: 'peer-server' });
    this.refusals = new RefusalLog(this.log, this.opts.clock);
  }

  /** Listens on host:port (port 0 picks a free one) and resolves with the bound address. */
  async listen(host: string, port: number): Promise<PeerAddress> {
    assert(this.server === null, 'listen() is called once');
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => {
      this.handleConnection(socket, { host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 });
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

  /** Serves one client connection over any byte stream (`remote` names the other end in logs). */
  handleConnection(socket: Duplex, remote: PeerAddress): void {
    const label = formatPeerAddress(remote);
    const log = this.opts.logger.child({ module: 'peer-server', remote: label });
    if (this.closing || this.connections.size >= this.opts.connectionsMax) {
      this.refusals.refused(
        remote.host,
        new TorusError('TORUS_ERR_PEER_UNAVAILABLE', this.closing ? 'the peer server is closing' : 'too many peer connections'),
        { connectionsMax: this.opts.connectionsMax },
      );
      socket.destroy();
      return;
    }
    tuneSocket(socket);
    const handshake: HandshakeConfig = {
      clusterId: this.opts.clusterId,
      peerUuid: this.opts.peerUuid,
      incarnation: this.opts.incarnation,
      secret: this.opts.secret,
      blockSize: this.opts.blockSize,
    };
    const conn = new ServerConnection(
      socket,
      this.opts.replica,
      handshake,
      this.opts.random.bytes(NONCE_BYTES),
      this.opts,
      this.opts.clock,
      { label, host: remote.host },
      this.refusals,
      log,
      this.opts.onInvariantBroken,
      this.buffers,
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
