import { crc32c } from '../util/crc32c.js';
import { decodeBlockRef, encodeBlockRef, sameBlockRef, type BlockRef } from '../model/block-ref.js';
import { TorusError } from '../errors/torus-error.js';
import { VERSION_LEGACY, type Version } from '../model/version.js';
import { CRC_PAGE_BYTES } from '../model/replica-api.js';
import { assert } from '../util/assert.js';

/**
 * Layout of one block file (pure maths and codec). The header holds a CRC32C
 * per 4 KiB page of the block, so a read of a few pages is checked without
 * reading the whole block. Data follows the header, page aligned, so that
 * unwritten pages are holes in a sparse file.
 *
 *   0  'TORUSBK1'   8 u32 format (2)   12 u32 block size   16 ref (16 bytes)
 *   32 u32 page size   36 u32 page count
 *   40 u8 state (1 data, 2 zero)   41..47 reserved (0)
 *   48 u32 version, high 32 bits   52 u32 version, low 32 bits   56..63 reserved
 *   64 u32[pageCount] page CRC32Cs (big endian)
 *
 * A tombstone (state zero) is the header alone: the file is truncated to
 * headerBytes, its table is that of a zero block and means nothing.
 *
 * Format 1 (torus 0.1.0) is the same without state and version (bytes 40..63
 * were zero): it reads as state data at VERSION_LEGACY, and a file is
 * rewritten as format 2 the next time its header is written.
 */
export const PAGE_BYTES = CRC_PAGE_BYTES;
const MAGIC = Buffer.from('TORUSBK1', 'ascii');
const TABLE_AT = 64;
/** The header format this release writes; it reads this one and format 1. */
export const BLOCK_FILE_FORMAT = 2;
const STATE_DATA = 1;
const STATE_ZERO = 2;
const TWO_32 = 2 ** 32;

export interface BlockHeader {
  readonly state: 'data' | 'zero';
  readonly version: Version;
  readonly table: Uint32Array;
}

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

export function encodeHeader(ref: BlockRef, blockSize: number, header: BlockHeader): Buffer {
  assert(Number.isSafeInteger(header.version) && header.version >= 0, 'a stored block has a version (>= 0)');
  assert(header.table.length === pageCount(blockSize), 'the CRC table has one entry per page');
  const h = Buffer.alloc(headerBytes(blockSize));
  MAGIC.copy(h, 0);
  h.writeUInt32BE(BLOCK_FILE_FORMAT, 8);
  h.writeUInt32BE(blockSize, 12);
  encodeBlockRef(ref, h, 16);
  h.writeUInt32BE(PAGE_BYTES, 32);
  h.writeUInt32BE(header.table.length, 36);
  h.writeUInt8(header.state === 'data' ? STATE_DATA : STATE_ZERO, 40);
  h.writeUInt32BE(Math.floor(header.version / TWO_32), 48);
  h.writeUInt32BE(header.version % TWO_32, 52);
  writeTable(header.table, h, TABLE_AT);
  return h;
}

export function decodeHeader(h: Buffer, ref: BlockRef, blockSize: number, file: string): BlockHeader {
  const bad = (why: string) => new TorusError('TORUS_ERR_STORE_CORRUPT', `block file ${file}: ${why}`, { details: { file } });
  if (h.length < headerBytes(blockSize) || !h.subarray(0, 8).equals(MAGIC)) throw bad('bad magic');
  const format = h.readUInt32BE(8);
  if (format !== 1 && format !== BLOCK_FILE_FORMAT) throw bad(`unknown header format ${format}`);
  if (h.readUInt32BE(12) !== blockSize) throw bad(`block size ${h.readUInt32BE(12)} but the store uses ${blockSize}`);
  if (!sameBlockRef(decodeBlockRef(h, 16), ref)) throw bad('header names another block');
  if (h.readUInt32BE(32) !== PAGE_BYTES || h.readUInt32BE(36) !== pageCount(blockSize)) throw bad('page geometry differs');
  const table = new Uint32Array(pageCount(blockSize));
  for (let i = 0; i < table.length; i++) table[i] = h.readUInt32BE(TABLE_AT + i * 4);
  if (format === 1) return { state: 'data', version: VERSION_LEGACY, table };
  const state = h.readUInt8(40);
  if (state !== STATE_DATA && state !== STATE_ZERO) throw bad(`unknown state ${state}`);
  const high = h.readUInt32BE(48);
  const version = high * TWO_32 + h.readUInt32BE(52);
  if (!Number.isSafeInteger(version)) throw bad(`version ${high}:${h.readUInt32BE(52)} is beyond 2^53`);
  return { state: state === STATE_DATA ? 'data' : 'zero', version, table };
}

/** Writes the CRC table at `at` as big-endian u32s (what the header holds, and what the digest covers). */
function writeTable(table: Uint32Array, out: Buffer, at: number): void {
  for (let i = 0; i < table.length; i++) out.writeUInt32BE(table[i]!, at + i * 4);
}

/**
 * A data block's digest (block-meta.ts): CRC-32C over its page CRC table,
 * each CRC as a big-endian u32. Equal digests at equal block size mean
 * equal bytes, without reading them.
 */
export function tableDigest(table: Uint32Array): number {
  const n = table.length * 4;
  // Encoded into one buffer kept for the purpose rather than a new one per
  // call: a fresh Buffer is external memory, and digests are summed for
  // every LIST and META answer.
  if (digestScratch.length < n) digestScratch = Buffer.alloc(n);
  writeTable(table, digestScratch, 0);
  return crc32c(digestScratch.subarray(0, n));
}

let digestScratch = Buffer.alloc(0);
