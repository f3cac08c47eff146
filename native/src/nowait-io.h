#pragma once
#include <cstddef>
#include <cstdint>

namespace torus {

// pread/pwrite that never wait for the disk: preadv2/pwritev2 with
// RWF_NOWAIT. Returns bytes moved, or -errno; -EAGAIN means "would block"
// (data not in the page cache, or the write needs I/O), and the caller then
// uses the thread pool instead. -EOPNOTSUPP where the kernel or file system
// lacks RWF_NOWAIT.
int64_t pread_nowait(int fd, uint8_t* buf, size_t len, int64_t pos);
int64_t pwrite_nowait(int fd, const uint8_t* buf, size_t len, int64_t pos);

}  // namespace torus
