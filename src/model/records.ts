/**
 * Records kept in etcd. They are JSON, versioned by `schema` so a later
 * release can read what an earlier one wrote.
 */

export interface ClusterConfig {
  readonly schema: 1;
  /** Random id made at init; peers of other clusters are refused in the peer handshake. */
  readonly id: string;
  /** Bytes per block, fixed at init; a power of two between 4 KiB and 64 MiB. */
  readonly blockSize: number;
  /** How many peers hold each block (min(replication, ring size) in practice). */
  readonly replication: number;
  readonly createdAt: string; // ISO-8601
}

export interface VolumeRecord {
  readonly schema: 1;
  readonly id: number; // u32, never reused
  readonly name: string;
  readonly type: 'block';
  /** Bytes; a whole number of 512-byte sectors. */
  readonly size: number;
  readonly blockSize: number; // copied from the cluster at creation
  /** The head generation: writes go to blocks of this generation. */
  readonly generation: number;
  readonly createdAt: string;
}

export interface PeerRecord {
  readonly schema: 1;
  readonly uuid: string;
  /** host:port of the peer listener. */
  readonly address: string;
  readonly nbdAddress: string | null;
  readonly httpAddress: string | null;
  /** Bytes this peer may store (its --size) and bytes it stores now. */
  readonly capacity: number;
  readonly used: number;
  readonly updatedAt: string; // ISO-8601, refreshed on every heartbeat
  readonly hostname: string;
  readonly pid: number;
  readonly version: string;
  /** New at every start of the process (absent from 0.1.0 records). */
  readonly incarnation?: string;
  /** Bytes per second this peer copies for rebalance, catch-up and repair (the REB/REP column). */
  readonly rebalanceBytesPerSec?: number;
  /**
   * Volumes with blocks suspect on this peer (after an unclean stop, a
   * checksum failure, a gap): coordinators and maintainers compare and
   * repair them. At most PEER_SUSPECT_VOLUMES_MAX ids.
   */
  readonly suspectVolumes?: readonly number[];
}

/** Volume ids a peer record lists as holding suspect blocks, at most. */
export const PEER_SUSPECT_VOLUMES_MAX = 256;

export interface RingMember {
  readonly uuid: string;
  /** Relative share of blocks; torusd uses its capacity in bytes. */
  readonly weight: number;
}

/** Who holds what: the members and how many of them own each block. */
export interface Placement {
  readonly members: readonly RingMember[];
  readonly replication: number;
}

/**
 * A ring change in progress (docs/replication.md, "Ring transitions"):
 * blocks move from the owners under `from` to the owners under the ring's
 * own members and replication.
 *
 * - moving: writes go to old and new owners; reads come from old owners.
 * - settled: every volume has moved; reads come from new owners, writes
 *   still reach both until every process acknowledged this version.
 */
export interface RingTransition {
  readonly from: Placement;
  /**
   * Targets of earlier transitions replaced while they were still moving
   * (oldest first; absent when none). Their owners may hold the only
   * current copy of a block moved to them (an old owner that took a change
   * crashed before flushing it while the other was recorded stale): they
   * count as old owners until this transition is stable, so the move
   * copies from them and nothing drops their copies meanwhile.
   */
  readonly carried?: readonly Placement[];
  readonly phase: 'moving' | 'settled';
  /** Ring version at which the transition started (its moving version). */
  readonly startedVersion: number;
  readonly startedAt: string; // ISO-8601
  /** Why, for status: `peer add <uuid>`, `down-out <uuid>`, ... */
  readonly reason: string;
}

export interface RingRecord {
  /** 2 since replication; a schema-1 record reads as schema 2 with the defaults. */
  readonly schema: 2;
  /** Every change is version + 1, written by compare-and-swap. */
  readonly version: number;
  readonly replication: number;
  /** Owners that must take a write for it to be acknowledged (1..replication). */
  readonly minReplicas: number;
  readonly members: readonly RingMember[];
  /** Null when the ring is stable. */
  readonly transition: RingTransition | null;
}

/**
 * Blocks of one volume that one peer must not be read for until it has
 * caught up: written before a degraded write is acknowledged
 * (docs/replication.md, "Stale records"). Ranges are [start, end) block
 * indexes, sorted and disjoint.
 */
export interface StaleRecord {
  readonly schema: 1;
  readonly volumeId: number;
  readonly peer: string;
  /** The whole volume: the peer missed the coordinator's fencing token, or too many ranges to list. */
  readonly all: boolean;
  readonly ranges: readonly (readonly [number, number])[];
  /**
   * Blocks where the peer may hold a change no client was told succeeded (a
   * change no owner confirmed): it missed no acknowledged change there, but
   * is not read until a coordinator compared its copy (docs/replication.md,
   * "Unsure blocks"). Absent when empty.
   */
  readonly unsure?: readonly (readonly [number, number])[];
  readonly updatedAt: string;
}

/**
 * What a process doing I/O publishes under its lease: the ring version it
 * uses and the etcd revision up to which it has learnt fencing tokens.
 * Ring transitions wait on these (docs/replication.md).
 */
export interface RingAck {
  readonly schema: 1;
  /** The lease it lives under (decimal), which names the process. */
  readonly lease: string;
  /** torusd: its peer uuid; torusblk: null. */
  readonly peer: string | null;
  readonly kind: 'peer' | 'client';
  readonly ringVersion: number;
  /** etcd revision through which fencing tokens from the volume-fence/ watch are persisted here (peers; 0 for clients). */
  readonly fenceRevision: number;
  readonly updatedAt: string;
}

/** Progress of one volume in one ring transition (its moving version). */
export interface VolumeMoveRecord {
  readonly schema: 1;
  readonly ringVersion: number;
  readonly volumeId: number;
  readonly done: boolean;
  /** Blocks looked at and blocks copied so far. */
  readonly scanned: number;
  readonly copied: number;
  /** Blocks with no current copy reachable (the move cannot finish while > 0). */
  readonly unavailable: number;
  /**
   * How far the pass has gone through the volume's block indexes (blocks
   * it skipped as absent included): progress in blocks. Absent in records
   * of an older release.
   */
  readonly reached?: number;
  readonly updatedAt: string;
}

/** The last full check of a volume's copies (scrub or move), for status and `Balanced`. */
export interface VolumeHealthRecord {
  readonly schema: 1;
  readonly volumeId: number;
  readonly ringVersion: number;
  readonly blocks: number;
  /** Blocks with fewer than R current copies found by the check. */
  readonly short: number;
  readonly repaired: number;
  readonly divergent: number;
  readonly checkedAt: string;
}

export interface VolumeLockRecord {
  readonly schema: 1;
  readonly volumeId: number;
  /** Who holds it, for error messages: e.g. `torusd 3f2a... on node-1 (pid 42)`. */
  readonly holder: string;
  /**
   * Fencing token: strictly increases each time anyone takes the lock on this
   * volume. Peers refuse writes carrying a token older than the newest seen.
   */
  readonly token: number;
  readonly acquiredAt: string;
  /**
   * writer: serves the volume (NBD); maintainer: moves, catches up or
   * scrubs it while no one writes; reader: reads it under a shared reader
   * lock (no writer meanwhile; its token is the volume's newest when it
   * began, for messages only). Absent (0.1.0) means writer.
   */
  readonly kind?: 'writer' | 'maintainer' | 'reader';
}
