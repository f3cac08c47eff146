/**
 * Documents torusd serves over HTTP. torusctl and tests read them, so fields
 * are only ever added, never renamed.
 */

/** One volume this daemon has open. */
export interface StatusVolume {
  readonly name: string;
  readonly id: number;
  readonly mode: 'rw' | 'ro';
  /** NBD connections using it now. */
  readonly connections: number;
  /** Fencing token of the write lock this daemon holds; null when read-only. */
  readonly lockToken: number | null;
}

/** GET /v1/status. */
export interface StatusDocument {
  /** This peer's uuid (kept in its data dir). */
  readonly uuid: string;
  /** torus version (package.json). */
  readonly version: string;
  /** host:port of each listener; null when that listener is off. */
  readonly addresses: {
    readonly peer: string;
    readonly nbd: string | null;
    readonly http: string | null;
  };
  /** Bytes the local store may use, and uses now. */
  readonly capacity: number;
  readonly used: number;
  readonly openVolumes: readonly StatusVolume[];
  readonly etcd: {
    readonly endpoints: readonly string[];
    /** The etcd session (lease) is alive. */
    readonly healthy: boolean;
  };
  /** Which CRC-32C code is in use, e.g. `native (sse4.2)` or `js (slicing-by-8)`. */
  readonly crc32c: string;
  /** The ring this peer uses. */
  readonly ring?: {
    readonly version: number;
    readonly phase: 'stable' | 'moving' | 'settled';
    readonly members: number;
    readonly replication: number;
    readonly minReplicas: number;
  };
  /** Background copies (moves, catch-up, repair, scrub) and peers that fail requests now. */
  readonly replication?: {
    readonly copiedBytes: number;
    readonly copyBytesPerSec: number;
    readonly failingPeers: readonly string[];
    /** Requests to each peer on the wire or waiting for its connection (peer uuid -> count). */
    readonly peerRequestsInFlight: Readonly<Record<string, number>>;
  };
}

export interface HealthCheck {
  readonly ok: boolean;
  /** Why it failed, for humans; short. */
  readonly detail?: string;
}

/** What torusd's health function returns; GET /healthz renders it. */
export interface HealthReport {
  readonly ok: boolean;
  readonly checks: Readonly<Record<string, HealthCheck>>;
}
