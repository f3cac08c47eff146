/**
 * The NBD listener: accepts TCP connections, hands each to an NbdSession,
 * enforces the connection limit and closes cleanly. The protocol lives in
 * session.ts; this file only knows sockets.
 */
import { ByteBudget } from './byte-budget.js';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { BufferPool } from '../util/buffer-pool.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { InvariantBroken } from '../util/invariant.js';
import { enableDirectReads, type DirectReadTarget } from '../util/socket-direct-reads.js';
import type { ExportProvider } from './export.js';
import { resolveLimits, type NbdLimits } from './limits.js';
import { NbdSession, type RequestObserver } from './session.js';

export interface NbdServerOptions extends Partial<NbdLimits> {
  readonly provider: ExportProvider;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Called once per finished request (not DISC), e.g. to feed Prometheus. */
  readonly onRequest?: RequestObserver;
  /** Open connections, handshaking or not; more are refused at accept. */
  readonly connectionsMax?: number;
  /** Called when a connection is handed to a session and when it ends (for a gauge). */
  readonly onConnection?: (event: 'open' | 'close') => void;
  /** Buffers for WRITE payloads; the daemon shares one pool with its block store. */
  readonly pool?: BufferPool;
  /** A request broke an invariant (util/invariant.ts): not answered; the process's hook stops it. Default: crash. */
  readonly onInvariantBroken?: InvariantBroken;
}

export interface NbdServerAddress {
  readonly host: string;
  readonly port: number;
}

const DEFAULT_CONNECTIONS_MAX = 256;

export class NbdServer {
  readonly limits: NbdLimits;
  private readonly provider: ExportProvider;
  private readonly rootLogger: Logger;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly onRequest: RequestObserver | undefined;
  private readonly connectionsMax: number;
  private readonly onConnection: ((event: 'open' | 'close') => void) | undefined;
  private readonly pool: BufferPool;
  private readonly onInvariantBroken: InvariantBroken | undefined;
  /** READ/WRITE bytes held by all connections at once (limits.serverInflightBytesMax). */
  readonly budget: ByteBudget;
  private readonly sessions = new Set<NbdSession>();
  private server: net.Server | null = null;
  private closing: Promise<void> | null = null;

  constructor(opts: NbdServerOptions) {
    const { provider, logger, clock, onRequest, connectionsMax, onConnection, pool, onInvariantBroken, ...limits } = opts;
    this.onConnection = onConnection;
    this.onInvariantBroken = onInvariantBroken;
    this.pool = pool ?? new BufferPool();
    this.limits = resolveLimits(limits);
    this.budget = new ByteBudget(this.limits.serverInflightBytesMax);
    this.provider = provider;
    this.rootLogger = logger;
    this.log = logger.child({ module: 'nbd' });
    this.clock = clock ?? systemClock;
    this.onRequest = onRequest;
    this.connectionsMax = connectionsMax ?? DEFAULT_CONNECTIONS_MAX;
    if (!Number.isSafeInteger(this.connectionsMax) || this.connectionsMax <= 0) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `connectionsMax must be a positive integer, got ${String(connectionsMax)}`);
    }
  }

  /** Open connections right now. */
  get connectionCount(): number {
    return this.sessions.size;
  }

  /** Starts listening; port 0 picks a free port (see address()). */
  async listen(host: string, port: number): Promise<NbdServerAddress> {
    if (this.server !== null) throw new TorusError('TORUS_ERR_ARG_INVALID', 'NBD server is already listening');
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => {
        reject(new TorusError('TORUS_ERR_DAEMON_START', `cannot listen for NBD on ${host}:${port}: ${err.message}`, { cause: err }));
      };
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.off('error', onError);
        server.on('error', (err) => this.log.error({ err }, 'nbd listener error'));
        resolve();
      });
    });
    this.server = server;
    const addr = this.address();
    this.log.info({ host: addr.host, port: addr.port }, 'nbd server listening');
    return addr;
  }

  address(): NbdServerAddress {
    const a = this.server?.address();
    if (a === undefined || a === null || typeof a === 'string') throw new TorusError('TORUS_ERR_ARG_INVALID', 'NBD server is not listening');
    return { host: a.address, port: a.port };
  }

  /**
   * Serves one already-connected stream (a socket from elsewhere, or a
   * stream pair in tests). Counts against connectionsMax.
   */
  handle(stream: Duplex, remote: string, attachInput?: (target: DirectReadTarget) => boolean): NbdSession | null {
    if (this.closing !== null || this.sessions.size >= this.connectionsMax) {
      this.log.warn({ remote, connectionsMax: this.connectionsMax, closing: this.closing !== null }, 'nbd connection refused');
      stream.destroy();
      return null;
    }
    const session = new NbdSession({
      stream,
      remote,
      provider: this.provider,
      logger: this.rootLogger,
      clock: this.clock,
      limits: this.limits,
      onRequest: this.onRequest,
      pool: this.pool,
      budget: this.budget,
      attachInput,
      onInvariantBroken: this.onInvariantBroken,
    });
    this.sessions.add(session);
    this.onConnection?.('open');
    void session.closed.then(() => {
      this.sessions.delete(session);
      this.onConnection?.('close');
    });
    return session;
  }

  private accept(socket: net.Socket): void {
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.handle(socket, remote, (target) => enableDirectReads(socket, target));
  }

  /**
   * Stops accepting, lets every session answer its in-flight requests and
   * close (each bounded by closeTimeoutMs), then resolves. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closing = (async () => {
      const server = this.server;
      const listenerClosed = server === null ? Promise.resolve() : new Promise<void>((resolve) => server.close(() => resolve()));
      const sessions = [...this.sessions];
      await Promise.all(sessions.map((s) => this.closeSession(s)));
      await listenerClosed;
      this.log.info({ sessions: sessions.length }, 'nbd server closed');
    })();
    return this.closing;
  }

  private async closeSession(s: NbdSession): Promise<void> {
    // The session bounds its own close; this second bound covers an export
    // whose in-flight call never settles (the session then never resolves).
    let abandon!: () => void;
    const bound = new Promise<void>((resolve) => {
      abandon = resolve;
    });
    const timer = this.clock.setTimeout(() => {
      this.log.warn({ remote: s.remote }, 'nbd session did not finish closing in time; abandoning it');
      s.destroy();
      this.sessions.delete(s);
      abandon();
    }, this.limits.closeTimeoutMs * 2);
    await Promise.race([s.close(), bound]);
    timer.cancel();
  }
}
