import { blockRefKey, type BlockRef } from '../model/block-ref.js';
import { TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from './block-store.js';

export interface MemoryBlockStoreOptions {
  readonly blockSize: number;
  /** Bytes the store may hold; rounded down to whole blocks. */
  readonly capacity: number;
}

/**
 * The in-memory twin of the disk block store, for tests and simulation:
 * same contract (sparse, capacity cap, fencing), no durability.
 */
export class MemoryBlockStore implements BlockStore {
  readonly blockSize: number;
  readonly capacity: number;
  private readonly blocksMax: number;
  /** volumeId -> block key -> data (always blockSize bytes). */
  private readonly volumes = new Map<number, Map<string, Buffer>>();
  /** Newest fencing token seen per volume; outlives deleteVolume so a zombie writer stays fenced. */
  private readonly fences = new Map<number, number>();
  private blockCount = 0;
  private closed = false;

  constructor(opts: MemoryBlockStoreOptions) {
    assert(Number.isInteger(opts.blockSize) && opts.blockSize > 0, 'blockSize is a positive integer');
    assert(Number.isInteger(opts.capacity) && opts.capacity >= 0, 'capacity is a non-negative integer');
    this.blockSize = opts.blockSize;
    this.capacity = opts.capacity;
    this.blocksMax = Math.floor(opts.capacity / opts.blockSize);
  }

  async read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    this.checkRange(offset, length);
    const out = Buffer.alloc(length);
    const block = this.volumes.get(ref.volumeId)?.get(blockRefKey(ref));
    if (block !== undefined) block.copy(out, 0, offset, offset + length);
    return out;
  }

  async write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.checkOpen();
    this.checkRange(offset, data.length);
    this.checkFence(ref.volumeId, opts.fence);
    if (data.length === 0) {
      this.noteFence(ref.volumeId, opts.fence);
      return;
    }
    const block = this.blockFor(ref);
    this.noteFence(ref.volumeId, opts.fence);
    data.copy(block, offset);
  }

  async zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.checkOpen();
    this.checkRange(offset, length);
    this.checkFence(ref.volumeId, opts.fence);
    const volume = this.volumes.get(ref.volumeId);
    const key = blockRefKey(ref);
    const existing = volume?.get(key);
    if (opts.punch && offset === 0 && length === this.blockSize) {
      this.noteFence(ref.volumeId, opts.fence);
      if (existing !== undefined) this.free(ref.volumeId, key);
      return;
    }
    if (existing === undefined) {
      // Unallocated blocks already read as zeroes. Without punch (NBD NO_HOLE)
      // the range must end up allocated, so later writes cannot fail for space.
      if (!opts.punch && length > 0) this.blockFor(ref);
      this.noteFence(ref.volumeId, opts.fence);
      return;
    }
    this.noteFence(ref.volumeId, opts.fence);
    existing.fill(0, offset, offset + length);
  }

  async flush(): Promise<void> {
    this.checkOpen();
  }

  async allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    this.checkOpen();
    return refs.map((ref) => this.volumes.get(ref.volumeId)?.has(blockRefKey(ref)) ?? false);
  }

  async deleteVolume(volumeId: number): Promise<void> {
    this.checkOpen();
    const volume = this.volumes.get(volumeId);
    if (volume === undefined) return;
    this.blockCount -= volume.size;
    this.volumes.delete(volumeId);
  }

  usage(): StoreUsage {
    return { capacity: this.capacity, used: this.blockCount * this.blockSize, blocks: this.blockCount };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** The newest fencing token seen for a volume (tests and simulation). */
  fenceOf(volumeId: number): number | undefined {
    return this.fences.get(volumeId);
  }

  private checkOpen(): void {
    if (this.closed) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'the memory block store is closed');
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && offset >= 0, 'offset is a non-negative integer');
    assert(Number.isInteger(length) && length >= 0, 'length is a non-negative integer');
    assert(offset + length <= this.blockSize, 'offset + length lies within the block');
  }

  private checkFence(volumeId: number, fence: number | undefined): void {
    if (fence === undefined) return;
    assert(Number.isSafeInteger(fence) && fence >= 0, 'fence is a non-negative safe integer');
    const newest = this.fences.get(volumeId);
    if (newest !== undefined && fence < newest) {
      throw new TorusError('TORUS_ERR_VOLUME_FENCED', `volume ${volumeId}: fence token ${fence} is older than ${newest}`, {
        details: { volumeId, fence, newest },
      });
    }
  }

  /** Called only once the operation can no longer fail, so a refused write changes nothing. */
  private noteFence(volumeId: number, fence: number | undefined): void {
    if (fence === undefined) return;
    const newest = this.fences.get(volumeId);
    if (newest === undefined || fence > newest) this.fences.set(volumeId, fence);
  }

  private blockFor(ref: BlockRef): Buffer {
    const key = blockRefKey(ref);
    let volume = this.volumes.get(ref.volumeId);
    const existing = volume?.get(key);
    if (existing !== undefined) return existing;
    if (this.blockCount >= this.blocksMax) {
      throw new TorusError('TORUS_ERR_STORE_NO_SPACE', `the store is full (${this.blocksMax} blocks of ${this.blockSize} bytes)`, {
        details: { capacity: this.capacity, blocks: this.blockCount },
      });
    }
    if (volume === undefined) {
      volume = new Map();
      this.volumes.set(ref.volumeId, volume);
    }
    const block = Buffer.alloc(this.blockSize);
    volume.set(key, block);
    this.blockCount++;
    return block;
  }

  private free(volumeId: number, key: string): void {
    const volume = this.volumes.get(volumeId);
    if (volume === undefined || !volume.delete(key)) return;
    this.blockCount--;
    if (volume.size === 0) this.volumes.delete(volumeId);
  }
}
