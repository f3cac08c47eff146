import type { BlockHead, BlockMeta, ListedBlock } from '../model/block-meta.js';
import type { BlockRef } from '../model/block-ref.js';
import type { Version } from '../model/version.js';
import type { StoreUsage } from './block-store.js';

/**
 * One peer's own blocks: the disk store (file-block-store.ts) or its
 * in-memory twin (memory-block-store.ts). A local store is mechanism only:
 * every operation does what it says, unconditionally. The rules that make
 * replication safe (fencing, ring versions, applying changes in order,
 * installing only newer copies) live in one layer above it,
 * src/replication/replica.ts, which is also what the peer protocol serves.
 *
 * Offsets are within one block: 0 <= offset, offset + length <= blockSize.
 * Operations on one block are not ordered by the store: the replica layer
 * runs at most one change per block at a time.
 */
/** Bytes read, and their CRC-32C when the store knew it (LocalBlockStore.readSummed). */
export interface SummedRead {
  readonly data: Buffer;
  readonly crc32c: number | null;
}

export interface LocalBlockStore {
  readonly blockSize: number;

  /** What this store knows of a block, from memory. */
  meta(ref: BlockRef): BlockMeta;

  /** meta() without the digest, for checks made on every change (its fields agree with meta()'s). */
  head(ref: BlockRef): BlockHead;

  /**
   * Bytes of a block; zero and absent blocks read as zeroes. A page that
   * fails its CRC marks the block suspect and throws
   * TORUS_ERR_STORE_CRC_MISMATCH.
   */
  read(ref: BlockRef, offset: number, length: number): Promise<Buffer>;

  /**
   * read() with the CRC-32C of the bytes when the store has it without a
   * second pass over them (whole pages, each just checked against the
   * block's CRC table); null otherwise. A peer serving a READ sends it as
   * the frame's checksum instead of summing the bytes again.
   */
  readSummed?(ref: BlockRef, offset: number, length: number): Promise<SummedRead>;

  /**
   * Writes bytes into a block and sets its version. An absent or zero block
   * becomes data (its other pages zero). Acknowledged when later reads see
   * it; durable after flush(), or before it resolves with fua.
   * TORUS_ERR_STORE_NO_SPACE (nothing written) when a new block does not fit.
   * `pageCrcs` (ReplicaWriteOptions) may stand in for summing the data's
   * pages again; a store may ignore them.
   */
  write(ref: BlockRef, offset: number, data: Buffer, version: Version, opts: { readonly fua: boolean; readonly pageCrcs?: Uint32Array }): Promise<void>;

  /**
   * A hint that these blocks, absent here now, are about to be written (a
   * sequential writer filling a volume): a store with a write-ahead record
   * per block may make the records durable now, off the writes' path. Only
   * blocks inside their volume: a store may keep such a block suspect after
   * a crash until it is compared. Changes nothing a reader sees.
   */
  premark?(refs: readonly BlockRef[]): void;

  /**
   * Zeroes a range and sets the version. With punch, a whole-block range
   * leaves a tombstone (state zero) and frees the block's data; without
   * punch (NBD NO_HOLE) the range stays allocated.
   */
  zero(ref: BlockRef, offset: number, length: number, version: Version, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void>;

  /**
   * Replaces the whole block with a copy: `data` of blockSize bytes, or null
   * for a tombstone. Clears suspect.
   */
  install(ref: BlockRef, data: Buffer | null, version: Version, opts: { readonly fua: boolean }): Promise<void>;

  /** Clears suspect and sets the version: a coordinator found the digest equal to a current copy's. */
  confirm(ref: BlockRef, version: Version): Promise<void>;

  /**
   * Marks a block suspect (a gap, a failed check). Kept in memory; blocks
   * suspect after an unclean stop come back from the dirty log on open.
   */
  markSuspect(ref: BlockRef): void;

  /** Removes the block: it becomes absent (frees its space, its tombstone included). */
  drop(ref: BlockRef): Promise<void>;

  /**
   * The blocks this store holds (data, tombstones and suspect blocks),
   * ordered by (volumeId, generation, index), starting after `after`.
   */
  list(opts: { readonly volumeId?: number; readonly after?: BlockRef | null; readonly limit: number }): ListedBlock[];

  /** Blocks suspect now (after an unclean stop, the ones the dirty log named). */
  suspects(): BlockRef[];

  /**
   * Reads every page of a block and checks it against its CRC (a scrub):
   * resolves with the block's metadata, or marks it suspect and throws
   * TORUS_ERR_STORE_CRC_MISMATCH.
   */
  verify(ref: BlockRef): Promise<BlockMeta>;

  /** Resolves once every change acknowledged before the call is durable. */
  flush(): Promise<void>;
  /** Frees every block of a volume (all generations, tombstones included). */
  deleteVolume(volumeId: number): Promise<void>;
  /** Volumes that have blocks here. */
  volumeIds(): number[];
  usage(): StoreUsage;
  close(): Promise<void>;
}
