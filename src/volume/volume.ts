import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { blockRef, type BlockRef } from '../model/block-ref.js';
import type { VolumeRecord } from '../model/records.js';
import type { BlockStore } from '../store/block-store.js';
import { assert } from '../util/assert.js';
import { splitRange, type BlockPiece } from './block-map.js';

/** NBD base:allocation flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

export interface Placement {
  /** The stores that hold a block, in preference order (the local one first when it is a replica). */
  replicas(ref: BlockRef): BlockStore[];
  /** Every store that may hold blocks of the volume: what a FLUSH must reach. */
  all(): BlockStore[];
}

export interface VolumeGuard {
  /**
   * The fencing token to stamp on writes; throws (TORUS_ERR_VOLUME_LOCK_LOST,
   * TORUS_ERR_VOLUME_READ_ONLY) when this opener may not write now.
   */
  writeToken(): number;
}

/**
 * Byte-range I/O on one volume: splits ranges at block boundaries, sends each
 * piece to the block's replicas, and waits for all of them (write level
 * `all`: a write is acknowledged only when every replica has it).
 */
export class Volume {
  readonly record: VolumeRecord;
  private readonly placement: Placement;
  private readonly guard: VolumeGuard;
  private readonly log: Logger;

  constructor(record: VolumeRecord, placement: Placement, guard: VolumeGuard, logger: Logger) {
    this.record = record;
    this.placement = placement;
    this.guard = guard;
    this.log = logger.child({ module: 'volume', volume: record.name });
  }

  get size(): number {
    return this.record.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const pieces = this.pieces(offset, length);
    if (pieces.length === 1) return this.readPiece(pieces[0]!);
    const parts = await Promise.all(pieces.map((p) => this.readPiece(p)));
    return Buffer.concat(parts, length);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkRange(offset, data.length);
    const fence = this.guard.writeToken();
    await Promise.all(
      this.pieces(offset, data.length).map((p) => {
        const chunk = data.subarray(p.volumeOffset - offset, p.volumeOffset - offset + p.length);
        return this.onReplicas(p, (store, ref) => store.write(ref, p.offset, chunk, { fua, fence }));
      }),
    );
  }

  /** TRIM and WRITE_ZEROES: whole blocks are freed unless noHole. */
  async zero(offset: number, length: number, opts: { punch: boolean; fua: boolean }): Promise<void> {
    this.checkRange(offset, length);
    const fence = this.guard.writeToken();
    await Promise.all(
      this.pieces(offset, length).map((p) => this.onReplicas(p, (store, ref) => store.zero(ref, p.offset, p.length, { punch: opts.punch, fua: opts.fua, fence }))),
    );
  }

  async flush(): Promise<void> {
    await Promise.all(this.placement.all().map((s) => s.flush()));
  }

  /** base:allocation extents for [offset, offset + length), merged where flags agree. */
  async blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }[]> {
    this.checkRange(offset, length);
    const pieces = this.pieces(offset, length);
    const flags = await Promise.all(
      pieces.map(async (p) => {
        const ref = this.refOf(p.index);
        const [store] = this.placement.replicas(ref);
        if (!store) throw ringEmpty();
        const [allocated] = await store.allocated([ref]);
        return allocated ? 0 : STATE_HOLE | STATE_ZERO;
      }),
    );
    const extents: { length: number; flags: number }[] = [];
    pieces.forEach((p, i) => {
      const last = extents[extents.length - 1];
      if (last && last.flags === flags[i]) last.length += p.length;
      else extents.push({ length: p.length, flags: flags[i]! });
    });
    return extents;
  }

  private async readPiece(p: BlockPiece): Promise<Buffer> {
    const ref = this.refOf(p.index);
    const replicas = this.placement.replicas(ref);
    if (replicas.length === 0) throw ringEmpty();
    let lastErr: unknown;
    for (const store of replicas) {
      try {
        return await store.read(ref, p.offset, p.length);
      } catch (err) {
        // A bad or unreachable copy: try the next replica.
        lastErr = err;
        this.log.warn({ err, block: p.index }, 'replica read failed; trying the next replica');
      }
    }
    throw lastErr;
  }

  private async onReplicas(p: BlockPiece, op: (store: BlockStore, ref: BlockRef) => Promise<void>): Promise<void> {
    const ref = this.refOf(p.index);
    const replicas = this.placement.replicas(ref);
    if (replicas.length === 0) throw ringEmpty();
    if (replicas.length === 1) return op(replicas[0]!, ref);
    await Promise.all(replicas.map((s) => op(s, ref)));
  }

  private refOf(index: number): BlockRef {
    return blockRef(this.record.id, this.record.generation, index);
  }

  private pieces(offset: number, length: number): BlockPiece[] {
    return splitRange(offset, length, this.record.blockSize);
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0, 'range is non-negative integers');
    if (offset + length > this.record.size) {
      throw new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', `range ${offset}+${length} lies beyond the end of volume ${this.record.name} (${this.record.size} bytes)`);
    }
  }
}

function ringEmpty(): TorusError {
  return new TorusError('TORUS_ERR_RING_EMPTY', 'no peer is in the ring: start torusd with --auto-join or run torusctl peer add');
}
