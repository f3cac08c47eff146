/*
 * torus FlexVolume driver: installed on each node as
 *   <kubelet plugin dir>/coreos.com~torus/torus
 *
 * kubelet runs it as `torus <call> [args...]` and reads stdout and stderr
 * combined as one JSON object, plus the exit code. This program holds no
 * storage logic: it answers `init` and the calls torus does not implement by
 * itself, and forwards `mount` and `unmount` to the node's torusd over a unix
 * socket, then prints torusd's JSON reply and exits with torusd's code.
 *
 * Why C, built static: the node may have no Node.js (Torus shipped one static
 * binary), and the driver must run from the plugin dir outside any container.
 * It needs only the kernel: no libc on the node, no systemd, no D-Bus.
 *
 * Why a unix socket: mount requests must not be reachable from the network.
 * The socket (default /run/torus/flex.sock, env TORUS_FLEX_SOCKET) is 0600 in
 * a 0700 folder, so only root on the node reaches it.
 *
 * Wire format (src/k8s/flex/protocol.ts is the other end and documents it):
 *   request: argv[1..] as NUL-terminated strings, then shutdown(SHUT_WR)
 *   reply:   "<exit code>\n<one JSON object>\n", then torusd closes
 *
 * Rules kept here: nothing but one JSON object is ever written, to stdout
 * only; the exit code is 0 for Success and 1 otherwise; every failure names
 * a TORUS_ERR_* code. Built by scripts/build-flex.sh with -static; never
 * committed as a binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/torus/flex.sock"
#define SOCKET_ENV "TORUS_FLEX_SOCKET"
/* Same bounds as src/k8s/flex/protocol.ts. */
#define REQUEST_BYTES_MAX (1024 * 1024)
#define REQUEST_ARGS_MAX 8
#define REPLY_BYTES_MAX (64 * 1024)
/* mkfs of a large volume can take minutes; kubelet itself sets no limit on mount. */
#define CALL_TIMEOUT_SECONDS (15 * 60 + 30)

static char reply[REPLY_BYTES_MAX + 1];

/* Writes all of buf to fd, retrying short writes and EINTR. */
static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Appends s to out as JSON string content (without quotes). */
static void json_escape(const char *s, char *out, size_t cap) {
  size_t o = 0;
  for (; *s != '\0' && o + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c < 0x20) {
      o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  out[o] = '\0';
}

/* Prints {"status":STATUS,"message":"CODE: ..."} and exits with the matching code. */
__attribute__((format(printf, 3, 4), noreturn)) static void finish(const char *status, const char *code, const char *fmt, ...) {
  char text[2048];
  char with_code[2200];
  char escaped[4400];
  char line[4500];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (code != NULL) {
    snprintf(with_code, sizeof with_code, "%s: %s", code, text);
  } else {
    snprintf(with_code, sizeof with_code, "%s", text);
  }
  json_escape(with_code, escaped, sizeof escaped);
  int n = snprintf(line, sizeof line, "{\"status\":\"%s\",\"message\":\"%s\"}\n", status, escaped);
  if (n > 0) (void)write_all(1, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  exit(strcmp(status, "Success") == 0 ? 0 : 1);
}

__attribute__((noreturn)) static void fail_unreachable(const char *path, const char *why) {
  finish("Failure", "TORUS_ERR_FLEX_UNREACHABLE", "cannot reach torusd at %s: %s; is the torus DaemonSet running on this node?", path, why);
}

int main(int argc, char **argv) {
  /* A torusd that goes away mid-call must give EPIPE, not kill us silently. */
  signal(SIGPIPE, SIG_IGN);

  if (argc < 2) finish("Failure", "TORUS_ERR_FLEX_REQUEST_INVALID", "usage: %s <init|mount DIR JSON|unmount DIR>", argv[0]);
  const char *call = argv[1];
  if (strcmp(call, "init") == 0) {
    /* attach:false: kubelet calls only mount/unmount, on the node. */
    static const char init_reply[] = "{\"status\":\"Success\",\"capabilities\":{\"attach\":false}}\n";
    (void)write_all(1, init_reply, sizeof init_reply - 1);
    return 0;
  }
  if (strcmp(call, "mount") != 0 && strcmp(call, "unmount") != 0) {
    finish("Not supported", NULL, "torus does not implement the FlexVolume call \"%s\"", call);
  }
  if (argc - 1 > REQUEST_ARGS_MAX) finish("Failure", "TORUS_ERR_FLEX_REQUEST_INVALID", "too many arguments for %s", call);

  size_t total = 0;
  for (int i = 1; i < argc; i++) total += strlen(argv[i]) + 1;
  if (total > REQUEST_BYTES_MAX) finish("Failure", "TORUS_ERR_FLEX_REQUEST_INVALID", "the %s call is larger than the 1 MiB limit", call);

  const char *path = getenv(SOCKET_ENV);
  if (path == NULL || path[0] == '\0') path = DEFAULT_SOCKET;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) fail_unreachable(path, "the socket path is too long");
  memcpy(addr.sun_path, path, strlen(path) + 1);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail_unreachable(path, strerror(errno));
  struct timeval tv = {.tv_sec = CALL_TIMEOUT_SECONDS, .tv_usec = 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) fail_unreachable(path, strerror(errno));

  for (int i = 1; i < argc; i++) {
    if (write_all(fd, argv[i], strlen(argv[i]) + 1) < 0) fail_unreachable(path, strerror(errno));
  }
  if (shutdown(fd, SHUT_WR) < 0) fail_unreachable(path, strerror(errno));

  size_t got = 0;
  for (;;) {
    if (got == REPLY_BYTES_MAX) fail_unreachable(path, "its reply is larger than 64 KiB");
    ssize_t n = read(fd, reply + got, REPLY_BYTES_MAX - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_unreachable(path, errno == EAGAIN || errno == EWOULDBLOCK ? "no answer in time" : strerror(errno));
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  close(fd);
  reply[got] = '\0';

  /* "<0|1>\n{...}\n": checked, never trusted blindly, before it reaches kubelet. */
  if (got < 4 || (reply[0] != '0' && reply[0] != '1') || reply[1] != '\n' || reply[2] != '{' || memchr(reply, '\0', got) != NULL) {
    fail_unreachable(path, "it sent a malformed reply");
  }
  char *json = reply + 2;
  char *end = reply + got;
  if (end[-1] == '\n') *--end = '\0';
  if (end == json || end[-1] != '}' || memchr(json, '\n', (size_t)(end - json)) != NULL) fail_unreachable(path, "it sent a malformed reply");
  int code = reply[0] - '0';
  /* The status must agree with the exit code; Success only with 0. */
  static const char success_prefix[] = "{\"status\":\"Success\"";
  int success = strncmp(json, success_prefix, sizeof success_prefix - 1) == 0;
  if (success != (code == 0)) fail_unreachable(path, "its exit code and status disagree");

  *end++ = '\n';
  if (write_all(1, json, (size_t)(end - json)) < 0) return 1;
  return code;
}
