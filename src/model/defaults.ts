/**
 * Defaults shared by every binary: what `torusctl init` and
 * `torusd --debug-init` format a cluster with, and where etcd is looked for.
 */

/**
 * Bytes per block. Writes go in place, so the size does not multiply write
 * traffic; it sets the unit of placement and thin allocation and how many
 * files a FLUSH syncs. README ("Block size") has the measurements.
 */
export const DEFAULT_BLOCK_SIZE_BYTES = 1024 * 1024;
/** How many peers hold each block. */
export const DEFAULT_REPLICATION = 2;

export const DEFAULT_ETCD_HOST = '127.0.0.1';
export const DEFAULT_ETCD_PORT = '2379';

/** `-C` default: ETCD_HOST and ETCD_PORT from the environment, else 127.0.0.1:2379. */
export function defaultEtcdEndpoint(env: Readonly<Record<string, string | undefined>>): string {
  const host = env['ETCD_HOST'] || DEFAULT_ETCD_HOST;
  const port = env['ETCD_PORT'] || DEFAULT_ETCD_PORT;
  // ETCD_HOST may already carry a port (host:port), as Torus allowed.
  return /:\d+$/.test(host) ? host : `${host}:${port}`;
}
