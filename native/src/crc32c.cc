// CRC-32C with four code paths:
//
//  * AVX-512 + VPCLMULQDQ (buffers of 256 bytes and more): the buffer is
//    folded 256 bytes at a time into four 512-bit accumulators by carry-less
//    multiplication (CRC is linear over GF(2): the CRC of A || B equals the
//    CRC of (A times x^|B| mod P) XOR B), and the last 16 bytes are reduced
//    with the crc32 instruction. About 2.3x the crc32-instruction rate on a
//    4 KiB page (docs/perf/profile.md).
//  * AVX2 + VPCLMULQDQ without AVX-512 (AMD Zen 3; buffers of 384 bytes and
//    more): the same fold with four 256-bit accumulators, 128 bytes at a
//    time. About 1.3x the crc32-instruction rate on a 4 KiB page, about the
//    same on 1 MiB (docs/perf/profile.md).
//  * SSE4.2: the x86 `crc32` instruction folds 8 bytes per instruction but has
//    a latency of 3 cycles, so one dependency chain runs at a third of the
//    possible rate. Large buffers are therefore split into three lanes whose
//    CRCs are computed in one interleaved loop and joined afterwards with a
//    "shift by N zero bytes" table (CRC is linear over GF(2)).
//  * Table (slicing-by-8): portable fallback for CPUs without SSE4.2 and for
//    non-x86 builds.
//
// Internally the CRC register is kept pre-inverted (~crc); the public entry
// point does the inversion so chained calls compose.
#include "crc32c.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TORUS_CRC32C_X86 1
#include <immintrin.h>
#endif

#include <cstdlib>
#include <cstring>

namespace torus {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Lane sizes of the interleaved hardware loop. Long lanes amortise the join;
// short lanes keep mid-sized buffers (a few KiB) on the fast path.
constexpr size_t kLongLane = 8192;
constexpr size_t kShortLane = 256;

uint32_t g_table[8][256];         // slicing-by-8 tables
uint32_t g_shift_long[4][256];    // register after kLongLane zero bytes
uint32_t g_shift_short[4][256];   // register after kShortLane zero bytes
bool g_ready = false;
bool g_hw = false;
bool g_fold = false;
bool g_fold256 = false;  // the 256-bit fold instead (no AVX-512)

uint32_t zeros_bytewise(uint32_t reg, size_t n) {
  for (size_t i = 0; i < n; i++) reg = g_table[0][reg & 0xff] ^ (reg >> 8);
  return reg;
}

// Advancing the register over n zero bytes is a linear map, so it is fixed by
// its effect on the 32 basis vectors; from those, build per-byte lookups so a
// shift costs four loads. Done once at load, about 0.5 ms for 8 KiB lanes.
void build_shift_table(uint32_t table[4][256], size_t n) {
  uint32_t basis[32];
  for (int bit = 0; bit < 32; bit++) basis[bit] = zeros_bytewise(1u << bit, n);
  for (int k = 0; k < 4; k++) {
    for (int b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int j = 0; j < 8; j++) {
        if (b & (1 << j)) v ^= basis[8 * k + j];
      }
      table[k][b] = v;
    }
  }
}

inline uint32_t shift(const uint32_t table[4][256], uint32_t reg) {
  return table[0][reg & 0xff] ^ table[1][(reg >> 8) & 0xff] ^ table[2][(reg >> 16) & 0xff] ^
         table[3][reg >> 24];
}

uint32_t crc_table(uint32_t reg, const uint8_t* p, size_t len) {
  while (len >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);  // memcpy: unaligned-safe, compiles to one load
    std::memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= reg;
    reg = g_table[7][lo & 0xff] ^ g_table[6][(lo >> 8) & 0xff] ^ g_table[5][(lo >> 16) & 0xff] ^
          g_table[4][lo >> 24] ^ g_table[3][hi & 0xff] ^ g_table[2][(hi >> 8) & 0xff] ^
          g_table[1][(hi >> 16) & 0xff] ^ g_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) reg = g_table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
  return reg;
}

#ifdef TORUS_CRC32C_X86
// Everything below is compiled for SSE4.2 whatever the build flags say, and
// only called after __builtin_cpu_supports("sse4.2") said yes.
#define TORUS_SSE42 __attribute__((target("sse4.2")))

// Three independent chains of `lane` bytes per round keep the crc32 unit busy
// every cycle; advances p and len past the whole rounds it consumed.
TORUS_SSE42 uint32_t crc_hw_lanes(uint32_t reg, const uint8_t*& p, size_t& len, size_t lane,
                                  const uint32_t table[4][256]) {
  while (len >= 3 * lane) {
    uint64_t c0 = reg, c1 = 0, c2 = 0;
    const uint8_t* end = p + lane;
    while (p < end) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p, 8);
      std::memcpy(&w1, p + lane, 8);
      std::memcpy(&w2, p + 2 * lane, 8);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
      p += 8;
    }
    // crc(A || B) started from r == shift(r, |B|) ^ crc(B) started from 0.
    reg = shift(table, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
    reg = shift(table, reg) ^ static_cast<uint32_t>(c2);
    p += 2 * lane;
    len -= 3 * lane;
  }
  return reg;
}

TORUS_SSE42 uint32_t crc_hw(uint32_t reg, const uint8_t* p, size_t len) {
  // Bytes up to an 8-byte boundary, so the wide loads below are aligned.
  while (len > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    reg = _mm_crc32_u8(reg, *p++);
    len--;
  }
  reg = crc_hw_lanes(reg, p, len, kLongLane, g_shift_long);
  reg = crc_hw_lanes(reg, p, len, kShortLane, g_shift_short);

  uint64_t c = reg;
  while (len >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    len -= 8;
  }
  reg = static_cast<uint32_t>(c);
  while (len--) reg = _mm_crc32_u8(reg, *p++);
  return reg;
}

// ---- folding by carry-less multiplication (AVX-512 + VPCLMULQDQ)
//
// A 16-byte piece of the message, loaded little-endian into 128 bits, is a
// polynomial whose bit j is the coefficient of x^(127-j) (reflected): its low
// 64 bits are the high-degree half. Moving the piece `bits` further on (so
// that it can be XORed into the data there) multiplies it by x^bits mod P,
// done per half: low half times (x^(bits+64) mod P), high half times
// (x^bits mod P). A carry-less product of two reflected values comes out
// shifted, which the constants absorb: each is stored reflected in 32 bits
// with its exponent lowered by 33.

constexpr size_t kFoldMin = 256;  // the first load fills four 64-byte accumulators

struct FoldConstants {
  uint64_t low;   // multiplies the low (high-degree) 64 bits
  uint64_t high;  // multiplies the high 64 bits
};
FoldConstants g_fold_2048, g_fold_512, g_fold_384, g_fold_256, g_fold_128;

// x^n mod P, reflected into 32 bits (bit i is the coefficient of x^(31-i)).
uint64_t xpow_mod_reflected(unsigned n) {
  constexpr uint64_t kPolyNormal = 0x11EDC6F41ull;  // P with its x^32 term
  uint64_t r = 1;
  for (unsigned i = 0; i < n; i++) {
    r <<= 1;
    if (r & (1ull << 32)) r ^= kPolyNormal;
  }
  uint32_t v = 0;
  for (int i = 0; i < 32; i++) {
    if (r & (1ull << i)) v |= 1u << (31 - i);
  }
  return v;
}

FoldConstants fold_constants(unsigned bits) { return {xpow_mod_reflected(bits + 64 - 33), xpow_mod_reflected(bits - 33)}; }

#define TORUS_FOLD __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

TORUS_FOLD inline __m512i fold_512(__m512i acc, __m512i k, __m512i data) {
  __m512i lo = _mm512_clmulepi64_epi128(acc, k, 0x00);
  __m512i hi = _mm512_clmulepi64_epi128(acc, k, 0x11);
  return _mm512_ternarylogic_epi64(lo, hi, data, 0x96);  // lo ^ hi ^ data
}

TORUS_FOLD inline __m128i fold_128(__m128i acc, __m128i k, __m128i data) {
  __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
  __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
  return _mm_ternarylogic_epi64(lo, hi, data, 0x96);
}

// SSE2 only (every x86-64): shared by both fold widths.
inline __m128i constants_128(const FoldConstants& f) {
  return _mm_set_epi64x(static_cast<long long>(f.high), static_cast<long long>(f.low));
}

TORUS_FOLD inline __m512i constants_512(const FoldConstants& f) { return _mm512_broadcast_i32x4(constants_128(f)); }

// len >= kFoldMin.
TORUS_FOLD uint32_t crc_fold(uint32_t reg, const uint8_t* p, size_t len) {
  // Starting from register r is the same as starting from 0 with r XORed
  // into the first four bytes.
  __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(reg))));
  __m512i a1 = _mm512_loadu_si512(p + 64);
  __m512i a2 = _mm512_loadu_si512(p + 128);
  __m512i a3 = _mm512_loadu_si512(p + 192);
  p += 256;
  len -= 256;
  const __m512i k2048 = constants_512(g_fold_2048);
  while (len >= 256) {
    a0 = fold_512(a0, k2048, _mm512_loadu_si512(p));
    a1 = fold_512(a1, k2048, _mm512_loadu_si512(p + 64));
    a2 = fold_512(a2, k2048, _mm512_loadu_si512(p + 128));
    a3 = fold_512(a3, k2048, _mm512_loadu_si512(p + 192));
    p += 256;
    len -= 256;
  }
  const __m512i k512 = constants_512(g_fold_512);
  a1 = fold_512(a0, k512, a1);
  a2 = fold_512(a1, k512, a2);
  a3 = fold_512(a2, k512, a3);
  while (len >= 64) {
    a3 = fold_512(a3, k512, _mm512_loadu_si512(p));
    p += 64;
    len -= 64;
  }
  // The four 16-byte lanes of the last accumulator into one.
  const __m128i k128 = constants_128(g_fold_128);
  __m128i x = fold_128(_mm512_extracti32x4_epi32(a3, 0), constants_128(g_fold_384), _mm512_extracti32x4_epi32(a3, 3));
  x = fold_128(_mm512_extracti32x4_epi32(a3, 1), constants_128(g_fold_256), x);
  x = fold_128(_mm512_extracti32x4_epi32(a3, 2), k128, x);
  while (len >= 16) {
    x = fold_128(x, k128, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    len -= 16;
  }
  // What is left is the CRC of these 16 bytes from 0, then of the tail.
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(x)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(x, 1)));
  reg = static_cast<uint32_t>(c);
  while (len--) reg = _mm_crc32_u8(reg, *p++);
  return reg;
}

// ---- the same fold at 256 bits (AVX2 + VPCLMULQDQ), for CPUs with
// VPCLMULQDQ but without AVX-512 (AMD Zen 3). There a 256-bit carry-less
// multiply issues every other cycle, so folding 32 bytes (two of them) only
// matches the crc32 instruction's peak of 8 bytes a cycle. It pays on 4 KiB
// pages, where the crc32 path stays well under that peak (short lanes, each
// round joined by table lookups). Four accumulators cover the multiply's
// latency (4 cycles). No ternarylogic without AVX-512: two XORs.

#define TORUS_FOLD256 __attribute__((target("avx2,vpclmulqdq,pclmul,sse4.2")))

// Below this the crc32 path's single chain is as fast (measured on Zen 3;
// the fold itself needs 128 bytes).
constexpr size_t kFold256Min = 384;

FoldConstants g_fold_1024;

TORUS_FOLD256 inline __m256i fold_256(__m256i acc, __m256i k, __m256i data) {
  __m256i lo = _mm256_clmulepi64_epi128(acc, k, 0x00);
  __m256i hi = _mm256_clmulepi64_epi128(acc, k, 0x11);
  return _mm256_xor_si256(_mm256_xor_si256(lo, hi), data);
}

TORUS_FOLD256 inline __m128i fold_128_avx2(__m128i acc, __m128i k, __m128i data) {
  __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
  __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
  return _mm_xor_si128(_mm_xor_si128(lo, hi), data);
}

TORUS_FOLD256 inline __m256i constants_256(const FoldConstants& f) { return _mm256_broadcastsi128_si256(constants_128(f)); }

TORUS_FOLD256 inline __m256i load_256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// len >= 128.
TORUS_FOLD256 uint32_t crc_fold256(uint32_t reg, const uint8_t* p, size_t len) {
  __m256i a0 = _mm256_xor_si256(load_256(p), _mm256_zextsi128_si256(_mm_cvtsi32_si128(static_cast<int>(reg))));
  __m256i a1 = load_256(p + 32);
  __m256i a2 = load_256(p + 64);
  __m256i a3 = load_256(p + 96);
  p += 128;
  len -= 128;
  const __m256i k1024 = constants_256(g_fold_1024);
  while (len >= 128) {
    a0 = fold_256(a0, k1024, load_256(p));
    a1 = fold_256(a1, k1024, load_256(p + 32));
    a2 = fold_256(a2, k1024, load_256(p + 64));
    a3 = fold_256(a3, k1024, load_256(p + 96));
    p += 128;
    len -= 128;
  }
  // In pairs, then the pairs: two multiplies deep instead of three.
  const __m256i k256 = constants_256(g_fold_256);
  a1 = fold_256(a0, k256, a1);
  a3 = fold_256(a2, k256, a3);
  a3 = fold_256(a1, constants_256(g_fold_512), a3);
  while (len >= 32) {
    a3 = fold_256(a3, k256, load_256(p));
    p += 32;
    len -= 32;
  }
  const __m128i k128 = constants_128(g_fold_128);
  __m128i x = fold_128_avx2(_mm256_castsi256_si128(a3), k128, _mm256_extracti128_si256(a3, 1));
  if (len >= 16) {
    x = fold_128_avx2(x, k128, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    len -= 16;
  }
  // As in crc_fold: the CRC of these 16 bytes from 0, then of the tail.
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(x)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(x, 1)));
  reg = static_cast<uint32_t>(c);
  while (len--) reg = _mm_crc32_u8(reg, *p++);
  return reg;
}
#endif

}  // namespace

void crc32c_init() {
  if (g_ready) return;
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    g_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++) {
    for (int s = 1; s < 8; s++) {
      g_table[s][n] = g_table[0][g_table[s - 1][n] & 0xff] ^ (g_table[s - 1][n] >> 8);
    }
  }
#ifdef TORUS_CRC32C_X86
  __builtin_cpu_init();
  g_hw = __builtin_cpu_supports("sse4.2");
  if (g_hw) {
    build_shift_table(g_shift_long, kLongLane);
    build_shift_table(g_shift_short, kShortLane);
  }
  // __builtin_cpu_supports also checks that the OS saves the 512-bit
  // registers. TORUS_CRC32C=sse4.2 keeps to the crc32 instruction (to compare).
  const char* pick = std::getenv("TORUS_CRC32C");
  const bool only_crc32 = pick != nullptr && std::strcmp(pick, "sse4.2") == 0;
  g_fold = g_hw && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") && !only_crc32;
  // Without AVX-512, the same fold at 256 bits where VPCLMULQDQ exists
  // (__builtin_cpu_supports("avx2") also checks that the OS saves ymm state).
  g_fold256 = g_hw && !g_fold && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq") &&
              __builtin_cpu_supports("pclmul") && !only_crc32;
  if (g_fold256) {
    g_fold_1024 = fold_constants(1024);
    g_fold_512 = fold_constants(512);
    g_fold_256 = fold_constants(256);
    g_fold_128 = fold_constants(128);
  }
  if (g_fold) {
    g_fold_2048 = fold_constants(2048);
    g_fold_512 = fold_constants(512);
    g_fold_384 = fold_constants(384);
    g_fold_256 = fold_constants(256);
    g_fold_128 = fold_constants(128);
  }
#endif
  g_ready = true;
}

uint32_t crc32c_no_fold(uint32_t crc, const uint8_t* data, size_t len) {
#ifdef TORUS_CRC32C_X86
  if (g_hw) return ~crc_hw(~crc, data, len);
#endif
  return ~crc_table(~crc, data, len);
}

uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t len) {
#ifdef TORUS_CRC32C_X86
  if (g_fold && len >= kFoldMin) return ~crc_fold(~crc, data, len);
  if (g_fold256 && len >= kFold256Min) return ~crc_fold256(~crc, data, len);
#endif
  return crc32c_no_fold(crc, data, len);
}

uint32_t crc32c_portable(uint32_t crc, const uint8_t* data, size_t len) { return ~crc_table(~crc, data, len); }

const char* crc32c_variant() { return g_fold ? "vpclmulqdq" : g_fold256 ? "vpclmulqdq-avx2" : g_hw ? "sse4.2" : "table"; }

}  // namespace torus
