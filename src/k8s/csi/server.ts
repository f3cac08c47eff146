/**
 * The gRPC server of the CSI driver: one unix socket (the CO's endpoint)
 * serving Identity and, as configured, Controller and Node. Every RPC is
 * logged once, as a JSON line with its name, volume, duration and outcome,
 * and every failure leaves through toServiceError (errors.ts).
 */
import { mkdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { TorusError } from '../../errors/torus-error.js';
import type { Clock } from '../../util/clock.js';
import { removeStaleSocket } from '../../util/unix-socket.js';
import { toServiceError } from './errors.js';
import { csiServices } from './proto.js';

export type Handlers = Record<string, (request: never) => Promise<object>>;

export interface CsiServerOptions {
  /** `unix:///csi/csi.sock` (or `unix:/path`, or a bare absolute path). */
  readonly endpoint: string;
  readonly identity: Handlers;
  readonly controller: Handlers | null;
  readonly node: Handlers | null;
  readonly logger: Logger;
  readonly clock: Clock;
}

/** The socket path of a CSI endpoint; only unix sockets: the node service mounts filesystems for whoever connects. */
export function endpointPath(endpoint: string): string {
  const m = /^unix:(?:\/\/)?(\/.*)$/.exec(endpoint) ?? (endpoint.startsWith('/') ? [endpoint, endpoint] : null);
  if (!m) throw new TorusError('TORUS_ERR_ARG_INVALID', `CSI endpoint ${JSON.stringify(endpoint)} is not unix:///path/to/csi.sock (TCP endpoints are refused)`);
  return path.posix.normalize(m[1]!);
}

/** The request field that names the volume, for the log line. */
export function volumeOf(request: unknown): string | undefined {
  const r = request as { volume_id?: unknown; name?: unknown } | null;
  if (r && typeof r.volume_id === 'string' && r.volume_id !== '') return r.volume_id;
  if (r && typeof r.name === 'string' && r.name !== '') return r.name;
  return undefined;
}

/**
 * The volume id a response hands out (CreateVolume's), for the log line:
 * its request names the volume only by its CSI name, and the id is what
 * every later call (and the PV) carries.
 */
export function volumeIdOf(response: unknown): string | undefined {
  const v = (response as { volume?: { volume_id?: unknown } | null } | null)?.volume;
  return v && typeof v.volume_id === 'string' && v.volume_id !== '' ? v.volume_id : undefined;
}

export class CsiServer {
  private readonly server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
  private readonly log: Logger;
  readonly socketPath: string;

  constructor(private readonly opts: CsiServerOptions) {
    this.log = opts.logger.child({ module: 'csi' });
    this.socketPath = endpointPath(opts.endpoint);
    const services = csiServices();
    this.server.addService(services.Identity, this.wrap('Identity', opts.identity));
    if (opts.controller) this.server.addService(services.Controller, this.wrap('Controller', opts.controller));
    if (opts.node) this.server.addService(services.Node, this.wrap('Node', opts.node));
  }

  private wrap(service: string, handlers: Handlers): grpc.UntypedServiceImplementation {
    const out: grpc.UntypedServiceImplementation = {};
    for (const [rpc, fn] of Object.entries(handlers)) {
      out[rpc] = ((call: grpc.ServerUnaryCall<unknown, object>, callback: grpc.sendUnaryData<object>) => {
        const started = this.opts.clock.monotonic();
        const volume = volumeOf(call.request);
        const ms = () => Math.round(this.opts.clock.monotonic() - started);
        let result: Promise<object>;
        try {
          result = fn(call.request as never);
        } catch (err) {
          result = Promise.reject(err);
        }
        result.then(
          (response) => {
            this.log.info({ rpc: `${service}.${rpc}`, volume, volumeId: volumeIdOf(response), ms: ms() }, 'csi call');
            callback(null, response);
          },
          (err: unknown) => {
            const e = toServiceError(err);
            const line = { rpc: `${service}.${rpc}`, volume, ms: ms(), grpcCode: grpc.status[e.code], code: e.torusCode, message: e.details };
            if (e.code === grpc.status.INTERNAL) this.log.error({ ...line, err }, 'csi call failed');
            else this.log.warn(line, 'csi call failed');
            callback({ code: e.code, details: e.details });
          },
        );
      }) as grpc.handleUnaryCall<unknown, object>;
    }
    return out;
  }

  async listen(): Promise<void> {
    const file = this.socketPath;
    await mkdir(path.dirname(file), { recursive: true });
    await removeStaleSocket(file);
    await new Promise<void>((resolve, reject) => {
      this.server.bindAsync(`unix://${file}`, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err) reject(new TorusError('TORUS_ERR_DAEMON_START', `cannot listen on the CSI endpoint ${file}: ${err.message}`, { cause: err }));
        else resolve();
      });
    });
    this.log.info({ endpoint: `unix://${file}`, controller: this.opts.controller !== null, node: this.opts.node !== null }, 'CSI endpoint listening');
  }

  /** Lets calls in flight finish (mkfs may take long), up to `graceMs`, then cuts the rest. */
  async close(graceMs = 30_000): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      timer.unref();
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    await unlink(this.socketPath).catch(() => undefined);
  }
}
