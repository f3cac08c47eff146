import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import { decodeClusterConfig, decodeRingRecord } from '../metadata/record-codec.js';
import { validateClusterParams } from '../metadata/validate.js';
import type { ClusterConfig, RingRecord } from '../model/records.js';
import { writeFileDurably } from '../store/store-io.js';

/**
 * What a data dir keeps of its cluster, next to its blocks:
 *
 * - `cluster.json` binds the data dir to one cluster (its id) and, since
 *   this release, holds a copy of the cluster config (block size,
 *   replication) as etcd last gave it;
 * - `ring.json` holds the newest ring this peer applied, with the cluster
 *   id it belongs to.
 *
 * Both are only a fallback for a start while etcd is unreachable
 * (TORUS_ERR_ETCD_UNAVAILABLE): the peer then serves reads of its copies
 * to other peers until etcd answers (README, "Restarting while etcd is
 * down"). etcd always wins when it answers, and a copy bound to another
 * cluster id is never used. Both files are replaced atomically and durably
 * (temp file, fsync, rename, fsync of the folder).
 */
const CLUSTER_FILE = 'cluster.json';
const RING_FILE = 'ring.json';

/** What a start without etcd needs: the cluster config and the newest ring applied, of one cluster. */
export interface StartCopies {
  readonly cluster: ClusterConfig;
  readonly ring: RingRecord;
}

type Json = Record<string, unknown>;

function corrupt(file: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_STORE_CORRUPT', `${file} is not a valid copy: ${why}`, { details: { file } });
}

/** The JSON object in `file` (schema 1), or null when there is no such file. */
async function readObject(file: string): Promise<Json | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw corrupt(file, 'not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(file, 'not a JSON object');
  const o = v as Json;
  if (o['schema'] !== 1) throw corrupt(file, `unknown schema ${JSON.stringify(o['schema'])}`);
  if (typeof o['clusterId'] !== 'string' || o['clusterId'] === '') throw corrupt(file, 'no cluster id');
  return o;
}

/** A record inside a copy, checked as etcd's records are; a bad one names the file, not an etcd key. */
function decodeInner<T>(file: string, field: string, o: Json, decode: (key: string, text: string) => T): T {
  if (typeof o[field] !== 'object' || o[field] === null) throw corrupt(file, `field "${field}" is not an object`);
  try {
    return decode(file, JSON.stringify(o[field]));
  } catch (err) {
    if (isTorusError(err, 'TORUS_ERR_METADATA_CORRUPT')) throw corrupt(file, `field "${field}": ${err.message}`);
    throw err;
  }
}

/**
 * Binds a data dir to one cluster and keeps a copy of its config. After
 * `torusctl wipe` and a new `init`, volume ids start again at 1, so blocks
 * left in an old data dir would be read as the new volumes' data: refuse
 * to start on them instead (TORUS_ERR_DATA_DIR_FOREIGN). `config` is what
 * etcd holds now; the file is rewritten only when it differs from the copy
 * (a data dir bound by an older release has the id alone).
 */
export async function bindDataDirToCluster(dataDir: string, config: ClusterConfig): Promise<void> {
  const file = path.join(dataDir, CLUSTER_FILE);
  const recorded = await readObject(file);
  if (recorded !== null) {
    if (recorded['clusterId'] !== config.id) throw foreign(dataDir, String(recorded['clusterId']), config.id);
    if (JSON.stringify(recorded['config']) === JSON.stringify(config)) return;
  }
  await writeFileDurably(file, JSON.stringify({ schema: 1, clusterId: config.id, config }) + '\n');
}

function foreign(dataDir: string, had: string, etcd: string): TorusError {
  return new TorusError(
    'TORUS_ERR_DATA_DIR_FOREIGN',
    `data dir ${dataDir} belongs to cluster ${had} but etcd holds cluster ${etcd} (it was wiped and initialised again); its blocks would be mistaken for the new cluster's volumes: move or remove ${dataDir}`,
  );
}

/** Keeps `ring` as the newest ring this peer applied (RingCopyKeeper calls it one write at a time). */
export async function keepRingCopy(dataDir: string, clusterId: string, ring: RingRecord): Promise<void> {
  await writeFileDurably(path.join(dataDir, RING_FILE), JSON.stringify({ schema: 1, clusterId, ring }) + '\n');
}

/**
 * The copies a start without etcd uses, or null when the data dir lacks
 * one (a fresh data dir, or one a release without copies wrote): then the
 * start waits for etcd. Throws TORUS_ERR_STORE_CORRUPT for a copy that does
 * not parse and TORUS_ERR_DATA_DIR_FOREIGN for a ring kept for another
 * cluster than the data dir is bound to.
 */
export async function readStartCopies(dataDir: string): Promise<StartCopies | null> {
  const clusterFile = path.join(dataDir, CLUSTER_FILE);
  const ringFile = path.join(dataDir, RING_FILE);
  const bound = await readObject(clusterFile);
  if (bound === null || bound['config'] === undefined) return null;
  const cluster = decodeInner(clusterFile, 'config', bound, decodeClusterConfig);
  if (cluster.id !== bound['clusterId']) throw corrupt(clusterFile, `the config is of cluster ${cluster.id}, the data dir is bound to ${String(bound['clusterId'])}`);
  try {
    validateClusterParams(cluster);
  } catch (err) {
    throw corrupt(clusterFile, (err as Error).message);
  }
  const kept = await readObject(ringFile);
  if (kept === null) return null;
  if (kept['clusterId'] !== cluster.id) {
    throw new TorusError('TORUS_ERR_DATA_DIR_FOREIGN', `${ringFile} holds a ring of cluster ${String(kept['clusterId'])} but the data dir is bound to cluster ${cluster.id}; it is not used`);
  }
  const ring = decodeInner(ringFile, 'ring', kept, decodeRingRecord);
  return { cluster, ring };
}

/** Where the cluster config of a start comes from. */
export type StartCluster =
  | { readonly source: 'etcd'; readonly cluster: ClusterConfig }
  | { readonly source: 'copies'; readonly cluster: ClusterConfig; readonly ring: RingRecord };

/**
 * One attempt at the cluster config for a start: etcd's answer whenever it
 * gives one (an error it answers with, such as a cluster not initialised,
 * is that error); the copies kept in the data dir (`kept`, asked only then)
 * only when etcd is unreachable. Without copies, etcd's unavailability is
 * thrown, and the caller waits for etcd as before.
 */
export async function clusterForStart(fromEtcd: () => Promise<ClusterConfig>, kept: () => Promise<StartCopies | null>): Promise<StartCluster> {
  try {
    return { source: 'etcd', cluster: await fromEtcd() };
  } catch (err) {
    if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE')) throw err;
    const copies = await kept();
    if (copies === null) throw err;
    return { source: 'copies', cluster: copies.cluster, ring: copies.ring };
  }
}

/**
 * Writes the newest ring the node applied to ring.json: one write at a
 * time, the latest offered wins (rings in between are skipped), a failure
 * is logged and the next ring tries again. Ring changes are rare, so this
 * is cheap; nothing on the request path waits for it.
 */
export class RingCopyKeeper {
  private pending: RingRecord | null = null;
  private writing: Promise<void> | null = null;
  private readonly log: Logger;

  constructor(
    private readonly dataDir: string,
    private readonly clusterId: string,
    logger: Logger,
    private readonly write: (dataDir: string, clusterId: string, ring: RingRecord) => Promise<void> = keepRingCopy,
  ) {
    this.log = logger.child({ module: 'ring-copy' });
  }

  offer(ring: RingRecord): void {
    this.pending = ring;
    this.writing ??= this.drain().finally(() => (this.writing = null));
  }

  /** Resolves once every ring offered so far is written (or failed). */
  async settled(): Promise<void> {
    while (this.writing !== null) await this.writing;
  }

  private async drain(): Promise<void> {
    for (let ring = this.pending; ring !== null; ring = this.pending) {
      this.pending = null;
      try {
        await this.write(this.dataDir, this.clusterId, ring);
      } catch (err) {
        this.log.warn({ err, ringVersion: ring.version }, 'could not keep a copy of the ring in the data dir');
      }
    }
  }
}
