/**
 * The workload's data format: every 512-byte sector a write produces names
 * the write and the sector it was meant for, so a sector read back says
 * exactly which operation produced it (or that it is zeroes: trimmed,
 * zeroed or never written). Torn, misplaced or foreign sectors are told
 * apart from all of these.
 */
export const SECTOR_BYTES = 512;

/** One 16-byte record, repeated to fill the sector: magic, write id, sector, volume, check. */
const RECORD_BYTES = 16;
const RECORDS_PER_SECTOR = SECTOR_BYTES / RECORD_BYTES;
const MAGIC = 0x5453494d; // 'TSIM'

export type SectorValue =
  /** Zeroes. */
  | { readonly kind: 'zero' }
  /** Written by `writeId`. */
  | { readonly kind: 'write'; readonly writeId: number }
  /** Anything else: a torn sector, a sector of another volume or another place, random bytes. */
  | { readonly kind: 'garbage'; readonly why: string };

function check(writeId: number, sector: number, volumeId: number): number {
  return (Math.imul(writeId ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(sector + 1, 0xc2b2ae35) ^ volumeId) & 0xffff;
}

function writeSector(buf: Buffer, at: number, volumeId: number, writeId: number, sector: number): void {
  const c = check(writeId, sector, volumeId);
  buf.writeUInt32BE(MAGIC, at);
  buf.writeUInt32BE(writeId >>> 0, at + 4);
  buf.writeUInt32BE(sector >>> 0, at + 8);
  buf.writeUInt16BE(volumeId & 0xffff, at + 12);
  buf.writeUInt16BE(c, at + 14);
  for (let r = 1; r < RECORDS_PER_SECTOR; r++) buf.copy(buf, at + r * RECORD_BYTES, at, at + RECORD_BYTES);
}

/** The bytes write `writeId` puts in sectors [firstSector, firstSector + count) of a volume. */
export function encodeSectors(volumeId: number, writeId: number, firstSector: number, count: number): Buffer {
  const buf = Buffer.allocUnsafe(count * SECTOR_BYTES);
  for (let i = 0; i < count; i++) writeSector(buf, i * SECTOR_BYTES, volumeId, writeId, firstSector + i);
  return buf;
}

const ZERO_SECTOR = Buffer.alloc(SECTOR_BYTES);

/** What the sector at `at` in `buf` holds, given it was read from `sector` of `volumeId`. */
export function decodeSector(buf: Buffer, at: number, volumeId: number, sector: number): SectorValue {
  const s = buf.subarray(at, at + SECTOR_BYTES);
  if (s.equals(ZERO_SECTOR)) return { kind: 'zero' };
  if (s.readUInt32BE(0) !== MAGIC) return { kind: 'garbage', why: 'no magic' };
  const writeId = s.readUInt32BE(4);
  const expected = Buffer.allocUnsafe(SECTOR_BYTES);
  writeSector(expected, 0, volumeId, writeId, sector);
  if (s.equals(expected)) return { kind: 'write', writeId };
  const claimed = s.readUInt32BE(8);
  const claimedVolume = s.readUInt16BE(12);
  if (claimed !== sector >>> 0 || claimedVolume !== (volumeId & 0xffff)) {
    return { kind: 'garbage', why: `holds sector ${claimed} of volume ${claimedVolume} (write ${writeId})` };
  }
  return { kind: 'garbage', why: `torn or corrupt sector of write ${writeId}` };
}

/** The value of a sector as the model counts it: 0 for zeroes, the write id otherwise, null for garbage. */
export function sectorValue(v: SectorValue): number | null {
  return v.kind === 'zero' ? 0 : v.kind === 'write' ? v.writeId : null;
}
