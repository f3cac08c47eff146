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

// How many times the calling thread has waited (voluntary context switches:
// it slept on I/O, a lock or the dirty-page throttle), or -errno; -ENOSYS
// where the count is not per thread. A write done on the event loop thread
// compares it before and after: a slow write that did not wait was only
// preempted, which moving writes to the thread pool would not help.
int64_t thread_waits();

}  // namespace torus
