// See kernel-nbd.h. Linux only; elsewhere every call fails with ENOSYS so
// the TypeScript side reports kernel attach as unavailable.
#include "kernel-nbd.h"

#include <cerrno>
#include <cstring>

#if defined(__linux__)
#include <fcntl.h>
#include <linux/netlink.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#endif

namespace torus {

#if defined(__linux__)

namespace {

// From <linux/nbd.h>; spelled out so the build needs no kernel headers.
constexpr unsigned long kNbdSetSock = 0xab00;
constexpr unsigned long kNbdSetBlksize = 0xab01;
constexpr unsigned long kNbdSetSize = 0xab02;
constexpr unsigned long kNbdDoIt = 0xab03;
constexpr unsigned long kNbdClearSock = 0xab04;
constexpr unsigned long kNbdClearQue = 0xab05;
constexpr unsigned long kNbdDisconnect = 0xab08;
constexpr unsigned long kNbdSetTimeout = 0xab09;
constexpr unsigned long kNbdSetFlags = 0xab0a;

// The kernel answers a CONNECT or STATUS at once; a reply that has not come
// in this long will not come (a wedged kernel), and the caller gets ETIMEDOUT
// instead of a worker thread stuck for ever.
constexpr int kNetlinkTimeoutS = 30;
constexpr size_t kReplyBytesMax = 1 << 20;

int ioctl_retry(int fd, unsigned long req, unsigned long arg) {
  int r;
  do {
    r = ::ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

}  // namespace

int unix_socketpair(int fds[2]) {
  return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0 ? 0 : errno;
}

int netlink_transact(const uint8_t* req, size_t len, std::vector<uint8_t>* reply) {
  if (len < sizeof(nlmsghdr)) return EINVAL;
  nlmsghdr head;
  std::memcpy(&head, req, sizeof head);
  int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (fd < 0) return errno;
  int err = 0;
  timeval tv{kNetlinkTimeoutS, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  std::vector<uint8_t> buf(64 * 1024);
  bool done = false;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
    err = errno;
    goto out;
  }
  {
    ssize_t n;
    do {
      n = ::sendto(fd, req, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      err = errno;
      goto out;
    }
  }
  while (!done) {
    ssize_t n;
    do {
      n = ::recv(fd, buf.data(), buf.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      err = (errno == EAGAIN || errno == EWOULDBLOCK) ? ETIMEDOUT : errno;
      goto out;
    }
    // Walk the datagram's messages only to see whether ours has ended; the
    // content is decoded in TypeScript.
    size_t off = 0;
    while (off + sizeof(nlmsghdr) <= static_cast<size_t>(n)) {
      nlmsghdr h;
      std::memcpy(&h, buf.data() + off, sizeof h);
      if (h.nlmsg_len < sizeof(nlmsghdr) || off + h.nlmsg_len > static_cast<size_t>(n)) break;
      if (h.nlmsg_seq == head.nlmsg_seq && (h.nlmsg_type == NLMSG_ERROR || h.nlmsg_type == NLMSG_DONE)) done = true;
      off += NLMSG_ALIGN(h.nlmsg_len);
    }
    if (reply->size() + static_cast<size_t>(n) > kReplyBytesMax) {
      err = EMSGSIZE;
      goto out;
    }
    reply->insert(reply->end(), buf.data(), buf.data() + n);
  }
out:
  ::close(fd);
  return err;
}

int nbd_ioctl_setup(const IoctlConfig& cfg, int* dev_fd, const char** stage) {
  *stage = "open";
  int fd = ::open(cfg.path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno;
  struct Step {
    const char* name;
    unsigned long req;
    unsigned long arg;
  } steps[] = {
      // 4096 whatever the volume's block size: the kernel refuses anything
      // above the page size (Torus passed its 512 KiB blocks and failed).
      {"NBD_SET_BLKSIZE", kNbdSetBlksize, static_cast<unsigned long>(cfg.block_size)},
      {"NBD_SET_SIZE", kNbdSetSize, static_cast<unsigned long>(cfg.size_bytes)},
      {"NBD_SET_TIMEOUT", kNbdSetTimeout, static_cast<unsigned long>(cfg.timeout_s)},
      {"NBD_SET_FLAGS", kNbdSetFlags, static_cast<unsigned long>(cfg.flags)},
      {"NBD_SET_SOCK", kNbdSetSock, static_cast<unsigned long>(cfg.sock_fd)},
  };
  for (const Step& s : steps) {
    *stage = s.name;
    if (ioctl_retry(fd, s.req, s.arg) < 0) {
      int e = errno;
      ioctl_retry(fd, kNbdClearSock, 0);
      ::close(fd);
      return e;
    }
  }
  *dev_fd = fd;
  return 0;
}

int nbd_ioctl_run(int dev_fd) {
  int err = 0;
  if (::ioctl(dev_fd, kNbdDoIt) < 0) err = errno;
  ioctl_retry(dev_fd, kNbdClearQue, 0);
  ioctl_retry(dev_fd, kNbdClearSock, 0);
  ::close(dev_fd);
  return err;
}

int nbd_ioctl_disconnect(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = ioctl_retry(fd, kNbdDisconnect, 0) < 0 ? errno : 0;
  ::close(fd);
  return err;
}

#else

int unix_socketpair(int*) { return ENOSYS; }
int netlink_transact(const uint8_t*, size_t, std::vector<uint8_t>*) { return ENOSYS; }
int nbd_ioctl_setup(const IoctlConfig&, int*, const char** stage) {
  *stage = "open";
  return ENOSYS;
}
int nbd_ioctl_run(int) { return ENOSYS; }
int nbd_ioctl_disconnect(const std::string&) { return ENOSYS; }

#endif

}  // namespace torus
