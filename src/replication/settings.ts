/**
 * Knobs of the replication layer, with the defaults docs/replication.md
 * states. torusd maps its flags onto these; the simulation shrinks them.
 */
export type WriteLevel = 'all' | 'one' | 'local';

export interface ReplicationSettings {
  /** A replica that does not answer a request within this has failed it. */
  readonly replicaTimeoutMs: number;
  /** After a failure, a peer is not sent changes (they are recorded stale at once) until a probe succeeds; probes run this often. */
  readonly probeIntervalMs: number;
  readonly writeLevel: WriteLevel;
  /** Bytes per second this process copies for moves, catch-up, repair and scrub. */
  readonly copyBytesPerSec: number;
  /** A full scrub of each volume this often (0: never). */
  readonly scrubIntervalMs: number;
  /** How often background work (catch-up, moves, scrub, stale record refresh) looks for something to do. */
  readonly backgroundIntervalMs: number;
  /**
   * A background pass that found nothing to do (no open volume with work, no
   * ring transition, no DOWN member, no volume due for maintenance) doubles
   * the wait before the next one up to this; any work found, a ring change,
   * a change in the live peers or their suspect volumes, a peer answering
   * again or a local suspect brings it back to backgroundIntervalMs. Idle
   * polling of etcd is most of an idle torusd's CPU (issue 7).
   */
  readonly backgroundIdleIntervalMaxMs: number;
  /** Blocks whose versions a coordinator keeps in memory (least recently used go first). */
  readonly blockCacheMax: number;
  /** Times a change is re-sent after a peer said our ring was outdated. */
  readonly ringRetriesMax: number;
}

export const DEFAULT_REPLICATION_SETTINGS: ReplicationSettings = {
  replicaTimeoutMs: 8_000,
  probeIntervalMs: 1_000,
  writeLevel: 'all',
  copyBytesPerSec: 100 * 1024 * 1024,
  scrubIntervalMs: 24 * 3600 * 1000,
  backgroundIntervalMs: 2_000,
  // 8 intervals, as the simulation runs it (test/sim/real-node.ts). It was
  // off until the bugs this timing exposed were fixed (docs/replication.md,
  // "Background work").
  backgroundIdleIntervalMaxMs: 16_000,
  blockCacheMax: 65_536,
  ringRetriesMax: 3,
};

export function parseWriteLevel(s: string): WriteLevel | null {
  return s === 'all' || s === 'one' || s === 'local' ? s : null;
}
