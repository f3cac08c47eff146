import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { buildHttpApp } from '../../src/http/app.js';
import { createMetrics } from '../../src/http/metrics.js';
import type { HealthReport, StatusDocument } from '../../src/http/status.js';
import { TorusError } from '../../src/errors/torus-error.js';
import type { Clock } from '../../src/util/clock.js';

const STATUS: StatusDocument = {
  uuid: '3f2a6c1e-0000-4000-8000-000000000001',
  version: '0.1.0',
  addresses: { peer: '127.0.0.1:40000', nbd: '127.0.0.1:10809', http: '127.0.0.1:4321' },
  capacity: 2 * 1024 ** 3,
  used: 4096,
  openVolumes: [
    { name: 'db', id: 1, mode: 'rw', connections: 2, lockToken: 7 },
    { name: 'logs', id: 2, mode: 'ro', connections: 1, lockToken: null },
  ],
  etcd: { endpoints: ['127.0.0.1:2379'], healthy: true },
  crc32c: 'native (sse4.2)',
};

const HEALTHY: HealthReport = { ok: true, checks: { etcd: { ok: true }, store: { ok: true } } };

/** A clock whose timers fire on the next turn of the event loop, whatever their delay. */
function instantClock(): Clock & { delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    now: () => 0,
    monotonic: () => 0,
    setTimeout(fn, ms) {
      delays.push(ms);
      const t = setImmediate(fn);
      return { cancel: () => clearImmediate(t) };
    },
  };
}

const apps: Array<{ close(): Promise<unknown> }> = [];

function build(overrides: Partial<Parameters<typeof buildHttpApp>[0]> = {}) {
  const registry = new Registry();
  const metrics = createMetrics(registry, { defaultMetrics: false });
  const app = buildHttpApp({
    registry,
    status: async () => STATUS,
    health: () => HEALTHY,
    logger: pino({ level: 'silent' }),
    ...overrides,
  });
  apps.push(app);
  return { app, metrics };
}

afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

describe('buildHttpApp', () => {
  it('serves Prometheus text on GET /metrics', async () => {
    const { app, metrics } = build();
    metrics.nbdRequest('read', 4096, 0.3);
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(res.body).toContain('# TYPE torus_nbd_requests_total counter');
    expect(res.body).toContain('torus_nbd_requests_total{command="read",result="ok"} 1');
    expect(res.body).toContain('torus_nbd_read_bytes_total 4096');
  });

  it('answers GET /healthz with 200 when every check passes', async () => {
    const { app } = build();
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.json()).toEqual({ status: 'ok', checks: HEALTHY.checks });
  });

  it('answers GET /healthz with 503 naming the failing checks', async () => {
    const { app } = build({
      health: async () => ({
        ok: false,
        checks: { etcd: { ok: false, detail: 'lease lost' }, store: { ok: true } },
      }),
    });
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(503);
    const body = res.json();
    expect(body.status).toBe('fail');
    expect(body.failing).toEqual(['etcd']);
    expect(body.checks.etcd).toEqual({ ok: false, detail: 'lease lost' });
  });

  it('treats a failing check as unhealthy even when ok is true', async () => {
    const { app } = build({ health: () => ({ ok: true, checks: { store: { ok: false, detail: 'disk full' } } }) });
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(503);
    expect(res.json().failing).toEqual(['store']);
  });

  it('answers 503 when the health function throws', async () => {
    const { app } = build({
      health: () => {
        throw new Error('boom');
      },
    });
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(503);
    expect(res.json()).toMatchObject({ status: 'fail', failing: ['health'], checks: { health: { ok: false, detail: 'boom' } } });
  });

  it('serves the status document on GET /v1/status', async () => {
    const { app } = build();
    const res = await app.inject({ method: 'GET', url: '/v1/status' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.json()).toEqual(STATUS);
  });

  it('maps a TorusError from the status function to 503 with its code', async () => {
    const { app } = build({
      status: async () => {
        throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd did not answer');
      },
    });
    const res = await app.inject({ method: 'GET', url: '/v1/status' });
    expect(res.statusCode).toBe(503);
    expect(res.json()).toEqual({ error: { code: 'TORUS_ERR_ETCD_UNAVAILABLE', message: 'etcd did not answer' } });
  });

  it('answers 500 without internals when the status function has a bug', async () => {
    const { app } = build({
      status: async () => {
        throw new TypeError('cannot read properties of undefined (secret detail)');
      },
    });
    const res = await app.inject({ method: 'GET', url: '/v1/status' });
    expect(res.statusCode).toBe(500);
    expect(res.json().error.code).toBe('TORUS_ERR_ASSERTION');
    expect(res.body).not.toContain('secret detail');
  });

  it('answers 504 when the status function does not finish in time', async () => {
    const clock = instantClock();
    const { app } = build({ status: () => new Promise<StatusDocument>(() => {}), clock, statusTimeoutMs: 1234 });
    const res = await app.inject({ method: 'GET', url: '/v1/status' });
    expect(res.statusCode).toBe(504);
    expect(res.json().error.code).toBe('TORUS_ERR_TIMEOUT');
    expect(clock.delays).toEqual([1234]);
  });

  it('answers 404 JSON for unknown paths and methods', async () => {
    const { app } = build();
    for (const [method, url] of [
      ['GET', '/'],
      ['GET', '/v1/nope?x=1'],
      ['POST', '/metrics'],
      ['DELETE', '/v1/status'],
    ] as const) {
      const res = await app.inject({ method, url });
      expect(res.statusCode, `${method} ${url}`).toBe(404);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.json().error.code).toBe('TORUS_ERR_HTTP_NOT_FOUND');
      expect(res.json().error.message).toBe(`no route for ${method} ${url.split('?')[0]}`);
    }
  });

  it('refuses a request body over the limit with a JSON error', async () => {
    const { app } = build();
    app.post('/echo', async (req) => req.body);
    const res = await app.inject({
      method: 'POST',
      url: '/echo',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ pad: 'x'.repeat(64 * 1024) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe('TORUS_ERR_HTTP_REQUEST_INVALID');
  });

  it('loads no schema compiler: a route that declares a schema is refused when added, saying why', async () => {
    const { app } = build();
    let err: unknown = null;
    try {
      app.get('/x', { schema: { querystring: { type: 'object', properties: { n: { type: 'integer' } } } } }, async () => 'x');
      await app.ready();
    } catch (e) {
      err = e;
    }
    expect(String(err)).toMatch(/declare no schemas/);
  });
});
