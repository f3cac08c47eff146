// The power-loss suite's data model, pure (no I/O, no clock): which sectors
// each generation writes, what a sector of a generation holds, and which
// contents a sector may read back with after a power loss. Shared by the
// writer and the checker (test/vm/guest/powerloss.mjs), so both derive the
// same answers from a seed instead of shipping write logs around.
//
// A "sector" here is 4 KiB, the volume's logical block size. Generation 0 is
// the never-written sector (all zeroes); generations of round r are
// r * GEN_ROUND_STRIDE + 1, + 2, ... so rounds never share a generation.

export const SECTOR_BYTES = 4096;
export const GEN_ROUND_STRIDE = 1_000_000;
const MAGIC = 0x504c5754; // "PLWT"
/** Runs (contiguous sector ranges) one generation writes, and their longest. */
export const RUNS_PER_GEN = 8;
export const RUN_SECTORS_MAX = 32;
/**
 * Generations past the last one the host saw acknowledged that may have
 * reached the disk. The writer starts a generation only after the previous
 * one's FLUSH was acknowledged, so it is the next one (written, its flush
 * acknowledged but the console line cut off by the kill) and the one after
 * (in flight); two more in case acknowledgement lines were still queued in
 * the guest's serial driver. A wider window only accepts more generations as
 * "unflushed"; it never lets a lost flushed write pass.
 */
export const UNACKED_GENS_MAX = 4;

/** mulberry32: a small seeded PRNG, enough to spread sectors and fill them. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const mix = (a, b) => (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35)) >>> 0;

export function roundBase(round) {
  return round * GEN_ROUND_STRIDE + 1;
}

/** The runs generation `gen` writes: [{ start, count }] in sectors, inside [0, sectors). */
export function runsOf(seed, gen, sectors) {
  const next = prng(mix(seed, gen));
  const runs = [];
  for (let i = 0; i < RUNS_PER_GEN; i++) {
    const count = 1 + (next() % RUN_SECTORS_MAX);
    const start = next() % sectors;
    runs.push({ start, count: Math.min(count, sectors - start) });
  }
  return runs;
}

/**
 * What a deleted file held (the guest fills the free space with it before
 * torusd first starts): 1 MiB of a text no generation's sector can match,
 * so a sector that reads back as it is told apart from other garbage.
 */
const STALE_TEXT = 'torus power-loss test: bytes of a deleted file, never written through torusd. ';
export const STALE_CHUNK = Buffer.alloc(1024 * 1024, STALE_TEXT);
const STALE_PREFIX = Buffer.from(STALE_TEXT.slice(0, 16));

// One scratch sector as 32-bit words: typed-array stores are many times
// faster than Buffer.writeUInt32BE, and this runs for every sector written
// and read under emulation. Words are in the host's byte order (x86: little
// endian); the header fields are read back the same way.
const words = new Uint32Array(SECTOR_BYTES / 4);
const wordBytes = Buffer.from(words.buffer);
const ZERO = Buffer.alloc(SECTOR_BYTES);

/** The 4 KiB a sector holds once generation `gen` wrote it (gen 0: zeroes). */
export function sectorBytes(seed, sector, gen, out = Buffer.alloc(SECTOR_BYTES), at = 0) {
  if (gen === 0) {
    out.fill(0, at, at + SECTOR_BYTES);
    return out;
  }
  let a = mix(mix(seed, sector), gen);
  words[0] = MAGIC;
  words[1] = sector;
  words[2] = gen;
  words[3] = seed;
  for (let i = 4; i < words.length; i++) {
    // mulberry32, inlined (see prng()).
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    words[i] = t ^ (t >>> 14);
  }
  wordBytes.copy(out, at);
  return out;
}

/**
 * What a sector read back holds: { gen } when it is exactly a generation's
 * content for this sector (0 for zeroes), { garbage: why } otherwise.
 */
export function classify(seed, sector, buf, at = 0) {
  const got = buf.subarray(at, at + SECTOR_BYTES);
  if (got.equals(ZERO)) return { gen: 0 };
  if (got.readUInt32LE(0) !== MAGIC) {
    return { garbage: got.includes(STALE_PREFIX) ? "a deleted file's bytes (stale disk blocks)" : 'no pattern header' };
  }
  const claimed = got.readUInt32LE(4);
  if (claimed !== sector) return { garbage: `holds sector ${claimed}'s pattern` };
  if (got.readUInt32LE(12) !== seed >>> 0) return { garbage: 'pattern of another run (seed)' };
  const gen = got.readUInt32LE(8);
  sectorBytes(seed, sector, gen);
  if (!wordBytes.equals(got)) return { garbage: `generation ${gen} header, torn or damaged body` };
  return { gen };
}

/**
 * What each sector may hold after the power loss that ended a writing round.
 * `before` (Uint32Array, one generation per sector) is what the volume held
 * when the round began; the round wrote generations base, base+1, ... and the
 * host saw FLUSH acknowledged up to `lastAck` (base - 1 when none was).
 * Returns { floor, later }: floor[s] is the newest generation a FLUSH made
 * durable for sector s (it must read back exactly, or be replaced by a later
 * write); later.get(s) lists the unacknowledged generations that wrote s
 * (any of them may have reached the disk, or none).
 */
export function expectations(seed, sectors, before, base, lastAck) {
  const floor = Uint32Array.from(before);
  for (let g = base; g <= lastAck; g++) {
    for (const r of runsOf(seed, g, sectors)) floor.fill(g, r.start, r.start + r.count);
  }
  const later = new Map();
  for (let g = lastAck + 1; g <= lastAck + UNACKED_GENS_MAX; g++) {
    for (const r of runsOf(seed, g, sectors)) {
      for (let s = r.start; s < r.start + r.count; s++) {
        const l = later.get(s);
        if (l === undefined) later.set(s, [g]);
        else if (!l.includes(g)) l.push(g);
      }
    }
  }
  return { floor, later };
}

/**
 * Judges one sector read back: 'flushed' (holds its floor), 'unflushed' (a
 * later, unacknowledged generation), or a failure: 'lost' (a valid older
 * generation: a flushed write was lost), 'garbage', 'unknown' (a valid
 * generation that never wrote here in this window).
 */
export function judge(exp, sector, got) {
  if (got.garbage !== undefined) return 'garbage';
  if (got.gen === exp.floor[sector]) return 'flushed';
  if (exp.later.get(sector)?.includes(got.gen)) return 'unflushed';
  if (got.gen < exp.floor[sector]) return 'lost';
  return 'unknown';
}

/**
 * Where two reads of the whole volume (the generation each sector held,
 * e.g. through two peers of a replicated run) disagree: how many sectors,
 * and the first few as { sector, a, b }.
 */
export function readsDiffer(a, b, examplesMax = 4) {
  if (a.length !== b.length) throw new Error(`reads of ${a.length} and ${b.length} sectors`);
  let count = 0;
  const examples = [];
  for (let s = 0; s < a.length; s++) {
    if (a[s] === b[s]) continue;
    if (count++ < examplesMax) examples.push({ sector: s, a: a[s], b: b[s] });
  }
  return { count, examples };
}
