import type { Logger } from 'pino';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import type { PeerTransport, ReplicaApi } from '../../src/model/replica-api.js';
import type { PeerRecord } from '../../src/model/records.js';
import type { Version } from '../../src/model/version.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import type { Clock } from '../../src/util/clock.js';
import type { InvariantBroken } from '../../src/util/invariant.js';
import type { Ids, Random } from '../../src/util/random.js';
import type { FencePersistence } from '../../src/store/fence-file.js';

/**
 * What the simulation needs of one peer, and what it gives it. The real
 * peer (src/cluster/node.ts) is adapted to this in real-node.ts; the broken
 * variants (variants.ts) wrap the same adapter. Keeping the seam here means
 * the runner never reaches into the node's internals.
 */

/** A change a replica applied, with the token it came with (the fencing checker's input). */
export interface AppliedChangeLike {
  readonly ref: BlockRef;
  readonly kind: string;
  readonly token: number;
  readonly version: Version;
}

export interface NodeEnv {
  readonly uuid: string;
  readonly metadata: MetadataService;
  readonly store: LocalBlockStore;
  readonly fences: FencePersistence;
  readonly transport: PeerTransport;
  readonly clock: Clock;
  readonly random: Random;
  readonly ids: Ids;
  readonly logger: Logger;
  readonly timing: SimTiming;
  readonly peerRecord: () => PeerRecord;
  /** Every change the local replica applies. */
  readonly onApplied: (change: AppliedChangeLike) => void;
  /** The node broke an invariant where no caller sees it (background work): the seed fails as a bug. */
  readonly onInvariantBroken: InvariantBroken;
}

/** The volume as a client (NBD) uses it: byte ranges. */
export interface VolumeIo {
  /** The volume's id (variants that look behind the volume use it). */
  readonly volumeId?: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  zero(offset: number, length: number, opts: { punch: boolean; fua: boolean }): Promise<void>;
  flush(): Promise<void>;
  /** Flushes (rw) and lets the volume go (its lock released). */
  close(): Promise<void>;
}

export interface NodeUnderTest {
  /** What the network delivers requests to; null until the node has started its replica. */
  readonly replica: ReplicaApi | null;
  start(): Promise<void>;
  open(name: string, mode: 'rw' | 'ro'): Promise<VolumeIo>;
  /**
   * The process was told to stop (SIGTERM), before its clients are let go:
   * what torusd's stop does first (ClusterNode.beginStop).
   */
  beginStop(): void;
  /** Orderly stop, once its clients are let go (not used for crashes: a crash kills the process). */
  stop(): Promise<void>;
}

export type NodeFactory = (env: NodeEnv) => NodeUnderTest;

/**
 * The timing knobs of a simulated peer, shrunk from the production
 * defaults so that a seed covers many fault cycles in little simulated
 * time, and kept in the same proportions (a heartbeat well inside the
 * lease, a replica timeout shorter than the NBD timeout).
 */
export interface SimTiming {
  readonly replicaTimeoutMs: number;
  readonly etcdCallTimeoutMs: number;
  readonly sessionTtlSeconds: number;
  readonly heartbeatMs: number;
  readonly probeIntervalMs: number;
  readonly backgroundIntervalMs: number;
  readonly gcIntervalMs: number;
  readonly downOutIntervalMs: number;
  readonly scrubIntervalMs: number;
  readonly retryMs: number;
  readonly writeLevel: 'all' | 'one' | 'local';
}

export const SIM_TIMING: SimTiming = {
  replicaTimeoutMs: 2_000,
  etcdCallTimeoutMs: 2_000,
  sessionTtlSeconds: 6,
  heartbeatMs: 1_500,
  probeIntervalMs: 1_000,
  backgroundIntervalMs: 1_000,
  gcIntervalMs: 5_000,
  downOutIntervalMs: 0,
  scrubIntervalMs: 120_000,
  retryMs: 200,
  writeLevel: 'all',
};
