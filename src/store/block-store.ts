import type { BlockRef } from '../model/block-ref.js';

export interface WriteOptions {
  /** Force unit access: resolve only once this write is durable. */
  readonly fua: boolean;
  /**
   * Fencing token of the volume lock the writer holds. A store refuses
   * (TORUS_ERR_VOLUME_FENCED) a token older than the newest it has seen for
   * the volume. Omitted only by tools that bypass locking (tests, recovery).
   */
  readonly fence?: number;
}

export interface ZeroOptions extends WriteOptions {
  /**
   * May the store free the space (a hole)? False for NBD_CMD_FLAG_NO_HOLE:
   * the range must stay allocated and read as zeroes.
   */
  readonly punch: boolean;
}

export interface StoreUsage {
  /** Bytes the store may use (the --size cap). */
  readonly capacity: number;
  /** Bytes in use, counted conservatively (whole blocks plus metadata). */
  readonly used: number;
  readonly blocks: number;
}

/**
 * Where blocks live: the local disk of a peer, or a remote peer reached over
 * the peer protocol. All offsets are within one block: 0 <= offset,
 * offset + length <= blockSize. Blocks never written read as zeroes and take
 * no space (thin provisioning).
 */
export interface BlockStore {
  readonly blockSize: number;
  read(ref: BlockRef, offset: number, length: number): Promise<Buffer>;
  /** Acknowledged when readable by later reads; durable after flush() (or at once with fua). */
  write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void>;
  /** Zeroes a range; a whole-block range with punch frees the block. */
  zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void>;
  /** Resolves once every write acknowledged before the call is durable. */
  flush(): Promise<void>;
  /** Which of these blocks hold data (for NBD block status). */
  allocated(refs: readonly BlockRef[]): Promise<boolean[]>;
  /** Frees every block of a volume (all generations). */
  deleteVolume(volumeId: number): Promise<void>;
  usage(): StoreUsage;
  close(): Promise<void>;
}
