import { assert } from '../util/assert.js';

/**
 * Names one fixed-size block of one generation of a volume. Blocks are the
 * unit of placement (the ring maps a ref to peers) and of replication.
 * A generation changes when a snapshot freezes the current one, so refs of
 * a frozen generation are immutable.
 */
export interface BlockRef {
  readonly volumeId: number; // u32, allocated by etcd, never reused
  readonly generation: number; // u32, starts at 1
  readonly index: number; // block number within the volume, < 2^48
}

export const BLOCK_REF_BYTES = 16;

export function blockRef(volumeId: number, generation: number, index: number): BlockRef {
  assert(Number.isInteger(volumeId) && volumeId > 0 && volumeId <= 0xffffffff, 'volumeId is a positive u32');
  assert(Number.isInteger(generation) && generation > 0 && generation <= 0xffffffff, 'generation is a positive u32');
  assert(Number.isInteger(index) && index >= 0 && index < 2 ** 48, 'index is a u48');
  return { volumeId, generation, index };
}

/** The ref blockRefKey was last asked for, and its key: a change asks for the same ref's key several times in a row (replica, then store). */
let lastRef: BlockRef | null = null;
let lastKey = '';

/** A string key for maps and file names: `<volumeId>-<generation>-<index>` in hex. */
export function blockRefKey(ref: BlockRef): string {
  // Refs are never changed once made, so the same object has the same key.
  if (ref === lastRef) return lastKey;
  lastKey = `${ref.volumeId.toString(16)}-${ref.generation.toString(16)}-${ref.index.toString(16)}`;
  lastRef = ref;
  return lastKey;
}

export function encodeBlockRef(ref: BlockRef, buf: Buffer, at: number): void {
  buf.writeUInt32BE(ref.volumeId, at);
  buf.writeUInt32BE(ref.generation, at + 4);
  buf.writeUIntBE(ref.index, at + 10, 6);
  buf.writeUInt16BE(0, at + 8);
}

export function decodeBlockRef(buf: Buffer, at: number): BlockRef {
  return blockRef(buf.readUInt32BE(at), buf.readUInt32BE(at + 4), buf.readUIntBE(at + 10, 6));
}

export function sameBlockRef(a: BlockRef, b: BlockRef): boolean {
  return a.volumeId === b.volumeId && a.generation === b.generation && a.index === b.index;
}
