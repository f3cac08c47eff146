#!/bin/bash
# Runs inside the VM. Copies what the scenarios run (the build, the runtime
# node modules, the addon, the guest scripts) from the 9p share into the
# guest's tmpfs once: under emulation every file open over 9p is a slow round
# trip, and each torusd start opens hundreds of module files. Then runs the
# scenarios from the copy; results go back to the checkout.
#   stage.sh [SCRIPT [ARGS...]]   SCRIPT under test/vm/guest/, default scenarios.mjs
set -euo pipefail
script=${1:-scenarios.mjs}
[ $# -gt 0 ] && shift
src=$(pwd -P)
app=/tmp/torus-app
started=$(date +%s)
mkdir -p "$app"
tar -C "$src" -cf - \
  --exclude=node_modules/typescript --exclude=node_modules/@esbuild --exclude=node_modules/esbuild \
  --exclude=node_modules/rollup --exclude=node_modules/@rollup --exclude=node_modules/vite --exclude=node_modules/vitest \
  --exclude=node_modules/@vitest --exclude=node_modules/@types --exclude='*.map' \
  package.json dist node_modules native/build/Release/torus_native.node test/vm/guest | tar -C "$app" -xf -
echo "stage: copied the build into the guest in $(( $(date +%s) - started )) s"
cd "$app"
export TORUS_VM_RESULTS="$src/test/vm/last-run.json"
exec node "test/vm/guest/$script" "$@"
