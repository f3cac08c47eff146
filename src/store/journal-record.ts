import { crc32c } from '../util/crc32c.js';
import { decodeBlockRef, encodeBlockRef, type BlockRef } from '../model/block-ref.js';

/**
 * The journal's record format (pure codec). A record is a 64-byte header,
 * then for WRITE the payload. Both carry a CRC32C, so replay can tell a torn
 * or stale tail from a record that was written whole.
 *
 *   0  u32 magic 'TJR1'        16 ref (16 bytes)      40 u32 payload crc
 *   4  u8  type                32 u32 offset in block  44..59 reserved (0)
 *   5  u8  flags (0)           36 u32 length           60 u32 header crc (bytes 0..59)
 *   6  u16 reserved (0)
 *   8  u64 sequence number (strictly +1 per record)
 */
export const RECORD_MAGIC = 0x544a5231;
export const RECORD_HEADER_BYTES = 64;

export const enum RecordType {
  /** Bytes at offset in a block. */
  Write = 1,
  /** Zero a range; the block stays allocated. */
  Zero = 2,
  /** Free a whole block (TRIM or WRITE_ZEROES without NO_HOLE over a whole block). */
  Punch = 3,
  /** Free every block of ref.volumeId. */
  DeleteVolume = 4,
}

export interface JournalRecord {
  readonly seq: number;
  readonly type: RecordType;
  readonly ref: BlockRef;
  readonly offset: number;
  readonly length: number;
  /** WRITE only. */
  readonly payload: Buffer | null;
}

export function encodeRecordHeader(rec: JournalRecord, payloadCrc: number): Buffer {
  const h = Buffer.alloc(RECORD_HEADER_BYTES);
  h.writeUInt32BE(RECORD_MAGIC, 0);
  h.writeUInt8(rec.type, 4);
  h.writeUInt32BE(Math.floor(rec.seq / 2 ** 32), 8);
  h.writeUInt32BE(rec.seq >>> 0, 12);
  encodeBlockRef(rec.ref, h, 16);
  h.writeUInt32BE(rec.offset, 32);
  h.writeUInt32BE(rec.length, 36);
  h.writeUInt32BE(payloadCrc >>> 0, 40);
  h.writeUInt32BE(crc32c(h.subarray(0, 60)), 60);
  return h;
}

export type HeaderDecode =
  | { ok: true; seq: number; type: RecordType; ref: BlockRef; offset: number; length: number; payloadBytes: number; payloadCrc: number }
  | { ok: false; reason: string };

/** Decodes a header; any inconsistency is reported, never thrown (replay stops there). */
export function decodeRecordHeader(h: Buffer, blockSize: number): HeaderDecode {
  if (h.length < RECORD_HEADER_BYTES) return { ok: false, reason: 'short header' };
  if (h.readUInt32BE(0) !== RECORD_MAGIC) return { ok: false, reason: 'bad magic' };
  if (crc32c(h.subarray(0, 60)) !== h.readUInt32BE(60)) return { ok: false, reason: 'header crc mismatch' };
  const type = h.readUInt8(4) as RecordType;
  if (type < RecordType.Write || type > RecordType.DeleteVolume) return { ok: false, reason: 'unknown record type' };
  const seq = h.readUInt32BE(8) * 2 ** 32 + h.readUInt32BE(12);
  let ref: BlockRef;
  try {
    ref = decodeBlockRef(h, 16);
  } catch {
    return { ok: false, reason: 'bad block ref' };
  }
  const offset = h.readUInt32BE(32);
  const length = h.readUInt32BE(36);
  if (type !== RecordType.DeleteVolume && offset + length > blockSize) return { ok: false, reason: 'range beyond block' };
  return {
    ok: true,
    seq,
    type,
    ref,
    offset,
    length,
    payloadBytes: type === RecordType.Write ? length : 0,
    payloadCrc: h.readUInt32BE(40),
  };
}
