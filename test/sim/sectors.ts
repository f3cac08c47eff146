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

const scratch = Buffer.alloc(RECORD_BYTES);

function writeSector(buf: Buffer, at: number, volumeId: number, writeId: number, sector: number): void {
  scratch.writeUInt32BE(MAGIC, 0);
  scratch.writeUInt32BE(writeId >>> 0, 4);
  scratch.writeUInt32BE(sector >>> 0, 8);
  scratch.writeUInt16BE(volumeId & 0xffff, 12);
  scratch.writeUInt16BE(check(writeId, sector, volumeId), 14);
  // fill() repeats the record natively: the simulation encodes every sector it writes.
  buf.fill(scratch, at, at + SECTOR_BYTES);
}

/** The bytes write `writeId` puts in sectors [firstSector, firstSector + count) of a volume. */
export function encodeSectors(volumeId: number, writeId: number, firstSector: number, count: number): Buffer {
  const buf = Buffer.allocUnsafe(count * SECTOR_BYTES);
  for (let i = 0; i < count; i++) writeSector(buf, i * SECTOR_BYTES, volumeId, writeId, firstSector + i);
  return buf;
}


const ZERO: SectorValue = Object.freeze({ kind: 'zero' });
const ZERO_SECTOR = Buffer.alloc(SECTOR_BYTES);

/**
 * The value of the sector at `at` in `buf`, read from `sector` of
 * `volumeId`, as the model counts it: 0 for zeroes, the write id, or null
 * for anything else. Allocation-free: the checkers decode every sector of
 * every copy they look at.
 */
export function sectorValueAt(buf: Buffer, at: number, volumeId: number, sector: number): number | null {
  const end = at + SECTOR_BYTES;
  if (buf.readUInt32BE(at) !== MAGIC) return buf.compare(ZERO_SECTOR, 0, SECTOR_BYTES, at, end) === 0 ? 0 : null;
  const writeId = buf.readUInt32BE(at + 4);
  if (buf.readUInt32BE(at + 8) !== sector >>> 0 || buf.readUInt16BE(at + 12) !== (volumeId & 0xffff) || buf.readUInt16BE(at + 14) !== check(writeId, sector, volumeId)) return null;
  // Every record equals the first (not torn, not partly corrupt): the sector
  // has period RECORD_BYTES, i.e. it equals itself shifted by one record.
  // One native comparison instead of a loop.
  return buf.compare(buf, at, end - RECORD_BYTES, at + RECORD_BYTES, end) === 0 ? writeId : null;
}

/** What the sector at `at` in `buf` holds, given it was read from `sector` of `volumeId` (with the reason when garbage). */
export function decodeSector(buf: Buffer, at: number, volumeId: number, sector: number): SectorValue {
  const v = sectorValueAt(buf, at, volumeId, sector);
  if (v === 0) return ZERO;
  if (v !== null) return { kind: 'write', writeId: v };
  const s = buf.subarray(at, at + SECTOR_BYTES);
  if (s.readUInt32BE(0) !== MAGIC) return { kind: 'garbage', why: 'no magic' };
  const writeId = s.readUInt32BE(4);
  const claimed = s.readUInt32BE(8);
  const claimedVolume = s.readUInt16BE(12);
  if (claimed !== sector >>> 0 || claimedVolume !== (volumeId & 0xffff)) {
    return { kind: 'garbage', why: `holds sector ${claimed} of volume ${claimedVolume} (write ${writeId})` };
  }
  return { kind: 'garbage', why: `torn or corrupt sector of write ${writeId}` };
}

/** The value of a decoded sector as the model counts it: 0 for zeroes, the write id otherwise, null for garbage. */
export function sectorValue(v: SectorValue): number | null {
  return v.kind === 'zero' ? 0 : v.kind === 'write' ? v.writeId : null;
}
