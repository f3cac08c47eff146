/**
 * Prometheus metrics of torusd. Everything is registered on the Registry the
 * caller passes (never prom-client's global one), so tests and several
 * daemons in one process stay apart. Callers record events through the typed
 * methods of TorusMetrics; state that already lives elsewhere (store usage) is
 * read at scrape time from an injected function.
 */
import { Counter, Gauge, collectDefaultMetrics, type Registry } from 'prom-client';
import type { BufferPoolStats } from '../util/buffer-pool.js';

/** NBD transmission commands, named as the NBD spec does (NBD_CMD_*), lower case. */
export const NBD_COMMANDS = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status'] as const;
export type NbdCommandName = (typeof NBD_COMMANDS)[number];

/** errno values NBD replies may carry (NBD spec "Error values"). */
const NBD_ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};

/** Seconds; 50 µs (a cached read) up to 5 s (a write waiting on a slow replica). */
export const NBD_LATENCY_BUCKETS_SECONDS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

export interface StoreUsage {
  capacityBytes: number;
  usedBytes: number;
}

/** What the replication layer reports (src/replication/stats.ts plus live figures). */
export interface ReplicationReading {
  readonly degradedChanges: number;
  readonly failedChanges: number;
  readonly retriedChanges: number;
  readonly staleRecorded: number;
  readonly caughtUp: number;
  readonly moved: number;
  readonly repaired: number;
  readonly scrubbed: number;
  readonly divergent: number;
  readonly copiedBytes: number;
  readonly copyBytesPerSec: number;
  readonly failingPeers: number;
  readonly ringVersion: number;
  /** 0 stable, 1 moving, 2 settled. */
  readonly ringPhase: number;
  /** DOWN members past the down-out interval that this daemon does not take out (too few members, a survivor too full or of unknown usage). */
  readonly downOutHeld: number;
}

export interface MetricsOptions {
  /** Read at every scrape; may be set later with setStoreUsageSource. */
  storeUsage?: () => StoreUsage;
  /** prom-client's process and Node.js metrics (RSS, CPU, heap, event loop lag). Default true. */
  defaultMetrics?: boolean;
}

export interface TorusMetrics {
  readonly registry: Registry;
  /**
   * One NBD request finished. `bytes` is the payload moved (counted for read
   * and write only, and only when they succeed); `errno` is the NBD error
   * sent in the reply, 0 or undefined for success.
   */
  nbdRequest(command: NbdCommandName, bytes: number, latencyMs: number, errno?: number): void;
  nbdConnectionOpened(): void;
  nbdConnectionClosed(): void;
  /** A block read from the local store failed its checksum. */
  storeCrcFailure(): void;
  setStoreUsageSource(source: () => StoreUsage): void;
  /** Volumes this daemon has open (served over NBD or attached). */
  setVolumesOpen(count: number): void;
  /** 1 while the etcd session (lease) is alive, 0 when it is lost. */
  setEtcdHealthy(healthy: boolean): void;
  /** Read at every scrape. */
  setReplicationSource(source: () => ReplicationReading): void;
  /** The data path's buffer pool (util/buffer-pool.ts), read at every scrape. */
  setBufferPoolSource(source: () => BufferPoolStats): void;
}

function errnoLabel(errno: number): string {
  return NBD_ERRNO_NAMES[errno] ?? 'other';
}

/** Resolution of the event-loop delay histogram (nodejs_eventloop_lag_*), ms. */
export const EVENT_LOOP_SAMPLE_MS = 1000;

export function createMetrics(registry: Registry, options: MetricsOptions = {}): TorusMetrics {
  const registers = [registry];
  // prom-client samples event-loop delay with a libuv timer every
  // `eventLoopMonitoringPrecision` ms (10 by default): 100 wake-ups a second
  // of an otherwise idle torusd, about half of its idle CPU (issue 7: idle
  // CPU <= 1 % of a core). One sample a second still shows a stalled loop
  // (the delayed sample is the stall); the lag gauge is measured at scrape.
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });

  // The NBD request figures are tallied in plain arrays on the data path
  // (a few additions per request) and copied into prom-client at scrape
  // time: labelled Counter.inc and Histogram.observe cost about 7 % of a
  // 4 KiB request's CPU.
  const tally = new NbdTally();
  new Counter({
    name: 'torus_nbd_requests_total',
    help: 'NBD requests handled, by command and result (ok or error)',
    labelNames: ['command', 'result'] as const,
    registers,
    collect() {
      this.reset();
      tally.commands.forEach((command, c) => {
        if (tally.ok[c]! > 0) this.inc({ command, result: 'ok' }, tally.ok[c]!);
        if (tally.failed[c]! > 0) this.inc({ command, result: 'error' }, tally.failed[c]!);
      });
    },
  });
  new Counter({
    name: 'torus_nbd_read_bytes_total',
    help: 'Bytes returned to NBD clients by successful reads',
    registers,
    collect() {
      this.reset();
      this.inc(tally.readBytes);
    },
  });
  new Counter({
    name: 'torus_nbd_written_bytes_total',
    help: 'Bytes accepted from NBD clients by successful writes',
    registers,
    collect() {
      this.reset();
      this.inc(tally.writtenBytes);
    },
  });
  registry.registerMetric(tally.latencyMetric('torus_nbd_request_duration_seconds', 'Time from receiving an NBD request to sending its reply, by command') as never);
  new Counter({
    name: 'torus_nbd_errors_total',
    help: 'NBD replies carrying an error, by errno name',
    labelNames: ['errno'] as const,
    registers,
    collect() {
      this.reset();
      for (const [errno, n] of tally.errors) this.inc({ errno }, n);
    },
  });
  const connections = new Gauge({
    name: 'torus_nbd_connections',
    help: 'Open NBD client connections',
    registers,
  });
  const crcFailures = new Counter({
    name: 'torus_store_crc_failures_total',
    help: 'Blocks read from the local store that failed their CRC-32C check',
    registers,
  });

  // Figures kept elsewhere are copied in at scrape time; none while the source is unset.
  const scrapedCounter = (name: string, help: string, read: () => number | undefined): void => {
    new Counter({
      name,
      help,
      registers,
      collect() {
        const v = read();
        if (v === undefined) return;
        this.reset();
        this.inc(v);
      },
    });
  };
  const scrapedGauge = (name: string, help: string, read: () => number | undefined): void => {
    new Gauge({
      name,
      help,
      registers,
      collect() {
        const v = read();
        if (v !== undefined) this.set(v);
      },
    });
  };

  let storeUsage = options.storeUsage;
  // Last good reading: a failing source must not break the whole scrape.
  let lastUsage: StoreUsage | undefined;
  const readUsage = (): StoreUsage | undefined => {
    if (storeUsage !== undefined) {
      try {
        lastUsage = storeUsage();
      } catch {
        // Keep the previous reading; the store reports its own errors.
      }
    }
    return lastUsage;
  };
  scrapedGauge('torus_store_capacity_bytes', 'Bytes the local block store may use (its --size)', () => readUsage()?.capacityBytes);
  scrapedGauge('torus_store_used_bytes', 'Bytes the local block store uses now', () => readUsage()?.usedBytes);
  const volumesOpen = new Gauge({
    name: 'torus_volumes_open',
    help: 'Volumes this daemon has open',
    registers,
  });
  const etcdHealthy = new Gauge({
    name: 'torus_etcd_session_healthy',
    help: '1 while the etcd session (lease) is alive, 0 otherwise',
    registers,
  });
  let replication: (() => ReplicationReading) | undefined;
  let lastReplication: ReplicationReading | undefined;
  const readReplication = (): ReplicationReading | undefined => {
    if (replication !== undefined) {
      try {
        lastReplication = replication();
      } catch {
        // keep the previous reading
      }
    }
    return lastReplication;
  };
  const replicationCounters: [string, string, keyof ReplicationReading][] = [
    ['torus_replication_degraded_changes_total', 'Changes acknowledged with some owners recorded stale instead (a peer down or failing)', 'degradedChanges'],
    ['torus_replication_failed_changes_total', 'Change attempts not acknowledged because fewer than minReplicas owners took them (a first attempt sent again counts too)', 'failedChanges'],
    ['torus_replication_retried_changes_total', 'Changes sent again after owners that refused them until caught up (a copy found rotten or behind) were caught up', 'retriedChanges'],
    ['torus_replication_stale_recorded_total', 'Blocks recorded stale in etcd for an owner that missed a change', 'staleRecorded'],
    ['torus_replication_caught_up_blocks_total', 'Blocks copied or confirmed for a peer that had missed changes', 'caughtUp'],
    ['torus_replication_moved_blocks_total', 'Block copies made for new owners during ring transitions', 'moved'],
    ['torus_replication_repaired_blocks_total', 'Copies replaced after a checksum failure, a lost change or a scrub', 'repaired'],
    ['torus_replication_scrubbed_blocks_total', 'Blocks whose copies a scrub compared and checked', 'scrubbed'],
    ['torus_replication_divergent_blocks_total', 'Blocks whose copies differ at one version (investigate)', 'divergent'],
    ['torus_replication_copied_bytes_total', 'Bytes copied for moves, catch-up, repair and scrub', 'copiedBytes'],
  ];
  for (const [name, help, key] of replicationCounters) scrapedCounter(name, help, () => readReplication()?.[key]);
  const replicationGauges: [string, string, keyof ReplicationReading][] = [
    ['torus_replication_copy_bytes_per_second', 'Background copy rate over the last 10 s (the REB/REP DATA column)', 'copyBytesPerSec'],
    ['torus_replication_failing_peers', 'Peers this daemon skips now because they failed a request (probed every second)', 'failingPeers'],
    ['torus_ring_version', 'Version of the ring this daemon uses', 'ringVersion'],
    ['torus_ring_phase', 'Ring transition phase: 0 stable, 1 moving, 2 settled', 'ringPhase'],
    ['torus_ring_down_out_held', 'Ring members DOWN past --down-out-interval that this daemon holds in the ring (fewer than R members would remain, a survivor would fill past 85 %, or a survivor never reported its usage)', 'downOutHeld'],
  ];
  for (const [name, help, key] of replicationGauges) scrapedGauge(name, help, () => readReplication()?.[key]);
  let pool: (() => BufferPoolStats) | undefined;
  // A buffer never given back stays counted in use: a rising in-use figure
  // with no load is a leak (the GC still takes the buffer, V8 then collects
  // on external memory growth instead).
  const poolFigure = (key: keyof BufferPoolStats) => (): number | undefined => pool?.()[key];
  scrapedGauge('torus_buffer_pool_in_use_bytes', 'Pooled data-path buffers handed out and not given back yet, bytes', poolFigure('inUseBytes'));
  scrapedGauge('torus_buffer_pool_free_bytes', 'Pooled buffers on the free lists, bytes (bounded)', poolFigure('freeBytes'));
  scrapedCounter('torus_buffer_pool_allocations_total', 'Pooled buffers allocated because no free one of the size was there', poolFigure('allocations'));
  scrapedCounter('torus_buffer_pool_reuses_total', 'Pooled buffers handed out again from a free list', poolFigure('reuses'));
  volumesOpen.set(0);
  etcdHealthy.set(0);
  connections.set(0);

  return {
    registry,
    nbdRequest(command, bytes, latencyMs, errno) {
      tally.add(command, bytes, latencyMs, errno);
    },
    nbdConnectionOpened() {
      connections.inc();
    },
    nbdConnectionClosed() {
      connections.dec();
    },
    storeCrcFailure() {
      crcFailures.inc();
    },
    setStoreUsageSource(source) {
      storeUsage = source;
    },
    setVolumesOpen(count) {
      volumesOpen.set(count);
    },
    setEtcdHealthy(healthy) {
      etcdHealthy.set(healthy ? 1 : 0);
    },
    setReplicationSource(source) {
      replication = source;
    },
    setBufferPoolSource(source) {
      pool = source;
    },
  };
}

/** Per-command request counts and latency buckets, in plain arrays. */
class NbdTally {
  /** Label values by index; the last, 'other', keeps a misbehaving caller from growing the series count. */
  readonly commands: readonly string[] = [...NBD_COMMANDS, 'other'];
  readonly ok = new Float64Array(NBD_COMMANDS.length + 1);
  readonly failed = new Float64Array(NBD_COMMANDS.length + 1);
  /** Non-cumulative counts per command, one slot per bucket plus +Inf. */
  private readonly buckets = new Float64Array((NBD_COMMANDS.length + 1) * (NBD_LATENCY_BUCKETS_SECONDS.length + 1));
  private readonly sums = new Float64Array(NBD_COMMANDS.length + 1);
  readonly errors = new Map<string, number>();
  readBytes = 0;
  writtenBytes = 0;

  add(command: string, bytes: number, latencyMs: number, errno: number | undefined): void {
    let c = (NBD_COMMANDS as readonly string[]).indexOf(command);
    if (c < 0) c = NBD_COMMANDS.length;
    const failed = errno !== undefined && errno !== 0;
    if (failed) {
      this.failed[c]!++;
      const name = errnoLabel(errno);
      this.errors.set(name, (this.errors.get(name) ?? 0) + 1);
    } else {
      this.ok[c]!++;
      if (bytes > 0) {
        if (c === 0) this.readBytes += bytes;
        else if (c === 1) this.writtenBytes += bytes;
      }
    }
    const seconds = latencyMs / 1000;
    const bounds = NBD_LATENCY_BUCKETS_SECONDS;
    let b = 0;
    while (b < bounds.length && seconds > bounds[b]!) b++;
    this.buckets[c * (bounds.length + 1) + b]!++;
    this.sums[c]! += seconds;
  }

  /** A histogram in prom-client's registry format, built from the tally at each scrape. */
  latencyMetric(name: string, help: string) {
    const get = async () => {
      const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
      const bounds = NBD_LATENCY_BUCKETS_SECONDS;
      this.commands.forEach((command, c) => {
        const count = this.ok[c]! + this.failed[c]!;
        if (count === 0) return;
        let cumulative = 0;
        for (let b = 0; b <= bounds.length; b++) {
          cumulative += this.buckets[c * (bounds.length + 1) + b]!;
          values.push({ value: cumulative, labels: { le: b < bounds.length ? bounds[b]! : '+Inf', command }, metricName: `${name}_bucket` });
        }
        values.push({ value: this.sums[c]!, labels: { command }, metricName: `${name}_sum` });
        values.push({ value: count, labels: { command }, metricName: `${name}_count` });
      });
      return { name, help, type: 'histogram', values, aggregator: 'sum' };
    };
    return { name, help, type: 'histogram', aggregator: 'sum', get, reset: () => undefined };
  }
}
