#!/bin/bash
# Runs inside the VM. Copies what the scenarios run (the build, the runtime
# node modules, the addon, the guest scripts) from the 9p share into the
# guest's tmpfs once: under emulation every file open over 9p is a slow round
# trip, and each torusd start opens hundreds of module files. Then runs the
# scenarios from the copy; results go back to the checkout.
#   stage.sh [SCRIPT [ARGS...]]   SCRIPT under test/vm/guest/, default scenarios.mjs
#   stage.sh --pack FILE          (on the host) writes that copy as one tar file;
#                                 with TORUS_VM_STAGE_TAR=FILE the guest unpacks
#                                 it instead: one sequential 9p read instead of
#                                 thousands of opens (minutes on a busy host).
#                                 Every VM suite does this (test/vm/*.sh).
# Node's compile cache (NODE_COMPILE_CACHE) goes to the guest's tmpfs: the
# first node process compiles torus and its dependencies, the later ones
# (each torusd, torusctl, torusblk start) load the cache. Under emulation
# compiling is most of a start.
set -euo pipefail
pack() {
  tar -C "$1" -cf - \
    --exclude=node_modules/typescript --exclude=node_modules/@esbuild --exclude=node_modules/esbuild \
    --exclude=node_modules/rollup --exclude=node_modules/@rollup --exclude=node_modules/vite --exclude=node_modules/vitest \
    --exclude=node_modules/@vitest --exclude=node_modules/@types --exclude=node_modules/kubernetes-models --exclude='*.map' \
    package.json dist node_modules native/build/Release/torus_native.node native/build/flex/torus \
    src/k8s/csi/csi.proto test/vm/guest test/bench/lib/copies.mjs
}
if [ "${1-}" = "--pack" ]; then
  pack "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd -P)" >"$2.part"
  mv "$2.part" "$2"
  exit 0
fi
script=${1:-scenarios.mjs}
[ $# -gt 0 ] && shift
src=$(pwd -P)
app=/tmp/torus-app
started=$(date +%s)
mkdir -p "$app"
if [ -n "${TORUS_VM_STAGE_TAR:-}" ]; then
  tar -C "$app" -xf "$TORUS_VM_STAGE_TAR"
else
  pack "$src" | tar -C "$app" -xf -
fi
echo "stage: copied the build into the guest in $(( $(date +%s) - started )) s"
cd "$app"
export NODE_COMPILE_CACHE=/tmp/torus-node-compile-cache
export TORUS_VM_RESULTS="$src/test/vm/last-run.json"
exec node "test/vm/guest/$script" "$@"
