#!/usr/bin/env bash
# Builds the native addon (native/, node-gyp) for the node first on PATH, with
# the node-gyp of that node's own npm and that node's own headers, whatever
# npm runs `npm run build`. Run by `npm run build`.
#
# Why not the node-gyp npm offers: Debian's npm runs Debian's node-gyp (it
# also exports it as npm_config_node_gyp to every script below it, so a
# Node 24 npm started from there would use it too), and Debian's node-gyp
# links every addon with -lnode: libnode.so.108, Node 18's runtime. Loaded
# by Node 24, such an addon brings a second Node runtime into the process,
# which crashes (free(): invalid pointer, corrupted size vs. prev_size). So
# the build fails with one line when the addon links libnode, and deletes it.
#
#   bash scripts/build-addon.sh              # build, then check
#   bash scripts/build-addon.sh --check      # only check: exit 1 when the built addon links libnode
#   bash scripts/build-addon.sh --sanitize   # an AddressSanitizer + UBSan build into native/build/asan
#                                            # (for `npm run test:asan`; the normal build is untouched)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SRC=native
ADDON=native/build/Release/torus_native.node
if [ "${1-}" = "--sanitize" ]; then
  # node-gyp builds in <dir>/build: a copy of the sources under the ignored
  # native/build, so node-addon-api still resolves from the project.
  SRC=native/build/asan
  rm -rf "$SRC"
  mkdir -p "$SRC"
  cp -r native/binding.gyp native/src "$SRC/"
  ADDON=$SRC/build/Release/torus_native.node
  # Appended by the generated Makefile to binding.gyp's flags; every error is
  # fatal, so a test run that hits one fails.
  export CXXFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
  export LDFLAGS="-fsanitize=address,undefined"
fi

die() {
  printf 'build-addon: error: %s\n' "$*" >&2
  exit 1
}

# Prints the libnode shared libraries FILE needs (nothing when none).
libnode_needed() {
  if command -v readelf >/dev/null 2>&1; then
    readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(libnode\.so[^]]*\)\].*/\1/p'
  else
    LC_ALL=C grep -ao 'libnode\.so[.0-9]*' "$1" | sort -u || true
  fi
}

if [ "${1-}" = "--check" ]; then
  [ -e "$ADDON" ] || exit 0
  [ -z "$(libnode_needed "$ADDON")" ]
  exit
fi

node_bin=$(command -v node) || die "node is not on PATH"
node_home=$(dirname "$(dirname "$(readlink -f "$node_bin")")")
args=(rebuild --directory "$SRC" --silent)
# The running node's own headers (.tools/node24/include/node for the
# project's Node 24): no download, and never another version's.
if [ -f "$node_home/include/node/node.h" ]; then
  args+=("--nodedir=$node_home")
fi
gyp=$node_home/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js
if [ -f "$gyp" ]; then
  # The node-gyp bundled with this node's npm: .tools/node24 (scripts/node24.sh),
  # an official or NodeSource install, nvm.
  node "$gyp" "${args[@]}"
elif command -v node-gyp >/dev/null 2>&1; then
  # A node without its npm next to it (Debian's): whatever node-gyp npm put on
  # PATH; the check below refuses the result if it links libnode.
  gyp=${npm_config_node_gyp:-$(command -v node-gyp)}
  node-gyp "${args[@]}"
else
  die "no node-gyp: $node_bin has no npm next to it and node-gyp is not on PATH; use Node 24: export PATH=\"\$(bash scripts/node24.sh --bin):\$PATH\""
fi

[ -e "$ADDON" ] || die "node-gyp did not produce $ADDON"
lib=$(libnode_needed "$ADDON")
if [ -n "$lib" ]; then
  rm -f "$ADDON"
  die "$ADDON linked ${lib//$'\n'/ } (a second Node runtime; built by node-gyp $gyp: Debian's adds -lnode), so it was deleted: build with Node 24's own npm: export PATH=\"\$(bash scripts/node24.sh --bin):\$PATH\" && npm run build"
fi
