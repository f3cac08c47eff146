#!/usr/bin/env bash
# Builds the FlexVolume driver (native/flex/torus-flex.c) as one static
# executable, native/build/flex/torus: it runs on a node that has no Node.js
# and no shared libraries (a chroot with only busybox proves it:
# test/integration/flex-driver.test.ts). Run by `npm run build` after
# node-gyp, which empties native/build/ first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CC=${CC:-gcc}
command -v "$CC" >/dev/null 2>&1 || { echo "build-flex: $CC not found: apt-get install gcc libc6-dev" >&2; exit 1; }
out=native/build/flex
mkdir -p "$out"
"$CC" -std=c11 -Os -static -Wall -Wextra -Werror -Wformat=2 -Wshadow -Wconversion \
  -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
  -o "$out/torus.tmp" native/flex/torus-flex.c
strip "$out/torus.tmp" 2>/dev/null || true
mv "$out/torus.tmp" "$out/torus"
