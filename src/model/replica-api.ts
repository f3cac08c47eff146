import type { BlockMeta, ListedBlock } from './block-meta.js';
import type { BlockRef } from './block-ref.js';
import type { Version } from './version.js';
import type { PeerRecord } from './records.js';

/**
 * What one peer asks of another: the peer protocol's meaning, independent
 * of its wire format. Implemented by the replica rules over a local store
 * (src/replication/replica.ts), by the peer client over TCP
 * (src/peer/client.ts) and by the simulated network (test/sim). One
 * contract test suite (test/helpers/replica-contract.ts) runs against all
 * three. docs/replication.md explains the rules.
 *
 * Every request carries the sender's context. A peer answers
 * TORUS_ERR_RING_OUTDATED (details.ringVersion = its own) to a sender whose
 * ring is older than its own, before doing anything, and
 * TORUS_ERR_PEER_NOT_LIVE while it has no etcd session.
 */
/**
 * Bytes per page of a stored block's CRC table: every page of every copy
 * has its own CRC-32C (src/store/block-file.ts).
 */
export const CRC_PAGE_BYTES = 4096;

/** How a write is made. */
export interface ReplicaWriteOptions {
  /** Durable before the answer (NBD FUA). */
  readonly fua: boolean;
  /** The data's CRC-32C, when the caller has it already (a peer client sends it instead of summing again). */
  readonly crc32c?: number;
  /**
   * The CRC-32C of each CRC_PAGE_BYTES page of the data, when the data is
   * whole pages and the caller summed it already (where it came off the
   * wire, or where it is sent to more than one owner): a store takes them
   * for the block's CRC table instead of a second pass over the bytes.
   * Never given for other bytes than the data's.
   */
  readonly pageCrcs?: Uint32Array;
}

export interface RequestContext {
  /** The ring version the sender placed this request with. */
  readonly ringVersion: number;
  /**
   * When the caller stops waiting: a monotonic time of the caller's clock
   * (the one the transport was built with). An implementation that
   * enforces it (ReplicaApi.enforcesDeadline) fails the call with
   * TORUS_ERR_TIMEOUT then, and never sends a request still queued; the
   * others ignore it. Not part of the wire format.
   */
  readonly deadline?: number;
}

/** A change made by a coordinator: who (token) and which version it creates on top of which. */
export interface ChangeStamp {
  /** The coordinator's fencing token for the volume: refused (TORUS_ERR_VOLUME_FENCED) when older than the newest the peer knows. */
  readonly token: number;
  /** The version the change creates. */
  readonly version: Version;
  /**
   * The version the change applies on top of. A partial change applies only
   * to a copy exactly at prev; a whole-block change applies to any older copy.
   */
  readonly prev: Version;
}

export interface ReadReply {
  readonly meta: BlockMeta;
  /** The requested bytes; zeroes for zero and absent blocks. */
  readonly data: Buffer;
  /** Local only (never on the wire): the CRC-32C of data when the store had it without another pass (LocalBlockStore.readSummed). */
  readonly dataCrc?: number;
}

/** A whole block as a rebalance, catch-up or repair sends it. */
export interface BlockCopy {
  readonly state: 'data' | 'zero';
  readonly version: Version;
  /** blockSize bytes for data; null for a tombstone. */
  readonly data: Buffer | null;
}

/**
 * installed: the copy replaced the target's (older or suspect) copy.
 * same: the target already holds this version (nothing written).
 * newer: the target holds a newer version; nothing written.
 */
export type InstallOutcome = 'installed' | 'same' | 'newer';

export interface PeerInfo {
  readonly uuid: string;
  /** New at every start of the peer: a change means unflushed writes may be gone. */
  readonly incarnation: string;
  readonly ringVersion: number;
}

export interface StoreUsageInfo {
  readonly capacity: number;
  readonly used: number;
  readonly blocks: number;
}

export interface ReplicaApi {
  /**
   * True when calls fail with TORUS_ERR_TIMEOUT at RequestContext.deadline
   * on their own (the peer client): a caller then need not bound them with
   * a timer of its own.
   */
  readonly enforcesDeadline?: boolean;

  /**
   * Bytes and metadata of a block. TORUS_ERR_REPLICA_STALE for a suspect
   * block; TORUS_ERR_STORE_CRC_MISMATCH (the block is then suspect).
   */
  read(ctx: RequestContext, ref: BlockRef, offset: number, length: number): Promise<ReadReply>;

  /**
   * Applies a write (docs/replication.md, "Versions"). Resolves when applied,
   * or when the copy is already at a version >= stamp.version (a duplicate).
   * TORUS_ERR_REPLICA_STALE when it does not build on the copy (a gap: the
   * block is then suspect); TORUS_ERR_VOLUME_FENCED; TORUS_ERR_STORE_NO_SPACE.
   */
  write(ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, stamp: ChangeStamp, opts: ReplicaWriteOptions): Promise<void>;

  /**
   * A hint: whole-block writes to these blocks (inside their volume) are
   * likely to follow (LocalBlockStore.premark). The local replica passes it
   * to its store; a peer client sends it (EXPECT) without waiting for, or
   * minding, the answer. At most META_REFS_MAX refs.
   */
  expectWrites?(ctx: RequestContext, refs: readonly BlockRef[]): void;

  /** As write, for zeroes; a whole block with punch leaves a tombstone. */
  zero(ctx: RequestContext, ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void>;

  /** Installs a whole-block copy if it is newer than the target's (or the target's is suspect). */
  install(ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { readonly token: number; readonly fua: boolean }): Promise<InstallOutcome>;

  /**
   * Confirms a suspect copy in place: if its digest equals `digest`, clears
   * suspect and sets `version` (true); otherwise changes nothing (false).
   */
  confirm(ctx: RequestContext, ref: BlockRef, version: Version, digest: number, opts: { readonly token: number }): Promise<boolean>;

  /** Metadata of many blocks, in order (at most META_REFS_MAX). */
  meta(ctx: RequestContext, refs: readonly BlockRef[]): Promise<BlockMeta[]>;

  /** The blocks of a volume this peer holds, in order, after `after` (at most `limit`). */
  list(ctx: RequestContext, volumeId: number, after: BlockRef | null, limit: number): Promise<{ blocks: ListedBlock[]; more: boolean }>;

  /** Reads every page of a block against its CRCs (scrub). */
  verify(ctx: RequestContext, ref: BlockRef): Promise<BlockMeta>;

  /**
   * Drops this peer's copy of a block if its version is at most `version`
   * (an old owner's copy after a transition). True when dropped or absent.
   */
  drop(ctx: RequestContext, ref: BlockRef, version: Version, opts: { readonly token: number }): Promise<boolean>;

  /** Durably learns a coordinator's fencing token (a no-op for an older or equal one). */
  fence(ctx: RequestContext, volumeId: number, token: number): Promise<void>;

  /** Resolves once every change this peer acknowledged before the call is durable. */
  flush(ctx: RequestContext): Promise<void>;

  /** Frees every block of a deleted volume. */
  deleteVolume(ctx: RequestContext, volumeId: number): Promise<void>;

  usage(ctx: RequestContext): Promise<StoreUsageInfo>;

  /** Who answers: uuid, incarnation, ring version. */
  hello(ctx: RequestContext): Promise<PeerInfo>;
}

/** Refs per meta() request; callers split longer lists. */
export const META_REFS_MAX = 4096;
/** Blocks per list() answer. */
export const LIST_BLOCKS_MAX = 4096;

/**
 * How a node reaches the other peers: TCP peer clients in torusd
 * (src/peer/), the simulated network in test/sim. Timeouts are the
 * caller's (the replication layer bounds every call with its own clock).
 */
export interface PeerTransport {
  /** The replica API of a peer, or null while its address is unknown (it is not reporting). */
  peer(uuid: string): ReplicaApi | null;
  /**
   * Calls back when a peer is found to have restarted (a new incarnation
   * answers): changes it took but had not made durable may be gone.
   */
  onPeerRestart?(listener: (uuid: string) => void): void;
  /**
   * How many times this transport saw the peer answer as a new incarnation
   * (a restart), counted before any answer of the new one is handed over:
   * a coordinator compares it across a change and its flush.
   */
  restarts?(uuid: string): number;
  /**
   * The peer records just read from etcd: a transport that dials addresses
   * takes each peer's current one (a restarted peer may listen elsewhere).
   */
  setPeers?(peers: readonly PeerRecord[]): void;
}
