// Kernel nbd plumbing: the syscalls only. Message encoding and decoding live
// in TypeScript (src/attach/netlink-codec.ts) where they are unit-tested; this
// side opens sockets, moves bytes and runs ioctls, always off the event loop
// when a call can block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace torus {

// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC); 0 or errno.
int unix_socketpair(int fds[2]);

// Sends one generic netlink request and collects every reply message up to
// and including the NLMSG_ERROR (ack) or NLMSG_DONE with the request's
// sequence number. Blocks (bounded by a receive timeout). 0 or errno.
int netlink_transact(const uint8_t* req, size_t len, std::vector<uint8_t>* reply);

struct IoctlConfig {
  std::string path;
  int sock_fd = -1;
  uint64_t size_bytes = 0;
  uint64_t block_size = 4096;
  uint64_t flags = 0;
  uint64_t timeout_s = 0;
};

// Opens the device and configures it (block size, size, timeout, flags,
// socket). On success *dev_fd is the open device. `stage` names the step that
// failed. 0 or errno.
int nbd_ioctl_setup(const IoctlConfig& cfg, int* dev_fd, const char** stage);
// NBD_DO_IT: blocks until the device is disconnected; then clears the queue
// and the socket and closes dev_fd. 0 or errno of DO_IT.
int nbd_ioctl_run(int dev_fd);
// NBD_DISCONNECT on the device at path. 0 or errno.
int nbd_ioctl_disconnect(const std::string& path);

}  // namespace torus
