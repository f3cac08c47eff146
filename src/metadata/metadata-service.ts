import { isTorusError } from '../errors/torus-error.js';
import type { StaleAdd } from './validate.js';
import type { ClusterConfig, PeerRecord, RingAck, RingRecord, StaleRecord, VolumeHealthRecord, VolumeLockRecord, VolumeMoveRecord, VolumeRecord } from '../model/records.js';

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
  /**
   * Calls back on every ring change (and once with the current ring). Returns
   * a stop function. A watch that lost history (compaction, a long
   * disconnection) re-reads the ring and calls back if it moved.
   */
  watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>>;

  // ---- cluster secret (peer authentication)
  /** The cluster secret (hex), or null when the cluster has none yet (0.1.0 clusters). */
  getClusterSecret(): Promise<string | null>;
  /** The cluster secret, created (random, by compare-and-swap) if missing. */
  ensureClusterSecret(): Promise<string>;

  // ---- fencing tokens
  /** The newest token handed out for a volume (0 when none). */
  getFence(volumeId: number): Promise<number>;
  /** Every volume's newest token, with the etcd revision the read was made at. */
  listFences(): Promise<{ fences: Map<number, number>; revision: number }>;
  /**
   * Calls back with each token handed out after `revision`, in order, with
   * the revision it was written at. After lost history (compaction) or a
   * lost stream it calls `onResync` with a fresh listFences() instead and
   * goes on from that listing's revision. Deleted fences (deleted volumes)
   * are not reported. Returns a stop function.
   */
  watchFences(
    revision: number,
    onFence: (volumeId: number, token: number, revision: number) => void,
    onResync: (all: { fences: Map<number, number>; revision: number }) => void,
  ): Promise<() => Promise<void>>;

  // ---- stale records (docs/replication.md, "Stale records")
  getStale(volumeId: number): Promise<StaleRecord[]>;
  /** Every stale record of the cluster (maintenance, status). */
  listStale(): Promise<StaleRecord[]>;
  /**
   * Adds blocks (ranges of [start, end) indexes, or the whole volume) to a
   * peer's stale record, merging by compare-and-swap. Needs no lock (a
   * peer recording its own suspect blocks); a coordinator names its token
   * and the add is made only while it is the volume's newest
   * (TORUS_ERR_VOLUME_FENCED otherwise). Resolves once durable in etcd. More than
   * STALE_RANGES_MAX (1024) ranges collapse to the whole volume. Refused
   * with TORUS_ERR_VOLUME_NOT_FOUND when the volume has no fencing token
   * (deleted, or never opened): records of a deleted id never come back.
   * `unsure` blocks are untrusted like the others, but say the peer missed
   * no acknowledged change there (docs/replication.md, "Unsure blocks").
   */
  addStale(volumeId: number, peer: string, add: StaleAdd): Promise<void>;
  /**
   * Removes blocks from a peer's stale record (the record goes when empty),
   * only while `token` is the volume's newest fencing token (checked in the
   * same etcd transaction); otherwise TORUS_ERR_VOLUME_FENCED and nothing
   * changes, also when there is nothing to remove. `ranges: 'all'` clears
   * it; ranges removed from a record that is `all` leave it `all` (the
   * metadata layer does not know the volume's size in blocks).
   */
  removeStale(volumeId: number, peer: string, ranges: readonly (readonly [number, number])[] | 'all', token: number): Promise<void>;
  /**
   * Narrows a peer's stale record to `keep`: every block outside it has
   * caught up (a catch-up plan compared the peer's copies with the trusted
   * owners'). The record's missed blocks become exactly `keep`, whatever
   * it named before (the whole volume, a list, or nothing: a record is
   * made), its unsure blocks stay; the record goes when nothing is left; a
   * `keep` of more than STALE_RANGES_MAX ranges changes nothing. Fenced
   * like removeStale: only while `token` is the volume's newest fencing
   * token. (model/ranges.ts, narrowStaleSet, says why it replaces.)
   */
  narrowStale(volumeId: number, peer: string, keep: readonly (readonly [number, number])[], token: number): Promise<void>;

  // ---- ring transitions
  /** Every live process's ring acknowledgement. */
  listRingAcks(): Promise<RingAck[]>;
  /** Progress records of one transition (its moving version). */
  listVolumeMoves(ringVersion: number): Promise<VolumeMoveRecord[]>;
  /** Writes a volume's move progress, only while `token` is its newest fencing token (else TORUS_ERR_VOLUME_FENCED). */
  putVolumeMove(record: VolumeMoveRecord, token: number): Promise<void>;
  /** Deletes move records of transitions older than `ringVersion`. */
  pruneVolumeMoves(belowRingVersion: number): Promise<void>;

  // ---- health and scrub
  listVolumeHealth(): Promise<VolumeHealthRecord[]>;
  /** TORUS_ERR_VOLUME_NOT_FOUND when the volume has no fencing token (as addStale). */
  putVolumeHealth(record: VolumeHealthRecord): Promise<void>;

  /**
   * Validates name and size; TORUS_ERR_VOLUME_EXISTS, TORUS_ERR_CLUSTER_NOT_INITIALISED.
   * `admit` (capacity reservations) is shown every volume of the cluster,
   * read within the compare-and-swap that creates this one: it throws to
   * refuse, and a volume created by anyone between its listing and the
   * create makes the create list again and ask again. So concurrent creates
   * never admit more than `admit` would one at a time. An existing volume
   * of this name is TORUS_ERR_VOLUME_EXISTS before `admit` is asked.
   */
  createVolume(name: string, size: number, opts?: { readonly admit?: (volumes: readonly VolumeRecord[]) => void }): Promise<VolumeRecord>;
  /** TORUS_ERR_VOLUME_NOT_FOUND. */
  getVolume(name: string): Promise<VolumeRecord>;
  listVolumes(): Promise<VolumeRecord[]>;
  /**
   * Refused with TORUS_ERR_VOLUME_IN_USE while a write lock or a reader lock
   * is held (a maintenance lock does not stop it). Deletes the volume's fence,
   * maintenance lock, stale, move and health records with it. With `id`,
   * only the volume of that id: a volume that took the name since is
   * TORUS_ERR_VOLUME_NOT_FOUND and stays (ids are never reused).
   */
  deleteVolume(name: string, opts?: { readonly id?: number }): Promise<VolumeRecord>;
  getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null>;
  /**
   * The newest token of the volume recorded as ended without a clean
   * release (`volume-expired/<id>`, 0 when none): VolumeLock.expiredToken
   * for a process that reads the volume without a lock of its own.
   */
  getVolumeExpired(volumeId: number): Promise<number>;
  /** The reader locks held on a volume (kind reader), oldest first. */
  listVolumeReaders(volumeId: number): Promise<VolumeLockRecord[]>;
  /**
   * For garbage collection: the ids of live volumes and the highest id ever
   * handed out, read so that an id at or below `lastId` that is not live
   * belongs to a deleted volume (never to one being created).
   */
  volumeIdsForGc(): Promise<{ live: number[]; lastId: number }>;
  /**
   * Calls back (no argument) after any volume is deleted, and once after a
   * lost stream (a deletion may have been missed). Returns a stop function.
   */
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
   * token for this volume. A maintainer holding the volume does not block
   * this: the new, larger token fences it off.
   */
  lockVolume(name: string, holder: string): Promise<VolumeLock>;
  /**
   * Takes a reader lock on a volume: any number of sessions may hold one at
   * once. Refused with TORUS_ERR_VOLUME_IN_USE, naming the writer, while a
   * writer holds the volume; while any reader holds it, lockVolume and
   * deleteVolume are refused. Maintainers neither block readers nor are
   * blocked by them (they copy blocks, they do not change what a reader
   * reads). Readers never write, so no fencing token is drawn. One reader
   * lock per session and volume: taking it again keeps the one lock.
   */
  lockVolumeForReading(name: string, holder: string): Promise<VolumeReaderLock>;
  /**
   * Takes a volume's maintenance lock (docs/replication.md, "Maintenance"):
   * refused with TORUS_ERR_VOLUME_IN_USE while a writer or another maintainer
   * holds it. Draws a token from the same counter as lockVolume.
   *
   * With `expired: 'refuse'`, a volume whose last lock ended without a
   * clean release (it expired with its lease, or was let go unfenced) is
   * refused with TORUS_ERR_VOLUME_LOCK_EXPIRED, details `{ token }` = that
   * lock's token, and nothing changes: its holder may be a writer about to
   * take the volume again after an etcd outage, and a maintainer's token in
   * between would fence it off for good. `expired: <token>` takes such a
   * volume only when `token` is the one that expired (the caller's grace
   * for that lock is over). Default `'take'`: taken whatever ended the last lock.
   */
  lockVolumeForMaintenance(volumeId: number, holder: string, opts?: MaintenanceLockOptions): Promise<VolumeLock>;
  /** Publishes (or refreshes) this process's ring acknowledgement under the lease. */
  ackRing(ack: { readonly peer: string | null; readonly kind: 'peer' | 'client'; readonly ringVersion: number; readonly fenceRevision: number }): Promise<void>;
  /**
   * Takes over a lock this session's lease holds already, with its token
   * (after resumeSession). TORUS_ERR_VOLUME_LOCK_LOST when the lock is gone,
   * on another lease or under another token.
   */
  adoptVolumeLock(name: string, token: number): Promise<VolumeLock>;
  /**
   * Lets go of locks that lock calls of this session took although their
   * answer was lost (src/metadata/unanswered-locks.ts). Every lock call does
   * this first; torusd also does it at each heartbeat. Returns how many
   * locks it let go.
   */
  reclaimUnansweredLocks(): Promise<number>;
  /**
   * After resumeSession, once this run has taken back what it keeps (the
   * kernel attachments' locks): lets go of every lock key the earlier run
   * left on the lease that this run has not written since
   * (src/metadata/earlier-run-locks.ts). A call etcd does not answer is
   * made again by each reclaimUnansweredLocks until one succeeds. Returns
   * how many keys it let go; 0 for a session of its own (openSession).
   */
  releaseLocksOfEarlierRun(): Promise<number>;
  /** Stops keepalives without revoking: locks and records live until the TTL (see resumeSession). */
  suspend(): Promise<void>;
  on(listener: (event: SessionEvent) => void): () => void;
  /** Monotonic ms deadline after which the lease must be assumed expired. */
  leaseDeadline(): number;
  /** Revokes the lease (releasing its locks and records). */
  close(): Promise<void>;
}

export interface MaintenanceLockOptions {
  /** What to do when the volume's last lock ended without a clean release (see lockVolumeForMaintenance). */
  readonly expired: 'take' | 'refuse' | number;
}

export interface VolumeLock {
  readonly volume: VolumeRecord;
  readonly token: number;
  readonly holder: string;
  readonly kind: 'writer' | 'maintainer';
  /** The id of the session (lease) the lock is held under: it ends with that lease, whatever session the process has next. */
  readonly session: string;
  /**
   * Whether the lock before this one (the volume's previous token) was let
   * go cleanly by a holder that had fenced off the ones before it (see
   * markFenced), read with the fence in the transaction that took this
   * lock. False when it expired with its lease instead (its holder may be a
   * writer paused with its clocks, with changes still queued under the old
   * token), when a maintainer is still at work under it, or when it was let
   * go unfenced. True for a volume never locked, and for a lock from
   * renew(): the previous token was this holder's own.
   */
  readonly previousReleased: boolean;
  /**
   * The newest token of the volume whose lock ended without a clean release
   * (0 when none), as of this lock: the previous token when
   * previousReleased is false, else what an earlier lock recorded
   * (`volume-expired/<id>`). A copy written under it or an older token may
   * hold a change that reached only some owners and that no stale record
   * names: its holder was gone before it could write one.
   */
  readonly expiredToken: number;
  /**
   * Tells the lock that every older holder is fenced off: every peer that
   * may hold the volume's blocks learnt this token, or is recorded stale for
   * whatever an older holder may still land on it. Only a lock so marked
   * records a clean release() for the next holder (previousReleased): a lock
   * let go before that (an open that failed, a lock taken only to find the
   * volume was taken meanwhile) leaves an expired predecessor's late
   * changes for the next holder to fence off.
   */
  markFenced(): void;
  /**
   * Tells the lock that a change made under it may have reached only some
   * owners with no record in etcd naming the others: release() then
   * records no clean release, and the next holder counts this token as
   * expired (expiredToken).
   */
  markUnsettled(): void;
  /** True while the lock key still exists under this session's lease (read from etcd). */
  stillHeld(): Promise<boolean>;
  /**
   * Keeps the lock and takes a newer fencing token (the volume's counter + 1),
   * in one transaction: a coordinator that may have used every version of its
   * token (docs/replication.md, "Versions"), or a process that took its
   * predecessor's lock over, starts a fresh version space. The returned lock
   * replaces this one. TORUS_ERR_VOLUME_LOCK_LOST when the lock is no longer
   * held under this lease.
   */
  renew(): Promise<VolumeLock>;
  /**
   * Deletes the lock key if this lease still holds it. When the lock was
   * marked fenced and its token is still the volume's newest, the same
   * transaction records the release (`volume-released/<id>` = the token).
   */
  release(): Promise<void>;
}

export interface VolumeReaderLock {
  readonly volume: VolumeRecord;
  readonly holder: string;
  readonly kind: 'reader';
  /** True while the reader key still exists under this session's lease (read from etcd). */
  stillHeld(): Promise<boolean>;
  release(): Promise<void>;
}

export const VOLUME_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * Failures after which the same metadata call may succeed when tried again:
 * etcd did not answer (down, restarting, electing a leader, slow) or a
 * compare-and-swap lost its races. Everything else is an answer.
 */
export function isTransientMetadataError(err: unknown): boolean {
  return isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE') || isTorusError(err, 'TORUS_ERR_TIMEOUT') || isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT');
}
