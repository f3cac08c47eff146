// CRC-32C with two code paths:
//
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
#include <nmmintrin.h>
#endif

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
#endif
  g_ready = true;
}

uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t len) {
  uint32_t reg = ~crc;
#ifdef TORUS_CRC32C_X86
  if (g_hw) return ~crc_hw(reg, data, len);
#endif
  return ~crc_table(reg, data, len);
}

uint32_t crc32c_portable(uint32_t crc, const uint8_t* data, size_t len) { return ~crc_table(~crc, data, len); }

const char* crc32c_variant() { return g_hw ? "sse4.2" : "table"; }

}  // namespace torus
