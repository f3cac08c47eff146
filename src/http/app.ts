/**
 * torusd's HTTP endpoint: Prometheus metrics, a health check for probes and a
 * JSON status document. Builds the fastify instance only; the daemon decides
 * where it listens (`await app.listen({ host, port })`) and closes it.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { ErrorCode } from '../errors/codes.js';
import { isTorusError } from '../errors/torus-error.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { HealthReport, StatusDocument } from './status.js';

export interface HttpAppOptions {
  registry: Registry;
  status: () => Promise<StatusDocument>;
  health: () => HealthReport | Promise<HealthReport>;
  logger: Logger;
  /**
   * GET /v1/blocks?volume=ID: this peer's copies of a volume's blocks
   * (index, state, version, digest, suspect), for `torusctl block check`
   * and tests that compare copies block by block. Absent on clients.
   */
  blocks?: (volumeId: number) => BlockCopyInfo[];
  /** GET /v1/status answers 504 when `status` takes longer (it may wait on etcd). Default 5000. */
  statusTimeoutMs?: number;
  clock?: Clock;
}

/** One copy as GET /v1/blocks lists it. */
export interface BlockCopyInfo {
  readonly index: number;
  readonly generation: number;
  readonly state: 'data' | 'zero' | 'absent';
  readonly version: number;
  readonly digest: number;
  readonly suspect: boolean;
}

/**
 * No route declares a schema, so fastify's schema compilers (ajv and
 * fast-json-stringify, about 110 modules) are not loaded: a factory given
 * here stands in for each. Loading them cost torusd about 1.4 MiB of heap
 * and 4 MiB of resident memory (issue 7's budget is 128 MiB). A route that
 * declares a schema fails when it is added, saying why.
 */
function noSchemas(): never {
  throw new Error('torusd HTTP routes declare no schemas: fastify schema compilers are not loaded (src/http/app.ts)');
}

/** No route takes a body; anything larger is refused before it is read. */
const BODY_BYTES_MAX = 16 * 1024;
/** A client has this long to send its whole request (slow-loris guard). */
const REQUEST_TIMEOUT_MS = 30_000;

interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

function errorBody(code: ErrorCode, message: string): ErrorBody {
  return { error: { code, message } };
}

class TimeoutError extends Error {}

function withTimeout<T>(work: Promise<T>, clock: Clock, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = clock.setTimeout(() => reject(new TimeoutError(`no answer within ${timeoutMs} ms`)), timeoutMs);
    work.then(
      (value) => {
        timer.cancel();
        resolve(value);
      },
      (err: unknown) => {
        timer.cancel();
        reject(err);
      },
    );
  });
}

export function buildHttpApp(options: HttpAppOptions): FastifyInstance {
  const clock = options.clock ?? systemClock;
  const statusTimeoutMs = options.statusTimeoutMs ?? 5000;
  const log = options.logger.child({ module: 'http' });

  const app = Fastify({
    // pino's Logger is a FastifyBaseLogger; widening keeps the default instance type.
    loggerInstance: log as FastifyBaseLogger,
    // Probes and scrapers call every few seconds: per-request lines go out at
    // debug from the hook below instead of fastify's info lines.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_BYTES_MAX,
    requestTimeout: REQUEST_TIMEOUT_MS,
    schemaController: { compilersFactory: { buildValidator: noSchemas, buildSerializer: noSchemas } },
  });

  app.addHook('onResponse', async (request, reply) => {
    request.log.debug(
      { method: request.method, url: request.url, statusCode: reply.statusCode, ms: reply.elapsedTime },
      'http request',
    );
  });

  app.get('/metrics', async (_request, reply) => {
    const text = await options.registry.metrics();
    return reply.type(options.registry.contentType).send(text);
  });

  app.get('/healthz', async (_request, reply) => {
    let report: HealthReport;
    try {
      report = await options.health();
    } catch (err) {
      log.warn({ err }, 'health check threw');
      const detail = err instanceof Error ? err.message : String(err);
      return reply.code(503).send({ status: 'fail', failing: ['health'], checks: { health: { ok: false, detail } } });
    }
    const failing = Object.entries(report.checks)
      .filter(([, check]) => !check.ok)
      .map(([name]) => name);
    if (report.ok && failing.length === 0) {
      return reply.code(200).send({ status: 'ok', checks: report.checks });
    }
    return reply.code(503).send({ status: 'fail', failing, checks: report.checks });
  });

  app.get('/v1/status', async (_request, reply) => {
    try {
      return reply.code(200).send(await withTimeout(options.status(), clock, statusTimeoutMs));
    } catch (err) {
      if (err instanceof TimeoutError) {
        log.warn({ timeoutMs: statusTimeoutMs }, 'status timed out');
        return reply.code(504).send(errorBody('TORUS_ERR_TIMEOUT', `status: ${err.message}`));
      }
      log.warn({ err }, 'status failed');
      if (isTorusError(err)) return reply.code(503).send(errorBody(err.code, err.message));
      return reply.code(500).send(errorBody('TORUS_ERR_ASSERTION', 'status failed: internal error'));
    }
  });

  app.get('/v1/blocks', async (request, reply) => {
    const q = request.query as Record<string, unknown>;
    const raw = typeof q['volume'] === 'string' ? q['volume'] : '';
    if (!/^[1-9][0-9]{0,9}$/.test(raw) || Number(raw) > 0xffffffff) {
      return reply.code(400).send(errorBody('TORUS_ERR_HTTP_REQUEST_INVALID', 'GET /v1/blocks needs ?volume=<volume id> (a positive integer)'));
    }
    if (options.blocks === undefined) return reply.code(404).send(errorBody('TORUS_ERR_HTTP_NOT_FOUND', 'this process holds no blocks'));
    return reply.code(200).send({ volumeId: Number(raw), blocks: options.blocks(Number(raw)) });
  });

  app.setNotFoundHandler(async (request, reply) => {
    return reply.code(404).send(errorBody('TORUS_ERR_HTTP_NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`));
  });

  // Framework errors (body too large, bad content type, ...): JSON like the rest.
  app.setErrorHandler(async (err: { statusCode?: number; message: string }, _request, reply) => {
    const statusCode = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (statusCode >= 500) {
      log.warn({ err }, 'http handler failed');
      return reply.code(statusCode).send(errorBody('TORUS_ERR_ASSERTION', 'internal error'));
    }
    return reply.code(statusCode).send(errorBody('TORUS_ERR_HTTP_REQUEST_INVALID', err.message));
  });

  return app;
}
