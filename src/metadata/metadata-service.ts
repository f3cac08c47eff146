import type { ClusterConfig, PeerRecord, RingRecord, VolumeLockRecord, VolumeRecord } from '../model/records.js';

/**
 * Cluster metadata. The implementation over etcd v3 is etcd-metadata.ts; an
 * in-memory twin (memory-metadata.ts) serves unit and simulation tests.
 *
 * Failure rule: "could not read" is never "does not exist". Every method
 * either returns what etcd said or throws a TorusError
 * (TORUS_ERR_ETCD_UNAVAILABLE when etcd did not answer).
 */
export interface MetadataService {
  /** null only when etcd answered that the cluster is not initialised. */
  getClusterConfig(): Promise<ClusterConfig | null>;
  /** Throws TORUS_ERR_CLUSTER_ALREADY_INITIALISED unless force (force wipes first). */
  initCluster(config: { blockSize: number; replication: number }, opts: { force: boolean }): Promise<ClusterConfig>;
  /** Deletes every key under the torus prefix; returns how many. */
  wipe(): Promise<number>;

  listPeers(): Promise<PeerRecord[]>;
  getRing(): Promise<RingRecord>;
  /** Compare-and-swap: next.version must be current.version + 1, else TORUS_ERR_CLUSTER_CONFLICT. */
  setRing(next: RingRecord): Promise<void>;
  /** Calls back on every ring change (and once with the current ring). Returns a stop function. */
  watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>>;

  /** Validates name and size; TORUS_ERR_VOLUME_EXISTS, TORUS_ERR_CLUSTER_NOT_INITIALISED. */
  createVolume(name: string, size: number): Promise<VolumeRecord>;
  /** TORUS_ERR_VOLUME_NOT_FOUND. */
  getVolume(name: string): Promise<VolumeRecord>;
  listVolumes(): Promise<VolumeRecord[]>;
  /** Refused with TORUS_ERR_VOLUME_IN_USE while a write lock is held. */
  deleteVolume(name: string): Promise<VolumeRecord>;
  getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null>;
  /**
   * For garbage collection: the ids of live volumes and the highest id ever
   * handed out, read so that an id at or below `lastId` that is not live
   * belongs to a deleted volume (never to one being created).
   */
  volumeIdsForGc(): Promise<{ live: number[]; lastId: number }>;
  /** Calls back (no argument) after any volume is deleted. Returns a stop function. */
  watchVolumeDeletes(onDelete: () => void): Promise<() => Promise<void>>;

  /**
   * Revokes a lease left by a process that is known to be dead (torusd keeps
   * its lease id in its data dir): its locks and records go at once instead of
   * after the TTL. A lease that no longer exists is not an error.
   */
  revokeStaleLease(id: string): Promise<void>;
  /** A session owns one etcd lease; what it registers or locks dies with it. */
  openSession(opts: { ttlSeconds: number }): Promise<MetadataSession>;
  /**
   * Takes over a lease that an earlier run of this process was granted and
   * did not revoke (kernel attachments across a torusd restart).
   * TORUS_ERR_SESSION_LOST when etcd no longer has it.
   */
  resumeSession(opts: { leaseId: string; ttlSeconds: number }): Promise<MetadataSession>;
  close(): Promise<void>;
}

export type SessionEvent =
  /** Keepalive failed; the lease may still be alive server-side. */
  | { type: 'degraded'; err: Error }
  /** Keepalive works again. */
  | { type: 'healthy' }
  /** The lease is gone (expired or revoked): locks and registrations are lost. */
  | { type: 'lost'; err: Error };

export interface MetadataSession {
  /** The lease id, as a decimal string. */
  readonly id: string;
  /** Writes or refreshes this peer's record under the lease. */
  putPeer(record: PeerRecord): Promise<void>;
  /**
   * Takes the write lock on a volume. Throws TORUS_ERR_VOLUME_IN_USE naming the
   * current holder. The returned token is strictly greater than any earlier
   * token for this volume.
   */
  lockVolume(name: string, holder: string): Promise<VolumeLock>;
  /**
   * Takes over a lock this session's lease holds already, with its token
   * (after resumeSession). TORUS_ERR_VOLUME_LOCK_LOST when the lock is gone,
   * on another lease or under another token.
   */
  adoptVolumeLock(name: string, token: number): Promise<VolumeLock>;
  /** Stops keepalives without revoking: locks and records live until the TTL (see resumeSession). */
  suspend(): Promise<void>;
  on(listener: (event: SessionEvent) => void): () => void;
  /** Monotonic ms deadline after which the lease must be assumed expired. */
  leaseDeadline(): number;
  /** Revokes the lease (releasing its locks and records). */
  close(): Promise<void>;
}

export interface VolumeLock {
  readonly volume: VolumeRecord;
  readonly token: number;
  readonly holder: string;
  release(): Promise<void>;
}

export const VOLUME_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
