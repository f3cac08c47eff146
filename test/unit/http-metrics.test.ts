import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createMetrics, type NbdCommandName } from '../../src/http/metrics.js';
import { BufferPool, releaseBuffer } from '../../src/util/buffer-pool.js';

interface Sample {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

async function samples(registry: Registry, name: string): Promise<Sample[]> {
  const all = (await registry.getMetricsAsJSON()) as Array<{ name: string; values: Sample[] }>;
  const metric = all.find((m) => m.name === name);
  if (!metric) throw new Error(`metric ${name} is not registered`);
  return metric.values;
}

async function value(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const found = (await samples(registry, name)).find((s) =>
    Object.entries(labels).every(([k, v]) => String(s.labels[k]) === v),
  );
  return found?.value;
}

describe('createMetrics', () => {
  it('counts NBD requests, bytes, latency and errors', async () => {
    const registry = new Registry();
    const m = createMetrics(registry, { defaultMetrics: false });
    m.nbdRequest('read', 4096, 0.2);
    m.nbdRequest('read', 8192, 1.5);
    m.nbdRequest('write', 512, 3);
    m.nbdRequest('write', 512, 40, 5); // EIO: bytes not counted
    m.nbdRequest('flush', 0, 2, 0);
    m.nbdRequest('trim', 0, 1, 28);

    expect(await value(registry, 'torus_nbd_requests_total', { command: 'read', result: 'ok' })).toBe(2);
    expect(await value(registry, 'torus_nbd_requests_total', { command: 'write', result: 'ok' })).toBe(1);
    expect(await value(registry, 'torus_nbd_requests_total', { command: 'write', result: 'error' })).toBe(1);
    expect(await value(registry, 'torus_nbd_requests_total', { command: 'flush', result: 'ok' })).toBe(1);
    expect(await value(registry, 'torus_nbd_read_bytes_total')).toBe(12288);
    expect(await value(registry, 'torus_nbd_written_bytes_total')).toBe(512);
    expect(await value(registry, 'torus_nbd_errors_total', { errno: 'EIO' })).toBe(1);
    expect(await value(registry, 'torus_nbd_errors_total', { errno: 'ENOSPC' })).toBe(1);

    const text = await registry.metrics();
    // 0.2 ms lands in the 250 µs bucket, 1.5 ms does not.
    expect(text).toContain('torus_nbd_request_duration_seconds_bucket{le="0.00025",command="read"} 1');
    expect(text).toContain('torus_nbd_request_duration_seconds_bucket{le="0.0025",command="read"} 2');
    expect(text).toContain('torus_nbd_request_duration_seconds_bucket{le="5",command="write"} 2');
    expect(text).toContain('torus_nbd_request_duration_seconds_count{command="read"} 2');
  });

  it('keeps label values to a fixed set', async () => {
    const registry = new Registry();
    const m = createMetrics(registry, { defaultMetrics: false });
    m.nbdRequest('bogus' as NbdCommandName, 10, 1, 9999);
    expect(await value(registry, 'torus_nbd_requests_total', { command: 'other', result: 'error' })).toBe(1);
    expect(await value(registry, 'torus_nbd_errors_total', { errno: 'other' })).toBe(1);
  });

  it('tracks connections, CRC failures, open volumes and etcd health', async () => {
    const registry = new Registry();
    const m = createMetrics(registry, { defaultMetrics: false });
    expect(await value(registry, 'torus_nbd_connections')).toBe(0);
    expect(await value(registry, 'torus_etcd_session_healthy')).toBe(0);
    m.nbdConnectionOpened();
    m.nbdConnectionOpened();
    m.nbdConnectionClosed();
    m.storeCrcFailure();
    m.storeCrcFailure();
    m.setVolumesOpen(3);
    m.setEtcdHealthy(true);
    expect(await value(registry, 'torus_nbd_connections')).toBe(1);
    expect(await value(registry, 'torus_store_crc_failures_total')).toBe(2);
    expect(await value(registry, 'torus_volumes_open')).toBe(3);
    expect(await value(registry, 'torus_etcd_session_healthy')).toBe(1);
    m.setEtcdHealthy(false);
    expect(await value(registry, 'torus_etcd_session_healthy')).toBe(0);
  });

  it('reads store capacity and usage at scrape time, keeping the last reading when the source throws', async () => {
    const registry = new Registry();
    let used = 100;
    let broken = false;
    const m = createMetrics(registry, { defaultMetrics: false });
    expect(await value(registry, 'torus_store_used_bytes')).toBe(0); // no source yet
    m.setStoreUsageSource(() => {
      if (broken) throw new Error('store closed');
      return { capacityBytes: 1 << 30, usedBytes: used };
    });
    expect(await value(registry, 'torus_store_capacity_bytes')).toBe(1 << 30);
    expect(await value(registry, 'torus_store_used_bytes')).toBe(100);
    used = 4096;
    expect(await value(registry, 'torus_store_used_bytes')).toBe(4096);
    broken = true;
    expect(await value(registry, 'torus_store_used_bytes')).toBe(4096);
    expect(await registry.metrics()).toContain('torus_store_capacity_bytes 1073741824');
  });

  it("reads the buffer pool's figures at scrape time: a buffer not given back stays counted in use", async () => {
    const registry = new Registry();
    const m = createMetrics(registry, { defaultMetrics: false });
    const pool = new BufferPool({ classMinBytes: 4096, classMaxBytes: 1 << 20, freeBytesMax: 1 << 20 });
    m.setBufferPoolSource(() => pool.stats());
    const a = pool.acquire(1 << 20);
    pool.acquire(4096); // never given back
    expect(await value(registry, 'torus_buffer_pool_in_use_bytes')).toBe((1 << 20) + 4096);
    expect(await value(registry, 'torus_buffer_pool_allocations_total')).toBe(2);
    releaseBuffer(a);
    expect(await value(registry, 'torus_buffer_pool_in_use_bytes')).toBe(4096);
    expect(await value(registry, 'torus_buffer_pool_free_bytes')).toBe(1 << 20);
    releaseBuffer(pool.acquire(1 << 20));
    expect(await value(registry, 'torus_buffer_pool_reuses_total')).toBe(1);
    expect(await value(registry, 'torus_buffer_pool_allocations_total')).toBe(2);
  });

  it('uses only the given registry, so two daemons in one process do not collide', async () => {
    const a = new Registry();
    const b = new Registry();
    const ma = createMetrics(a);
    createMetrics(b);
    ma.storeCrcFailure();
    expect(await value(a, 'torus_store_crc_failures_total')).toBe(1);
    expect(await value(b, 'torus_store_crc_failures_total')).toBe(0);
  });

  it('includes the default process metrics (RSS) unless turned off', async () => {
    const on = new Registry();
    createMetrics(on);
    expect(await on.metrics()).toMatch(/^process_resident_memory_bytes \d+/m);
    const off = new Registry();
    createMetrics(off, { defaultMetrics: false });
    expect(await off.metrics()).not.toContain('process_resident_memory_bytes');
    // Every torus metric carries the prefix.
    const names = ((await off.getMetricsAsJSON()) as Array<{ name: string }>).map((x) => x.name);
    expect(names.length).toBeGreaterThan(5);
    for (const name of names) expect(name).toMatch(/^torus_/);
  });
});
