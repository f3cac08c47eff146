import { crc32c } from '../util/crc32c.js';
import { decodeBlockRef, encodeBlockRef, sameBlockRef, type BlockRef } from '../model/block-ref.js';
import { TorusError } from '../errors/torus-error.js';

/**
 * Layout of one block file (pure maths and codec). The header holds a CRC32C
 * per 4 KiB page of the block, so a read of a few pages is checked without
 * reading the whole block. Data follows the header, page aligned, so that
 * unwritten pages are holes in a sparse file.
 *
 *   0  'TORUSBK1'   8 u32 version (1)   12 u32 block size   16 ref (16 bytes)
 *   32 u32 page size   36 u32 page count   40..63 reserved
 *   64 u32[pageCount] page CRC32Cs (big endian)
 */
export const PAGE_BYTES = 4096;
const MAGIC = Buffer.from('TORUSBK1', 'ascii');
const TABLE_AT = 64;

export function pageCount(blockSize: number): number {
  return blockSize / PAGE_BYTES;
}

export function headerBytes(blockSize: number): number {
  const raw = TABLE_AT + pageCount(blockSize) * 4;
  return Math.ceil(raw / PAGE_BYTES) * PAGE_BYTES;
}

/** Bytes a block file takes at most: what capacity accounting charges. */
export function blockFileBytes(blockSize: number): number {
  return headerBytes(blockSize) + blockSize;
}

let zeroPageCrcCache: number | null = null;
export function zeroPageCrc(): number {
  if (zeroPageCrcCache === null) zeroPageCrcCache = crc32c(Buffer.alloc(PAGE_BYTES));
  return zeroPageCrcCache;
}

export function newCrcTable(blockSize: number): Uint32Array {
  return new Uint32Array(pageCount(blockSize)).fill(zeroPageCrc());
}

export function encodeHeader(ref: BlockRef, blockSize: number, table: Uint32Array): Buffer {
  const h = Buffer.alloc(headerBytes(blockSize));
  MAGIC.copy(h, 0);
  h.writeUInt32BE(1, 8);
  h.writeUInt32BE(blockSize, 12);
  encodeBlockRef(ref, h, 16);
  h.writeUInt32BE(PAGE_BYTES, 32);
  h.writeUInt32BE(table.length, 36);
  for (let i = 0; i < table.length; i++) h.writeUInt32BE(table[i]!, TABLE_AT + i * 4);
  return h;
}

export function decodeHeader(h: Buffer, ref: BlockRef, blockSize: number, file: string): Uint32Array {
  const bad = (why: string) => new TorusError('TORUS_ERR_STORE_CORRUPT', `block file ${file}: ${why}`, { details: { file } });
  if (h.length < headerBytes(blockSize) || !h.subarray(0, 8).equals(MAGIC)) throw bad('bad magic');
  if (h.readUInt32BE(8) !== 1) throw bad(`unknown version ${h.readUInt32BE(8)}`);
  if (h.readUInt32BE(12) !== blockSize) throw bad(`block size ${h.readUInt32BE(12)} but the store uses ${blockSize}`);
  if (!sameBlockRef(decodeBlockRef(h, 16), ref)) throw bad('header names another block');
  if (h.readUInt32BE(32) !== PAGE_BYTES || h.readUInt32BE(36) !== pageCount(blockSize)) throw bad('page geometry differs');
  const table = new Uint32Array(pageCount(blockSize));
  for (let i = 0; i < table.length; i++) table[i] = h.readUInt32BE(TABLE_AT + i * 4);
  return table;
}

/** Only the CRC table bytes, for checkpoints that rewrite it in place. */
export function encodeTable(table: Uint32Array): Buffer {
  const b = Buffer.alloc(table.length * 4);
  for (let i = 0; i < table.length; i++) b.writeUInt32BE(table[i]!, i * 4);
  return b;
}

export const TABLE_OFFSET = TABLE_AT;

/**
 * A data block's digest (block-meta.ts): CRC-32C over its page CRC table,
 * each CRC as a big-endian u32. Equal digests at equal block size mean
 * equal bytes, without reading them.
 */
export function tableDigest(table: Uint32Array): number {
  return crc32c(encodeTable(table));
}
