/**
 * Defaults of torusctl, in one place so the lead can tune them.
 */

/** Block size `torusctl init` formats a cluster with when --block-size is not given. */
export const DEFAULT_BLOCK_SIZE_BYTES = 1024 * 1024;
export const DEFAULT_REPLICATION = 2;

export const DEFAULT_ETCD_HOST = '127.0.0.1';
export const DEFAULT_ETCD_PORT = '2379';

/** Bound on each etcd call torusctl makes. */
export const CLI_ETCD_CALL_TIMEOUT_MS = 5_000;

/**
 * `list-peers` calls the ring balanced when every member's used/capacity is
 * within this many percentage points of the mean over the members.
 */
export const BALANCE_TOLERANCE_PERCENT = 10;

/** Compare-and-swap retries of ring edits before giving up. */
export const RING_EDIT_ATTEMPTS_MAX = 5;

/** The wipe confirmation line read from a terminal. */
export const CONFIRM_LINE_BYTES_MAX = 1024;
export const CONFIRM_TIMEOUT_MS = 5 * 60_000;

/** `-C` default: ETCD_HOST and ETCD_PORT from the environment, else 127.0.0.1:2379. */
export function defaultEtcdEndpoint(env: Readonly<Record<string, string | undefined>>): string {
  const host = env['ETCD_HOST'] || DEFAULT_ETCD_HOST;
  const port = env['ETCD_PORT'] || DEFAULT_ETCD_PORT;
  // ETCD_HOST may already carry a port (host:port), as Torus allowed.
  return /:\d+$/.test(host) ? host : `${host}:${port}`;
}
