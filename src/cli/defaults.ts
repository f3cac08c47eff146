/**
 * Defaults of torusctl. Cluster-wide ones (block size, replication, etcd
 * endpoint) live in src/model/defaults.ts, shared with torusd and torusblk.
 */

export { DEFAULT_BLOCK_SIZE_BYTES, DEFAULT_REPLICATION, DEFAULT_ETCD_HOST, DEFAULT_ETCD_PORT, defaultEtcdEndpoint } from '../model/defaults.js';

/** Bound on each etcd call torusctl makes. */
export const CLI_ETCD_CALL_TIMEOUT_MS = 5_000;

/** `peer remove` re-reads the ring and move records this often while it waits for a drain. */
export const DRAIN_POLL_INTERVAL_MS = 1_000;

/** Compare-and-swap retries of ring edits before giving up. */
export const RING_EDIT_ATTEMPTS_MAX = 5;

/** The wipe confirmation line read from a terminal. */
export const CONFIRM_LINE_BYTES_MAX = 1024;
export const CONFIRM_TIMEOUT_MS = 5 * 60_000;
