/**
 * Serves the attach API (api.ts) on a unix socket in the data dir. Plain
 * node:http: five routes, JSON in and out, no dependency on the public HTTP
 * app, so the attach API is never reachable over the network.
 */
import { chmod, unlink } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import http from '../util/node-http.js';
import type { Logger } from 'pino';
import { ERROR_CODES, type ErrorCode } from '../errors/codes.js';
import { TorusError } from '../errors/torus-error.js';
import type { ApiErrorBody, AttachRequest, DetachRequest, FaultRequest } from './api.js';
import type { AttachManager } from './attach-manager.js';

const BODY_BYTES_MAX = 64 * 1024;

/** HTTP status for an error code: the caller's fault (4xx) or ours/the kernel's (5xx). */
export function statusFor(code: ErrorCode): number {
  switch (code) {
    case 'TORUS_ERR_ARG_INVALID':
    case 'TORUS_ERR_NAME_INVALID':
    case 'TORUS_ERR_HTTP_REQUEST_INVALID':
      return 400;
    case 'TORUS_ERR_ATTACH_PERMISSION':
      return 403;
    case 'TORUS_ERR_ATTACH_NOT_FOUND':
    case 'TORUS_ERR_VOLUME_NOT_FOUND':
    case 'TORUS_ERR_HTTP_NOT_FOUND':
      return 404;
    case 'TORUS_ERR_VOLUME_IN_USE':
    case 'TORUS_ERR_ATTACH_DEVICE_BUSY':
      return 409;
    default:
      return 503;
  }
}

export class AttachApiServer {
  private server: Server | null = null;
  private readonly log: Logger;

  constructor(
    private readonly manager: AttachManager,
    logger: Logger,
  ) {
    this.log = logger.child({ module: 'attach-api' });
  }

  async listen(socketPath: string): Promise<void> {
    // A socket left by a torusd that was killed: the data dir is ours now (pid file).
    await unlink(socketPath).catch(() => undefined);
    const server = http.createServer((req, res) => void this.route(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new TorusError('TORUS_ERR_DAEMON_START', `cannot listen on the attach socket ${socketPath}: ${err.message}`, { cause: err })));
      server.listen(socketPath, () => resolve());
    });
    await chmod(socketPath, 0o600);
    this.server = server;
    this.log.info({ socket: socketPath }, 'attach API listening');
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://torusd');
      const key = `${req.method ?? 'GET'} ${url.pathname}`;
      let out: unknown;
      switch (key) {
        case 'GET /v1/kernel':
          out = await this.manager.kernelStatus();
          break;
        case 'GET /v1/attachments':
          out = { attachments: this.manager.list() };
          break;
        case 'POST /v1/attach':
          out = await this.manager.attach((await readJson(req)) as AttachRequest);
          break;
        case 'POST /v1/detach': {
          const body = (await readJson(req)) as DetachRequest;
          if (typeof body.device !== 'string') throw new TorusError('TORUS_ERR_ARG_INVALID', 'detach needs "device"');
          out = await this.manager.detach(body.device);
          break;
        }
        case 'POST /v1/fault':
          out = this.manager.setFault((await readJson(req)) as FaultRequest);
          break;
        default:
          throw new TorusError('TORUS_ERR_HTTP_NOT_FOUND', `the attach API has no ${key}`);
      }
      send(res, 200, out);
    } catch (err) {
      const e = err instanceof TorusError ? err : new TorusError('TORUS_ERR_ASSERTION', `attach API: ${(err as Error).message}`, { cause: err });
      if (!(err instanceof TorusError)) this.log.error({ err }, 'attach API request failed unexpectedly');
      const body: ApiErrorBody = { error: { code: e.code, message: e.message } };
      send(res, statusFor(e.code), body);
    }
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > BODY_BYTES_MAX) throw new TorusError('TORUS_ERR_HTTP_REQUEST_INVALID', `request body over ${BODY_BYTES_MAX} bytes`);
    chunks.push(c as Buffer);
  }
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null) throw new Error('not an object');
    return v;
  } catch (err) {
    throw new TorusError('TORUS_ERR_HTTP_REQUEST_INVALID', `request body is not a JSON object: ${(err as Error).message}`);
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && code in ERROR_CODES;
}
