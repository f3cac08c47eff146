import type { Logger } from 'pino';
import type { MetadataService } from '../metadata/metadata-service.js';
import type { ReplicaApi, RequestContext } from '../model/replica-api.js';
import type { RingRecord } from '../model/records.js';
import type { Clock } from '../util/clock.js';
import type { InvariantBroken } from '../util/invariant.js';
import type { Random } from '../util/random.js';
import type { PeerHealth } from './peer-health.js';
import type { ReplicationStats } from './stats.js';
import type { ReplicationSettings } from './settings.js';
import type { Throttle } from './throttle.js';

/**
 * What every volume coordinator of one process shares: the ring, the
 * peers, their health, the copy budget, time and randomness. Provided by
 * src/cluster/node.ts; a test can provide its own.
 */
export interface ClusterContext {
  /** This process's peer uuid; null for a client without a store (torusblk). */
  readonly selfUuid: string | null;
  readonly clock: Clock;
  readonly random: Random;
  readonly metadata: MetadataService;
  readonly health: PeerHealth;
  readonly settings: ReplicationSettings;
  readonly throttle: Throttle;
  readonly stats: ReplicationStats;
  readonly logger: Logger;
  /**
   * Where work nobody awaits (a stale record cleared in passing, a change
   * acknowledged early) reports a broken invariant (util/invariant.ts);
   * awaited work lets the assertion failure go on up instead.
   */
  readonly invariantBroken: InvariantBroken;
  /** The ring this process uses now. */
  ring(): RingRecord;
  /** The context to stamp on a request now. */
  requestContext(): RequestContext;
  /** A peer's replica API: the local replica for self, a peer client for others, null while unknown. */
  replica(uuid: string): ReplicaApi | null;
  /** Re-reads the ring from etcd if ours is older than `minVersion` (one read at a time). */
  refreshRing(minVersion: number): Promise<void>;
  /** Re-reads which peers are live (DOWN is a ring member without a peer record). */
  refreshPeers(): Promise<void>;
  /** Peers with a live peer record at our last look at etcd, ring members or not (a former owner may still hold leftovers). */
  livePeers(): readonly string[];
  /** Volumes a peer says hold suspect blocks (its peer record). */
  suspectVolumesOf(uuid: string): readonly number[];
  /** True once every live peer acknowledged this ring version (moves wait for it). */
  ringAcknowledged(ringVersion: number): Promise<boolean>;
  /** Monotonic ms after which this process's lease (and its locks) must be assumed gone. */
  leaseDeadline(): number;
  /** The id of this process's etcd session now (null while it has none): a lock held under another one is gone. */
  sessionId(): string | null;
  /** Restarts of a peer seen so far (PeerTransport.restarts); 0 when the transport cannot tell. */
  peerRestarts?(uuid: string): number;
}
