/**
 * Client of torusd's attach API (api.ts) over its unix socket: used by
 * `torusblk nbd` and by the FlexVolume driver. Errors come back as
 * TorusErrors with the code torusd sent; an unreachable socket is
 * TORUS_ERR_ATTACH_DAEMON_UNREACHABLE.
 */
import http from '../util/node-http.js';
import { TorusError } from '../errors/torus-error.js';
import type { ApiErrorBody, AttachmentInfo, AttachRequest, DetachResponse, FaultRequest, KernelStatus } from './api.js';
import { isErrorCode } from './api-server.js';

const REQUEST_TIMEOUT_MS_DEFAULT = 120_000;

export class AttachClient {
  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = REQUEST_TIMEOUT_MS_DEFAULT,
  ) {}

  kernel(): Promise<KernelStatus> {
    return this.call<KernelStatus>('GET', '/v1/kernel');
  }

  async list(): Promise<AttachmentInfo[]> {
    return (await this.call<{ attachments: AttachmentInfo[] }>('GET', '/v1/attachments')).attachments;
  }

  attach(req: AttachRequest): Promise<AttachmentInfo> {
    return this.call<AttachmentInfo>('POST', '/v1/attach', req);
  }

  detach(device: string): Promise<DetachResponse> {
    return this.call<DetachResponse>('POST', '/v1/detach', { device });
  }

  fault(req: FaultRequest): Promise<AttachmentInfo> {
    return this.call<AttachmentInfo>('POST', '/v1/fault', req);
  }

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let doc: unknown;
            try {
              doc = JSON.parse(text);
            } catch {
              reject(new TorusError('TORUS_ERR_ATTACH_DAEMON_UNREACHABLE', `torusd's attach socket ${this.socketPath} answered ${res.statusCode} with something that is not JSON`));
              return;
            }
            if (res.statusCode === 200) {
              resolve(doc as T);
              return;
            }
            const e = (doc as Partial<ApiErrorBody>).error;
            reject(isErrorCode(e?.code) ? new TorusError(e.code, e.message) : new TorusError('TORUS_ERR_ATTACH_DAEMON_UNREACHABLE', `torusd answered ${res.statusCode}: ${text.slice(0, 200)}`));
          });
          res.on('error', (err) => reject(unreachable(this.socketPath, err)));
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on('error', (err) => reject(unreachable(this.socketPath, err)));
      req.end(payload);
    });
  }
}

function unreachable(socketPath: string, err: Error): TorusError {
  return new TorusError(
    'TORUS_ERR_ATTACH_DAEMON_UNREACHABLE',
    `cannot reach torusd's attach socket ${socketPath} (${err.message}): is torusd running on this node with that --data-dir? (torusblk --data-dir or --attach-socket)`,
    { cause: err },
  );
}
