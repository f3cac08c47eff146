/**
 * CRC-32C (Castagnoli), the checksum on every stored block. Uses the native
 * addon (carry-less folding with VPCLMULQDQ on AVX-512 or else AVX2, the
 * SSE4.2 crc32 instruction, or its C++ table code on other CPUs;
 * TORUS_CRC32C=sse4.2 keeps to the crc32 instruction, TORUS_CRC32C=js to
 * JavaScript) when native/build/Release/torus_native.node is built, and a
 * pure-JS slicing-by-8 implementation otherwise. Loading the addon never logs: the
 * daemon reports crc32cImplementation() itself.
 *
 * Chaining: pass a previous result as `initial` to continue over more data,
 * crc32c(b, crc32c(a)) === crc32c(Buffer.concat([a, b])).
 */
import { assert } from './assert.js';
import { nativeAddon, type NativeAddon } from './native.js';

type Crc32cFn = (data: Uint8Array, initial: number) => number;

const POLY = 0x82f63b78; // reflected Castagnoli polynomial

/** Eight 256-entry tables, table k at [k * 256]; entry = CRC of a byte followed by k zero bytes. */
const TABLE = buildTables();

function buildTables(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let s = 1; s < 8; s++) {
      const prev = t[(s - 1) * 256 + n]!;
      t[s * 256 + n] = t[prev & 0xff]! ^ (prev >>> 8);
    }
  }
  return t;
}

/** The pure-JS implementation (slicing-by-8); exported for tests and benchmarks. */
export function crc32cJs(data: Uint8Array, initial = 0): number {
  const t = TABLE;
  let crc = ~initial;
  let i = 0;
  const end8 = data.length - (data.length & 7);
  while (i < end8) {
    const lo = crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    crc =
      t[1792 + (lo & 0xff)]! ^
      t[1536 + ((lo >>> 8) & 0xff)]! ^
      t[1280 + ((lo >>> 16) & 0xff)]! ^
      t[1024 + (lo >>> 24)]! ^
      t[768 + data[i + 4]!]! ^
      t[512 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
    i += 8;
  }
  while (i < data.length) crc = t[(crc ^ data[i++]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

function loadNative(): NativeAddon | null {
  if (process.env.TORUS_CRC32C === 'js') return null;
  return nativeAddon;
}

const native = loadNative();

/**
 * The native implementation, or null when the addon is not built (or
 * TORUS_CRC32C=js is set). Exported for tests and benchmarks.
 */
export const crc32cNative: Crc32cFn | null = native === null ? null : (data, initial) => native.crc32c(data, initial);

/** The addon's C++ table code (its fallback for CPUs without SSE4.2), or null; for tests. */
export const crc32cNativePortable: Crc32cFn | null =
  native === null ? null : (data, initial) => native.crc32cPortable(data, initial);

/** The addon's code without carry-less folding, or null; for tests. */
export const crc32cNativeNoFold: Crc32cFn | null =
  native?.crc32cNoFold === undefined ? null : (data, initial) => native.crc32cNoFold!(data, initial);

const impl: Crc32cFn = native === null ? crc32cJs : native.crc32c;

/** CRC-32C of `buf` as an unsigned 32-bit number; `initial` continues a previous CRC. */
export function crc32c(buf: Uint8Array, initial = 0): number {
  return impl(buf, initial >>> 0);
}

export function crc32cImplementation(): 'native' | 'js' {
  return native === null ? 'js' : 'native';
}

/** For logs: `native (vpclmulqdq)`, `native (vpclmulqdq-avx2)`, `native (sse4.2)`, `native (table)` or `js (slicing-by-8)`. */
export function crc32cDescription(): string {
  return native === null ? 'js (slicing-by-8)' : `native (${native.crc32cVariant})`;
}

const nativePages = native?.crc32cPages;

/**
 * V8 keeps a typed array of up to 64 bytes (its `typed_array_max_size_in_heap`)
 * inside its own heap. The first time native code asks for such an array's
 * memory, V8 moves it out: a malloc, a backing store, and an ArrayBuffer
 * extension that the collector later sweeps. The table of a 4 KiB read or
 * write is such an array (one page, 4 bytes), made fresh for each request:
 * on one peer's 4 KiB random reads that move was about 3 % of the event
 * loop's samples (malloc, BackingStore::Allocate; docs/perf/profile.md).
 * So the native call writes a small table into this scratch (128 bytes: off
 * the heap from the start), and JavaScript copies it into `out`.
 */
const ON_HEAP_TYPED_ARRAY_BYTES = 64;
const smallPagesScratch = new Uint32Array(32);

/**
 * The CRC32C of each `pageBytes` page of `data` (a whole number of pages)
 * into out[0..]: one native call per buffer instead of one per page.
 */
export function crc32cPages(data: Uint8Array, pageBytes: number, out: Uint32Array): void {
  const pages = data.length / pageBytes;
  if (!(pageBytes > 0 && Number.isInteger(pages) && pages <= out.length)) throw new RangeError('crc32cPages: data must be whole pages and out long enough');
  if (nativePages !== undefined) {
    if (out.byteLength > ON_HEAP_TYPED_ARRAY_BYTES) {
      nativePages(data, pageBytes, out);
      return;
    }
    nativePages(data, pageBytes, smallPagesScratch);
    for (let i = 0; i < pages; i++) out[i] = smallPagesScratch[i]!;
    return;
  }
  for (let i = 0, at = 0; at < data.length; i++, at += pageBytes) out[i] = impl(data.subarray(at, at + pageBytes), 0);
}

/**
 * Advancing a CRC register over `bytes` zero bytes is linear over GF(2):
 * four 256-entry tables, one per byte of the register, built from the 32
 * one-bit registers advanced the slow way. Kept per page size (one in use).
 */
const zeroShifts = new Map<number, Uint32Array>();

function zeroShiftTable(bytes: number): Uint32Array {
  let t = zeroShifts.get(bytes);
  if (t !== undefined) return t;
  const basis = new Uint32Array(32);
  for (let bit = 0; bit < 32; bit++) {
    let c = (1 << bit) >>> 0;
    for (let n = 0; n < bytes; n++) c = (TABLE[c & 0xff]! ^ (c >>> 8)) >>> 0;
    basis[bit] = c;
  }
  t = new Uint32Array(4 * 256);
  for (let k = 0; k < 4; k++) {
    for (let b = 0; b < 256; b++) {
      let v = 0;
      for (let j = 0; j < 8; j++) if ((b >>> j) & 1) v ^= basis[8 * k + j]!;
      t[k * 256 + b] = v >>> 0;
    }
  }
  zeroShifts.set(bytes, t);
  return t;
}

/**
 * The CRC-32C of consecutive pages of `pageBytes` each, from each page's
 * own CRC (crcs, in order, as crc32cPages gives them): crc(A || B)
 * is crc(A) advanced over |B| zero bytes, xor crc(B). A few table lookups
 * per page instead of a second pass over the data, so a write's bytes are
 * summed once for both its page table and its wire checksum.
 */
export function crc32cCombinePages(crcs: Uint32Array, pageBytes: number): number {
  return crc32cCombineRange(crcs, 0, crcs.length, pageBytes);
}

/** crc32cCombinePages over crcs[from..to), without a view of the array. */
export function crc32cCombineRange(crcs: Uint32Array, from: number, to: number, pageBytes: number): number {
  if (to <= from) return 0;
  const t = zeroShiftTable(pageBytes);
  let c = crcs[from]!;
  for (let i = from + 1; i < to; i++) {
    c = t[c & 0xff]! ^ t[256 + ((c >>> 8) & 0xff)]! ^ t[512 + ((c >>> 16) & 0xff)]! ^ t[768 + (c >>> 24)]! ^ crcs[i]!;
  }
  return c >>> 0;
}

/**
 * The CRC-32C of A || B from crc(A) and crc(B), where B is a whole number
 * of `pageBytes` pages: crc(A) advanced over |B| zero bytes, a page at a
 * time, xor crc(B). A few table lookups per page of B.
 */
export function crc32cConcat(crcA: number, crcB: number, lengthB: number, pageBytes: number): number {
  assert(lengthB % pageBytes === 0, 'crc32cConcat: B is whole pages');
  const t = zeroShiftTable(pageBytes);
  let c = crcA >>> 0;
  for (let n = lengthB / pageBytes; n > 0; n--) c = t[c & 0xff]! ^ t[256 + ((c >>> 8) & 0xff)]! ^ t[512 + ((c >>> 16) & 0xff)]! ^ t[768 + (c >>> 24)]!;
  return (c ^ crcB) >>> 0;
}
