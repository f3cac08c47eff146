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
}

export interface RingMember {
  readonly uuid: string;
  /** Relative share of blocks; torusd uses its capacity in bytes. */
  readonly weight: number;
}

export interface RingRecord {
  readonly schema: 1;
  /** Every change is version + 1, written by compare-and-swap. */
  readonly version: number;
  readonly replication: number;
  readonly members: readonly RingMember[];
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
}
