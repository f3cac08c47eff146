// Standalone check of native/src/crc32c.cc, built with AddressSanitizer and
// UndefinedBehaviorSanitizer by test/unit/crc32c-sanitized.test.ts: every
// length up to 9000 bytes (past two 4 KiB pages) at every start offset
// within a cache line, each buffer allocated to its exact size so that a
// read one byte past its end is reported, compared between the fastest code
// path, the path without carry-less folding and the portable table code,
// and the fastest path once more in two chained calls.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../src/crc32c.h"

int main() {
  torus::crc32c_init();
  unsigned seed = 12345;
  auto next = [&seed]() {
    seed = seed * 1103515245u + 12345u;
    return static_cast<uint8_t>(seed >> 16);
  };
  unsigned long checked = 0;
  for (size_t len = 0; len <= 9000; len++) {
    for (size_t offset = 0; offset < 64; offset += (len < 1100 ? 1 : 13)) {
      // Exactly offset + len bytes: ASan reports any read past the end.
      uint8_t* buf = static_cast<uint8_t*>(std::malloc(offset + len + (offset + len == 0 ? 1 : 0)));
      for (size_t i = 0; i < offset + len; i++) buf[i] = next();
      const uint32_t initial = (len & 1) ? 0u : static_cast<uint32_t>(len * 2654435761u);
      const uint32_t want = torus::crc32c_portable(initial, buf + offset, len);
      const uint32_t fast = torus::crc32c(initial, buf + offset, len);
      const uint32_t plain = torus::crc32c_no_fold(initial, buf + offset, len);
      // A cut anywhere: the second call starts from the first one's result.
      const size_t cut = (len * 7919 + offset) % (len + 1);
      const uint32_t chained = torus::crc32c(torus::crc32c(initial, buf + offset, cut), buf + offset + cut, len - cut);
      std::free(buf);
      if (fast != want || plain != want || chained != want) {
        std::printf("MISMATCH len=%zu offset=%zu initial=%08x cut=%zu table=%08x fast=%08x no-fold=%08x chained=%08x\n", len, offset, initial, cut, want, fast,
                    plain, chained);
        return 1;
      }
      checked++;
    }
  }
  std::printf("ok %lu buffers, variant %s\n", checked, torus::crc32c_variant());
  return 0;
}
