import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import {
  crc32c,
  crc32cDescription,
  crc32cImplementation,
  crc32cJs,
  crc32cNative,
  crc32cNativeNoFold,
  crc32cNativePortable,
} from '../../src/util/crc32c.js';

/** Small deterministic PRNG (mulberry32) so a failure reproduces. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

type Crc32cFn = (data: Uint8Array, initial: number) => number;

const NOT_BUILT = 'native/build/Release/torus_native.node is not built or failed to load: run "npm run build"';

function requireNative(): Crc32cFn {
  if (crc32cNative === null) throw new Error(NOT_BUILT);
  return crc32cNative;
}

function requireNativeNoFold(): Crc32cFn {
  if (crc32cNativeNoFold === null) throw new Error(NOT_BUILT);
  return crc32cNativeNoFold;
}

function requireNativePortable(): Crc32cFn {
  if (crc32cNativePortable === null) throw new Error(NOT_BUILT);
  return crc32cNativePortable;
}

// Published CRC-32C check values (the "123456789" check value and RFC 3720 B.4).
const VECTORS: Array<[string, Buffer, number]> = [
  ['empty', Buffer.alloc(0), 0x00000000],
  ['"a"', Buffer.from('a'), 0xc1d04330],
  ['"123456789"', Buffer.from('123456789'), 0xe3069283],
  ['32 zero bytes', Buffer.alloc(32, 0x00), 0x8a9136aa],
  ['32 0xff bytes', Buffer.alloc(32, 0xff), 0x62a8ab43],
  ['32 ascending bytes', Buffer.from(Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e],
  ['32 descending bytes', Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c],
  ['quick brown fox', Buffer.from('The quick brown fox jumps over the lazy dog'), 0x22620404],
];

const IMPLS: Array<[string, () => Crc32cFn]> = [
  ['js', () => crc32cJs],
  ['native', requireNative],
  ['native without folding', requireNativeNoFold],
  ['native table fallback', requireNativePortable],
];

describe('crc32c', () => {
  it('uses the native addon when it is built', () => {
    requireNative();
    expect(crc32cImplementation()).toBe('native');
    expect(crc32cDescription()).toMatch(/^native \((vpclmulqdq|vpclmulqdq-avx2|sse4\.2|table)\)$/);
  });

  for (const [implName, get] of IMPLS) {
    describe(implName, () => {
      for (const [name, data, want] of VECTORS) {
        it(`matches the known value for ${name}`, () => {
          expect(get()(data, 0)).toBe(want);
        });
      }

      it('continues a CRC across chunks', () => {
        const f = get();
        const data = Buffer.from('123456789');
        for (let cut = 0; cut <= data.length; cut++) {
          expect(f(data.subarray(cut), f(data.subarray(0, cut), 0))).toBe(0xe3069283);
        }
      });

      it('reads only the view of a Uint8Array, not its whole ArrayBuffer', () => {
        const backing = new Uint8Array(64).fill(0xab);
        backing.set(Buffer.from('123456789'), 13);
        expect(get()(backing.subarray(13, 22), 0)).toBe(0xe3069283);
      });
    });
  }

  it('folds by carry-less multiplication exactly when the CPU has VPCLMULQDQ, with AVX-512 or else AVX2', () => {
    requireNative();
    const flags = new Set((/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').trim().split(/\s+/));
    // TORUS_CRC32C=sse4.2 keeps to the crc32 instruction (to compare).
    const folds = process.env.TORUS_CRC32C !== 'sse4.2';
    const folds512 = folds && ['avx512f', 'avx512vl', 'vpclmulqdq', 'pclmulqdq', 'sse4_2'].every((f) => flags.has(f));
    const folds256 = folds && ['avx2', 'vpclmulqdq', 'pclmulqdq', 'sse4_2'].every((f) => flags.has(f));
    const want = folds512 ? 'vpclmulqdq' : folds256 ? 'vpclmulqdq-avx2' : flags.has('sse4_2') ? 'sse4.2' : 'table';
    expect(crc32cDescription()).toBe(`native (${want})`);
  });

  it('agrees between native, native without folding, native table fallback and JS on random buffers, lengths and offsets', () => {
    const native = requireNative();
    const noFold = requireNativeNoFold();
    const portable = requireNativePortable();
    const rand = rng(0xc0ffee);
    const pool = randomBytes(rand, 200_000);
    // Lengths around the native lane boundaries (3 x 256 and 3 x 8192), the
    // folding steps (512-bit: 256 bytes to start, then 256, 64 and 16 at a
    // time; 256-bit: from 384 bytes, then 128, 32 and 16 at a time) and a
    // 4 KiB page, plus random ones.
    const lengths = [0, 1, 7, 8, 9, 15, 16, 17, 255, 256, 257, 271, 272, 319, 320, 335, 383, 384, 385, 399, 400, 415, 416, 431, 432, 511, 512, 513, 767, 768, 769, 1000, 4095, 4096, 4097, 24_575, 24_576, 24_577, 49_152, 65_536];
    for (let i = 0; i < 300; i++) lengths.push(Math.floor(rand() * (i < 250 ? 4096 : 150_000)));
    for (const len of lengths) {
      const offset = Math.floor(rand() * 16);
      const initial = rand() < 0.5 ? 0 : Math.floor(rand() * 2 ** 32);
      const view = pool.subarray(offset, offset + len);
      const js = crc32cJs(view, initial);
      const nat = native(view, initial);
      const tab = portable(view, initial);
      const plain = noFold(view, initial);
      if (js !== nat || js !== tab || js !== plain) {
        throw new Error(`mismatch len=${len} offset=${offset} initial=${initial}: js=${js} native=${nat} no fold=${plain} table=${tab}`);
      }
    }
  });

  it('agrees between native and the table fallback on every length to 9000, misaligned and in two chained calls', () => {
    const native = requireNative();
    const portable = requireNativePortable();
    const rand = rng(0xfeed);
    const pool = randomBytes(rand, 9000 + 64);
    for (let len = 0; len <= 9000; len++) {
      const offset = len % 61;
      const view = pool.subarray(offset, offset + len);
      const initial = len & 1 ? Math.floor(rand() * 2 ** 32) : 0;
      const want = portable(view, initial);
      const cut = Math.floor(rand() * (len + 1));
      const chained = native(view.subarray(cut), native(view.subarray(0, cut), initial));
      if (native(view, initial) !== want || chained !== want) {
        throw new Error(`mismatch len=${len} offset=${offset} initial=${initial} cut=${cut}: table=${want} native=${native(view, initial)} chained=${chained}`);
      }
    }
  });

  it('detects every single-bit flip in a block', () => {
    const rand = rng(7);
    const block = randomBytes(rand, 4096);
    const good = crc32c(block);
    for (let i = 0; i < 200; i++) {
      const pos = Math.floor(rand() * block.length);
      const bit = 1 << Math.floor(rand() * 8);
      block[pos]! ^= bit;
      expect(crc32c(block)).not.toBe(good);
      block[pos]! ^= bit;
    }
    expect(crc32c(block)).toBe(good);
  });

  it('returns an unsigned 32-bit number and accepts a signed initial value', () => {
    const v = crc32c(Buffer.alloc(32, 0xff));
    expect(v).toBe(0x62a8ab43);
    const withSigned = crc32c(Buffer.from('x'), 0x80000000 | 0);
    expect(withSigned).toBe(crc32c(Buffer.from('x'), 0x80000000));
    expect(withSigned).toBeGreaterThanOrEqual(0);
  });

  it('native rejects data that is not bytes', () => {
    const native = requireNative() as unknown as (d: unknown, i: unknown) => number;
    expect(() => native('abc', 0)).toThrow(TypeError);
    expect(() => native(new Uint16Array(4), 0)).toThrow(TypeError);
  });

  it('falls back to JS when TORUS_CRC32C=js', async () => {
    vi.resetModules();
    vi.stubEnv('TORUS_CRC32C', 'js');
    try {
      const mod = await import('../../src/util/crc32c.js');
      expect(mod.crc32cImplementation()).toBe('js');
      expect(mod.crc32cNative).toBeNull();
      expect(mod.crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    } finally {
      vi.unstubAllEnvs();
      vi.resetModules();
    }
  });
});

describe('crc32cPages', () => {
  it('equals crc32c of each page, natively and in JS', async () => {
    const { crc32c, crc32cPages } = await import('../../src/util/crc32c.js');
    const data = Buffer.alloc(8 * 4096);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const out = new Uint32Array(8);
    crc32cPages(data, 4096, out);
    for (let p = 0; p < 8; p++) expect(out[p]).toBe(crc32c(data.subarray(p * 4096, (p + 1) * 4096)));
  });

  it('fills small tables (kept in V8\'s heap, computed through a shared scratch) and large ones alike, and nothing past the pages', async () => {
    const { crc32c, crc32cPages } = await import('../../src/util/crc32c.js');
    for (const pages of [1, 2, 15, 16, 17, 32, 33, 64, 256]) {
      // Twice, with other bytes the second time: nothing of the first call's table may show through.
      for (const salt of [3, 11]) {
        const data = Buffer.alloc(pages * 4096);
        for (let i = 0; i < data.length; i++) data[i] = ((i + salt) * 2654435761) >>> 24;
        const out = new Uint32Array(pages + 3).fill(0xdeadbeef);
        crc32cPages(data, 4096, out);
        for (let p = 0; p < pages; p++) expect(out[p], `page ${p} of ${pages}`).toBe(crc32c(data.subarray(p * 4096, (p + 1) * 4096)));
        expect([...out.subarray(pages)], `past ${pages} pages`).toEqual([0xdeadbeef, 0xdeadbeef, 0xdeadbeef]);
      }
    }
  });

  it('refuses a table too short for the pages, and data that is not whole pages', async () => {
    const { crc32cPages } = await import('../../src/util/crc32c.js');
    expect(() => crc32cPages(Buffer.alloc(4 * 4096), 4096, new Uint32Array(3))).toThrow(RangeError);
    expect(() => crc32cPages(Buffer.alloc(40 * 4096), 4096, new Uint32Array(39))).toThrow(RangeError);
    expect(() => crc32cPages(Buffer.alloc(4096 + 1), 4096, new Uint32Array(2))).toThrow(RangeError);
    expect(() => crc32cPages(Buffer.alloc(4096), 0, new Uint32Array(2))).toThrow(RangeError);
  });
});

describe('crc32cCombinePages', () => {
  it('gives the CRC of the whole from the CRCs of its pages, for any number of pages and page sizes', async () => {
    const { crc32c, crc32cJs, crc32cPages, crc32cCombinePages } = await import('../../src/util/crc32c.js');
    for (const [pageBytes, pages] of [[4096, 1], [4096, 2], [4096, 7], [4096, 256], [512, 9], [8, 3]] as const) {
      const data = Buffer.alloc(pageBytes * pages);
      for (let i = 0; i < data.length; i++) data[i] = ((i + pages) * 2654435761) >>> 24;
      const out = new Uint32Array(pages);
      crc32cPages(data, pageBytes, out);
      expect(crc32cCombinePages(out, pageBytes)).toBe(crc32c(data));
      expect(crc32cCombinePages(out, pageBytes)).toBe(crc32cJs(data));
      // Any changed page changes the combination.
      out[pages - 1] = (out[pages - 1]! ^ 0x80) >>> 0;
      expect(crc32cCombinePages(out, pageBytes)).not.toBe(crc32c(data));
    }
    expect(crc32cCombinePages(new Uint32Array(0), 4096)).toBe(0);
  });

  it('combines a range of the CRCs as it combines that range taken out (crc32cCombineRange)', async () => {
    const { crc32cPages, crc32cCombinePages, crc32cCombineRange } = await import('../../src/util/crc32c.js');
    const data = Buffer.alloc(4096 * 9);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const out = new Uint32Array(9);
    crc32cPages(data, 4096, out);
    for (const [from, to] of [[0, 9], [2, 5], [8, 9], [4, 4]] as const) {
      expect(crc32cCombineRange(out, from, to, 4096), `${from}..${to}`).toBe(crc32cCombinePages(out.subarray(from, to), 4096));
    }
  });
});

describe('crc32cConcat', () => {
  it('gives crc(A || B) from crc(A) and crc(B) for B of whole pages, A of any length', async () => {
    const { crc32c, crc32cConcat } = await import('../../src/util/crc32c.js');
    for (const headBytes of [0, 1, 40, 4095, 5000]) {
      for (const pages of [0, 1, 2, 256]) {
        const a = Buffer.alloc(headBytes, 0x5a);
        const b = Buffer.alloc(pages * 4096);
        for (let i = 0; i < b.length; i++) b[i] = ((i + headBytes) * 2654435761) >>> 24;
        expect(crc32cConcat(crc32c(a), crc32c(b), b.length, 4096), `${headBytes} + ${pages} pages`).toBe(crc32c(Buffer.concat([a, b])));
      }
    }
  });

  it('refuses a B that is not whole pages', async () => {
    const { crc32cConcat } = await import('../../src/util/crc32c.js');
    expect(() => crc32cConcat(0, 0, 100, 4096)).toThrow(/whole pages/);
  });
});
