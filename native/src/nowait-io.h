#pragma once
#include <cstddef>
#include <cstdint>

namespace torus {

// pread that never waits for the disk: preadv2 with RWF_NOWAIT. Returns
// bytes read, or -errno; -EAGAIN means "would block" (data not in the page
// cache), and the caller then uses the thread pool instead. -EOPNOTSUPP where
// the kernel lacks RWF_NOWAIT. (Buffered writes with RWF_NOWAIT are refused
// by ext4 on the kernels we run, so there is no write counterpart.)
int64_t pread_nowait(int fd, uint8_t* buf, size_t len, int64_t pos);

}  // namespace torus
