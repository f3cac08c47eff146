// Reads that are served from the page cache without blocking.
// Node runs file I/O on its libuv thread pool; for a 4 KiB page already in
// the page cache, the round trip through the pool costs several times the
// copy itself. RWF_NOWAIT lets the event loop thread try first and hand the
// request to the pool only when the kernel says it would block.
#include "nowait-io.h"

#include <cerrno>
#include <sys/resource.h>
#include <sys/uio.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

namespace torus {

int64_t pread_nowait(int fd, uint8_t* buf, size_t len, int64_t pos) {
#if defined(__linux__)
  struct iovec iov = {buf, len};
  ssize_t n;
  do {
    n = preadv2(fd, &iov, 1, pos, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(n);
#else
  (void)fd; (void)buf; (void)len; (void)pos;
  return -EOPNOTSUPP;
#endif
}

int64_t thread_waits() {
#if defined(__linux__) && defined(RUSAGE_THREAD)
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) != 0) return -static_cast<int64_t>(errno);
  return static_cast<int64_t>(ru.ru_nvcsw);
#else
  return -ENOSYS;
#endif
}

}  // namespace torus
