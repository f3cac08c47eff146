#!/usr/bin/env bash
# The native addon under AddressSanitizer and UndefinedBehaviorSanitizer
# (`npm run test:asan`): builds it with both (scripts/build-addon.sh
# --sanitize, into native/build/asan) and runs the suites whose code calls
# it: the unit tests (CRCs of every page, buffer placement, reads that must
# not wait, alone or in io_uring batches, syncfs, thread wait counts), the
# NBD server with real clients and the fuzzers, and the end-to-end tests
# whose torusd processes load the sanitized build too (they inherit the
# environment).
#
# Node itself is not instrumented, so the sanitizer runtime is preloaded;
# leak checking is off (Node does not free everything at exit). Any report
# aborts the process that hit it, and its test fails. TORUS_NATIVE_ADDON
# makes every process load this build or fail (src/util/native.ts): the run
# cannot pass on the JavaScript fallback. Extra arguments replace the list
# of test files. Slower than `npm test`: not part of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  printf 'test:asan: error: %s\n' "$*" >&2
  exit 1
}

node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then
  export PATH="$node24_bin:$PATH"
fi
bash scripts/install-deps.sh

command -v g++ >/dev/null 2>&1 || die "g++ is missing: apt-get install build-essential"
runtime=$(g++ -print-file-name=libasan.so)
[ "$runtime" != "libasan.so" ] && [ -e "$runtime" ] || die "g++ has no AddressSanitizer runtime (libasan.so): apt-get install build-essential (Debian's gcc brings libasan)"

bash scripts/build-addon.sh --sanitize
addon=$PWD/native/build/asan/build/Release/torus_native.node
readelf -d "$addon" | grep -q 'libasan' || die "$addon does not link libasan: the sanitizer flags did not reach the build"

# Third-party tools run without the sanitizer runtime: it is there for node
# and the addon, and QEMU's coroutines (swapcontext) hang under it. Each is
# reached through a wrapper, first on PATH, that drops LD_PRELOAD (the tests
# find their tools on PATH: test/helpers/tools.ts).
wrappers=$(mktemp -d)
trap 'rm -rf "$wrappers"' EXIT
for tool in qemu-io qemu-img qemu-nbd nbdinfo nbdcopy nbdfuse nbdsh nbdkit fio etcd etcdctl; do
  real=$(command -v "$tool") || continue
  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %q "$@"\n' "$real" > "$wrappers/$tool"
  chmod +x "$wrappers/$tool"
done
export PATH="$wrappers:$PATH"

export LD_PRELOAD="$runtime"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TORUS_NATIVE_ADDON="$addon"
export TORUS_POOL_POISON=1

if [ $# -eq 0 ]; then
  set -- test/unit test/integration/nbd-clients.test.ts test/integration/nbd-fuzz.test.ts test/integration/peer-fuzz.test.ts \
    test/integration/e2e-clients.test.ts test/integration/e2e-durability.test.ts test/integration/e2e-two-peers.test.ts
fi
echo "test:asan: addon $addon, runtime $runtime"
npx --no-install vitest run "$@"
