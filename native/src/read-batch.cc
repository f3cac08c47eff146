// Batched reads from the page cache through io_uring (read-batch.h).
//
// A 4 KiB read served from the page cache costs little in the kernel; on a
// paravirtualised guest most of a preadv2 is the system call's entry and
// exit, and between JavaScript steps the caches are cold. Submitting the
// reads of one event-loop turn together runs them back to back in one
// io_uring_enter. Every read carries RWF_NOWAIT, so the kernel completes it
// inline or fails it with -EAGAIN; nothing is left in flight when the call
// returns, and no buffer is touched by the kernel afterwards.
#include "read-batch.h"

#include <cerrno>
#include <cstring>

#if defined(__linux__)
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

namespace torus {

#if defined(__linux__) && defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter)

namespace {

struct Ring {
  int fd = -1;
  int failed = 0;  // -errno once setup failed: never tried again
  unsigned* sq_tail = nullptr;
  unsigned* sq_mask = nullptr;
  unsigned* sq_array = nullptr;
  unsigned* cq_head = nullptr;
  unsigned* cq_tail = nullptr;
  unsigned* cq_mask = nullptr;
  io_uring_sqe* sqes = nullptr;
  io_uring_cqe* cqes = nullptr;

  int setup() {
    io_uring_params p;
    std::memset(&p, 0, sizeof p);
    int r = static_cast<int>(syscall(__NR_io_uring_setup, static_cast<unsigned>(kReadBatchMax), &p));
    if (r < 0) return -errno;
    fd = r;
    size_t sq_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_bytes = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && cq_bytes > sq_bytes) sq_bytes = cq_bytes;
    void* sq = mmap(nullptr, sq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) return close_failed();
    void* cq = single ? sq : mmap(nullptr, cq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) return close_failed();
    void* s = mmap(nullptr, p.sq_entries * sizeof(io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (s == MAP_FAILED) return close_failed();
    char* sqc = static_cast<char*>(sq);
    char* cqc = static_cast<char*>(cq);
    sq_tail = reinterpret_cast<unsigned*>(sqc + p.sq_off.tail);
    sq_mask = reinterpret_cast<unsigned*>(sqc + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sqc + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(cqc + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cqc + p.cq_off.tail);
    cq_mask = reinterpret_cast<unsigned*>(cqc + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cqc + p.cq_off.cqes);
    sqes = static_cast<io_uring_sqe*>(s);
    return 0;
  }

  // The mappings of a half-made ring are left: this happens at most once per thread.
  int close_failed() {
    int e = errno;
    ::close(fd);
    fd = -1;
    return -e;
  }
};

thread_local Ring ring;

}  // namespace

int read_batch_nowait(BatchRead* reads, size_t count) {
  if (count > kReadBatchMax) return -EINVAL;
  if (ring.fd < 0) {
    if (ring.failed != 0) return ring.failed;
    int r = ring.setup();
    if (r < 0) {
      ring.failed = r;
      return r;
    }
  }
  if (count == 0) return 0;
  const unsigned tail = *ring.sq_tail;
  for (size_t i = 0; i < count; i++) {
    const unsigned idx = (tail + static_cast<unsigned>(i)) & *ring.sq_mask;
    io_uring_sqe* sqe = &ring.sqes[idx];
    std::memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_READ;
    sqe->fd = reads[i].fd;
    sqe->addr = reinterpret_cast<uint64_t>(reads[i].buf);
    sqe->len = static_cast<uint32_t>(reads[i].len);
    sqe->off = static_cast<uint64_t>(reads[i].pos);
    sqe->rw_flags = RWF_NOWAIT;
    sqe->user_data = i;
    ring.sq_array[idx] = idx;
    reads[i].result = -EINPROGRESS;
  }
  __atomic_store_n(ring.sq_tail, tail + static_cast<unsigned>(count), __ATOMIC_RELEASE);
  size_t reaped = 0;
  size_t to_submit = count;
  while (reaped < count) {
    int r = static_cast<int>(syscall(__NR_io_uring_enter, ring.fd, static_cast<unsigned>(to_submit), static_cast<unsigned>(count - reaped), IORING_ENTER_GETEVENTS, nullptr, 0));
    if (r < 0) {
      if (errno == EINTR) continue;
      // Nothing can be left in flight with buffers the caller will reuse:
      // a ring that fails here is not used again (the caller reads one by one).
      ring.failed = -errno;
      return ring.failed;
    }
    if (static_cast<size_t>(r) <= to_submit) to_submit -= static_cast<size_t>(r);
    unsigned head = *ring.cq_head;
    const unsigned ctail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != ctail; head++) {
      const io_uring_cqe& c = ring.cqes[head & *ring.cq_mask];
      if (c.user_data < count) reads[c.user_data].result = c.res;
      reaped++;
    }
    __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
  }
  return 0;
}

#else

int read_batch_nowait(BatchRead* reads, size_t count) {
  (void)reads;
  (void)count;
  return -ENOSYS;
}

#endif

}  // namespace torus
