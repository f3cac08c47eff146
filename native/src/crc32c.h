// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
// ext4 and SCTP. torus checksums every block it stores with it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace torus {

// Builds the tables and picks the fastest code path for this CPU. Call once
// before crc32c(); calling again is harmless.
void crc32c_init();

// Continues a CRC: `crc` is the value a previous call returned (0 to start),
// so crc32c(crc32c(0, a), b) == crc32c(0, a || b), as zlib's crc32() works.
uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t len);

// The portable table code alone, whatever the CPU; for tests of the fallback.
uint32_t crc32c_portable(uint32_t crc, const uint8_t* data, size_t len);

// The crc32-instruction (or table) code alone, without carry-less folding;
// for tests of that path on CPUs that fold.
uint32_t crc32c_no_fold(uint32_t crc, const uint8_t* data, size_t len);

// "vpclmulqdq" when buffers of 256 bytes and more are folded by carry-less
// multiplication (AVX-512), "vpclmulqdq-avx2" when buffers of 384 bytes and
// more are (256-bit, no AVX-512), "sse4.2" when the crc32 instruction does
// it all, "table" otherwise.
const char* crc32c_variant();

}  // namespace torus
