/**
 * torusd's FlexVolume listener: a unix socket, never a TCP port, so mount
 * requests cannot come from the network. The socket is 0600 in a 0700
 * folder: only root on the node (kubelet runs the driver as root) reaches it.
 */
import { chmod, mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../../errors/torus-error.js';
import { removeStaleSocket } from '../../util/unix-socket.js';
import { decodeRequest, encodeReply, failure, REQUEST_BYTES_MAX, type FlexResult } from './protocol.js';

/** A driver sends its arguments at once; a client that dawdles longer is not kubelet's driver. */
const REQUEST_TIMEOUT_MS = 10_000;
const CONNECTIONS_MAX = 32;

export interface FlexServerOptions {
  readonly socketPath: string;
  readonly handler: (argv: readonly string[]) => Promise<FlexResult>;
  readonly logger: Logger;
}

export class FlexServer {
  private readonly server: net.Server;
  private readonly log: Logger;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly opts: FlexServerOptions) {
    this.log = opts.logger.child({ module: 'flex-server' });
    // allowHalfOpen: the driver half-closes after its request and waits for
    // the reply; without it Node would close our side at the driver's FIN.
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.onConnection(s));
    this.server.maxConnections = CONNECTIONS_MAX;
  }

  async listen(): Promise<void> {
    const file = this.opts.socketPath;
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await removeStaleSocket(file);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(file, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    await chmod(file, 0o600);
    this.log.info({ socket: file }, 'FlexVolume socket listening');
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => this.log.debug({ err }, 'flex client socket error'));
    socket.setTimeout(REQUEST_TIMEOUT_MS, () => {
      this.log.warn({}, 'flex client sent no complete request in time');
      socket.destroy();
    });
    const chunks: Buffer[] = [];
    let bytes = 0;
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > REQUEST_BYTES_MAX) {
        this.reply(socket, failure(new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `request larger than ${REQUEST_BYTES_MAX} bytes`)));
        return;
      }
      chunks.push(chunk);
    });
    socket.once('end', () => {
      if (bytes > REQUEST_BYTES_MAX) return;
      // The request is complete; the call itself may take long (mkfs).
      socket.setTimeout(0);
      let argv: string[];
      try {
        argv = decodeRequest(Buffer.concat(chunks));
      } catch (err) {
        this.reply(socket, failure(err));
        return;
      }
      const started = Date.now();
      this.opts.handler(argv).then(
        (result) => {
          this.log.info({ call: argv[0], dir: argv[1], status: result.status, message: result.message, ms: Date.now() - started }, 'flex call');
          this.reply(socket, result);
        },
        (err: unknown) => this.reply(socket, failure(err)),
      );
    });
  }

  private reply(socket: net.Socket, result: FlexResult): void {
    if (socket.destroyed) return;
    socket.end(encodeReply(result));
  }
}
