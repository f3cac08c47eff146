/**
 * Format marks in the volume's own cluster: `/torus/flex/formatted/<volumeId>`
 * holds `{"fsType":"ext4","at":"..."}`. Keyed by the volume id, which is never
 * reused, so a new volume that takes a deleted one's name starts unmarked.
 * The FlexVolume and CSI drivers share the marks (the key kept the name it
 * had when only the FlexVolume driver wrote it), so a volume moved from one
 * driver to the other is never formatted again.
 */
import { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { TorusError } from '../../errors/torus-error.js';
import { withEtcd, type EtcdCallContext } from '../../metadata/etcd-errors.js';
import { EtcdMetadata } from '../../metadata/etcd-metadata.js';
import { DEFAULT_PREFIX } from '../../metadata/keys.js';
import { systemClock, type Clock } from '../../util/clock.js';
import type { FormatMark, FormatMarks } from './format-marks.js';
import type { FsType } from './filesystem.js';

const CALL_TIMEOUT_MS = 5_000;
/** Pods may name other clusters' etcd; one client pair per cluster, and a bound on how many. */
const CLUSTERS_MAX = 16;

export function formatMarkKey(volumeId: number): string {
  return `flex/formatted/${volumeId}`;
}

interface ClusterClients {
  readonly metadata: EtcdMetadata;
  readonly etcd: Etcd3;
  readonly ctx: EtcdCallContext;
}

export class EtcdFormatMarks implements FormatMarks {
  private readonly clusters = new Map<string, ClusterClients>();
  private readonly clock: Clock;

  constructor(
    private readonly opts: { readonly localEtcd: readonly string[]; readonly logger: Logger; readonly clock?: Clock },
  ) {
    this.clock = opts.clock ?? systemClock;
  }

  private clients(etcd: readonly string[] | null): ClusterClients {
    const endpoints = (etcd ?? this.opts.localEtcd).map((e) => e.replace(/^https?:\/\//, ''));
    const id = endpoints.join(',');
    const have = this.clusters.get(id);
    if (have) return have;
    if (this.clusters.size >= CLUSTERS_MAX) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `pods on this node name more than ${CLUSTERS_MAX} etcd clusters`);
    }
    const made: ClusterClients = {
      metadata: new EtcdMetadata({ endpoints, logger: this.opts.logger, clock: this.clock, callTimeoutMs: CALL_TIMEOUT_MS }),
      // withEtcd bounds every call; the per-attempt deadline keeps gRPC from waiting longer.
      etcd: new Etcd3({ hosts: endpoints.map((e) => `http://${e}`), defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }) }),
      ctx: { endpoints: id, timeoutMs: CALL_TIMEOUT_MS, clock: this.clock },
    };
    this.clusters.set(id, made);
    return made;
  }

  async get(volume: string, etcd: readonly string[] | null): Promise<FormatMark | null> {
    const c = this.clients(etcd);
    const rec = await c.metadata.getVolume(volume);
    const key = DEFAULT_PREFIX + formatMarkKey(rec.id);
    const text = await withEtcd(c.ctx, `get ${key}`, () => c.etcd.get(key).string());
    if (text === null) return null;
    let mark: Partial<FormatMark>;
    try {
      mark = JSON.parse(text) as Partial<FormatMark>;
    } catch {
      throw new TorusError('TORUS_ERR_METADATA_CORRUPT', `${key} is not JSON`);
    }
    if (typeof mark.fsType !== 'string' || typeof mark.at !== 'string') throw new TorusError('TORUS_ERR_METADATA_CORRUPT', `${key} is not a format mark`);
    return { fsType: mark.fsType, at: mark.at };
  }

  async set(volume: string, etcd: readonly string[] | null, fsType: FsType): Promise<void> {
    const c = this.clients(etcd);
    const rec = await c.metadata.getVolume(volume);
    const key = DEFAULT_PREFIX + formatMarkKey(rec.id);
    const body = JSON.stringify({ fsType, at: new Date(this.clock.now()).toISOString() });
    await withEtcd(c.ctx, `put ${key}`, () => c.etcd.put(key).value(body).exec());
  }

  /** The cluster id etcd holds at /torus/config (the same clients serve the cluster check). */
  async clusterId(etcd: readonly string[]): Promise<string> {
    const config = await this.clients(etcd).metadata.getClusterConfig();
    if (config === null) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', `etcd ${etcd.join(',')} holds no torus cluster`);
    return config.id;
  }

  async close(): Promise<void> {
    for (const c of this.clusters.values()) {
      await c.metadata.close().catch(() => undefined);
      c.etcd.close();
    }
    this.clusters.clear();
  }
}
