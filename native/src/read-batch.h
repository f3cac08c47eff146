#pragma once
#include <cstddef>
#include <cstdint>

namespace torus {

// One read of a batch: `len` bytes at `pos` of `fd` into `buf`. `result` is
// set to the bytes read, or -errno (-EAGAIN: not in the page cache).
struct BatchRead {
  int fd;
  uint8_t* buf;
  size_t len;
  int64_t pos;
  int64_t result;
};

// Reads that never wait for the disk (RWF_NOWAIT), many for one system
// call: submitted together on an io_uring owned by the calling thread and
// reaped before returning. Returns 0, or -errno when the ring cannot be
// used (no io_uring in this kernel, or refused by a seccomp filter, or
// io_uring_disabled): the caller then reads one by one. Each read's own
// outcome is in its `result`.
int read_batch_nowait(BatchRead* reads, size_t count);

// Largest batch one call takes (the ring's size).
constexpr size_t kReadBatchMax = 64;

}  // namespace torus
