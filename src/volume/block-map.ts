import { assert } from '../util/assert.js';

/**
 * Byte ranges of a volume split at block boundaries. Pure maths: the volume
 * layer turns each piece into an operation on one block.
 */
export interface BlockPiece {
  readonly index: number; // block number
  readonly offset: number; // within the block
  readonly length: number;
  readonly volumeOffset: number; // where the piece starts in the volume
}

export function splitRange(offset: number, length: number, blockSize: number): BlockPiece[] {
  assert(Number.isSafeInteger(offset) && offset >= 0, 'offset is a non-negative integer');
  assert(Number.isSafeInteger(length) && length >= 0, 'length is a non-negative integer');
  assert(blockSize > 0 && (blockSize & (blockSize - 1)) === 0, 'block size is a power of two');
  const pieces: BlockPiece[] = [];
  let at = offset;
  const end = offset + length;
  while (at < end) {
    const index = Math.floor(at / blockSize);
    const within = at - index * blockSize;
    const n = Math.min(blockSize - within, end - at);
    pieces.push({ index, offset: within, length: n, volumeOffset: at });
    at += n;
  }
  return pieces;
}

/** How many blocks a volume of `size` bytes spans. */
export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}
