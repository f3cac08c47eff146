import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { VolumeRecord } from '../model/records.js';
import { assert } from '../util/assert.js';
import { releaseBuffer } from '../util/buffer-pool.js';
import { splitRange, type BlockPiece } from './block-map.js';

/** NBD base:allocation flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/**
 * Block-level I/O on one volume: a replication coordinator (it may write)
 * or a reader (read-only). Offsets are within one block.
 */
export interface BlockIo {
  read(index: number, offset: number, length: number): Promise<Buffer>;
  /** Resolves with the version the change gave the block (a coordinator), or nothing. */
  write(index: number, offset: number, data: Buffer, fua: boolean): Promise<number | void>;
  zero(index: number, offset: number, length: number, opts: { punch: boolean; fua: boolean }): Promise<number | void>;
  /**
   * Every piece of a request succeeded and the client is told so: the
   * versions its changes made (one per block; none for a piece that
   * changed nothing). A request that fails in one piece is not
   * acknowledged in any (docs/replication.md, "Lost changes").
   */
  acknowledged?(changes: readonly (readonly [index: number, version: number])[]): void;
  /** Resolves once every change acknowledged before the call is durable to the level the volume promises. */
  flush(): Promise<void>;
  /** Whether a block holds data (NBD block status). */
  allocated(index: number): Promise<boolean>;
}

/**
 * Byte-range I/O on one volume, as the NBD server asks it: splits ranges at
 * block boundaries and hands each piece to the block I/O.
 */
export class Volume {
  readonly record: VolumeRecord;
  private readonly io: BlockIo;
  private readonly log: Logger;

  constructor(record: VolumeRecord, io: BlockIo, logger: Logger) {
    this.record = record;
    this.io = io;
    this.log = logger.child({ module: 'volume', volume: record.name });
  }

  get size(): number {
    return this.record.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const index = this.oneBlock(offset, length);
    if (index >= 0) return this.io.read(index, offset - index * this.record.blockSize, length);
    const pieces = this.pieces(offset, length);
    const parts = await settleAll(pieces.map((p) => this.io.read(p.index, p.offset, p.length)), releaseBuffer);
    const out = Buffer.concat(parts, length);
    // The pieces are ours (pooled ones go back); the caller gets the whole.
    for (const p of parts) releaseBuffer(p);
    return out;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkRange(offset, data.length);
    // One block (nearly every request): no pieces to split, nothing else can still act.
    const index = this.oneBlock(offset, data.length);
    if (index >= 0) return this.acknowledgedOne(index, await this.io.write(index, offset - index * this.record.blockSize, data, fua));
    const pieces = this.pieces(offset, data.length);
    const versions = await settleAll(pieces.map((p) => this.io.write(p.index, p.offset, data.subarray(p.volumeOffset - offset, p.volumeOffset - offset + p.length), fua)));
    this.acknowledged(pieces, versions);
  }

  /** TRIM and WRITE_ZEROES: whole blocks become tombstones unless noHole. */
  async zero(offset: number, length: number, opts: { punch: boolean; fua: boolean }): Promise<void> {
    this.checkRange(offset, length);
    const index = this.oneBlock(offset, length);
    if (index >= 0) return this.acknowledgedOne(index, await this.io.zero(index, offset - index * this.record.blockSize, length, opts));
    const pieces = this.pieces(offset, length);
    const versions = await settleAll(pieces.map((p) => this.io.zero(p.index, p.offset, p.length, opts)));
    this.acknowledged(pieces, versions);
  }

  private acknowledgedOne(index: number, version: number | void): void {
    if (this.io.acknowledged !== undefined && typeof version === 'number') this.io.acknowledged([[index, version]]);
  }

  private acknowledged(pieces: readonly { index: number }[], versions: readonly (number | void)[]): void {
    if (this.io.acknowledged === undefined) return;
    const changes: [number, number][] = [];
    pieces.forEach((p, i) => {
      const v = versions[i];
      if (typeof v === 'number') changes.push([p.index, v]);
    });
    if (changes.length > 0) this.io.acknowledged(changes);
  }

  flush(): Promise<void> {
    return this.io.flush();
  }

  /** base:allocation extents for [offset, offset + length), merged where flags agree. */
  async blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }[]> {
    this.checkRange(offset, length);
    const pieces = this.pieces(offset, length);
    const flags = await Promise.all(pieces.map(async (p) => ((await this.io.allocated(p.index)) ? 0 : STATE_HOLE | STATE_ZERO)));
    const extents: { length: number; flags: number }[] = [];
    pieces.forEach((p, i) => {
      const last = extents[extents.length - 1];
      if (last && last.flags === flags[i]) last.length += p.length;
      else extents.push({ length: p.length, flags: flags[i]! });
    });
    return extents;
  }

  /** The block a non-empty range lies in when it lies in one, else -1 (splitRange's pieces would be one). */
  private oneBlock(offset: number, length: number): number {
    if (length === 0) return -1;
    const bs = this.record.blockSize;
    const index = Math.floor(offset / bs);
    return offset + length <= (index + 1) * bs ? index : -1;
  }

  private pieces(offset: number, length: number): BlockPiece[] {
    return splitRange(offset, length, this.record.blockSize);
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0, 'range is non-negative integers');
    if (offset + length > this.record.size) {
      throw new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', `range ${offset}+${length} lies beyond the end of volume ${this.record.name} (${this.record.size} bytes)`);
    }
    void this.log;
  }
}

/**
 * The results of every piece of one request, once every piece has settled;
 * the first failure (in piece order) if any piece failed, after `discard`
 * has been given what the others returned. A request is answered only when
 * none of its pieces can still act: a failed write whose other pieces were
 * still waiting for their block (its order, a repair) would otherwise take
 * their versions after the client had been told of the failure and had
 * written the same range again, and land over that newer, acknowledged
 * write (simulation seed 2623).
 */
async function settleAll<T>(pending: readonly Promise<T>[], discard?: (value: T) => void): Promise<T[]> {
  // (A request in one block, most of them, does not come here: Volume.oneBlock.)
  const results = await Promise.allSettled(pending);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed === undefined) return results.map((r) => (r as PromiseFulfilledResult<T>).value);
  if (discard) for (const r of results) if (r.status === 'fulfilled') discard(r.value);
  throw failed.reason;
}

/** Read-only block I/O: every change is refused. */
export function readOnlyIo(reads: Pick<BlockIo, 'read' | 'allocated'>, name: string): BlockIo {
  const refuse = (): Promise<never> => Promise.reject(new TorusError('TORUS_ERR_VOLUME_READ_ONLY', `volume "${name}" is open read-only`));
  return { read: (i, o, l) => reads.read(i, o, l), allocated: (i) => reads.allocated(i), write: refuse, zero: refuse, flush: async () => undefined };
}
