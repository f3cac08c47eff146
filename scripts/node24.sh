#!/usr/bin/env bash
# Node.js 24 (the supported runtime; Node 20 reached end of life in April
# 2026) for machines whose system node is older, such as Debian 12 with
# Node 20. Installs the official binary that the npm registry carries as
# node-linux-<arch>@<version> into .tools/node24/ (gitignored), with no
# network but the registry. Idempotent and quiet when there is nothing to do.
#
#   bash scripts/node24.sh          # installs when needed
#   bash scripts/node24.sh --bin    # also prints the bin folder to put first on PATH
#                                   # (nothing when the system node is 24 or newer)
# test/run.sh (npm test, CI) uses it, so every test run is on Node 24.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned so that every machine tests on the same build; bump deliberately.
NODE24_VERSION=24.22.3
DEST=.tools/node24

say() { printf 'node24: %s\n' "$*" >&2; }
die() {
  printf 'node24: error: %s\n' "$*" >&2
  exit 1
}

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -ge 24 ]; then
  exit 0
fi

case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) die "no node-linux package for $(uname -m): install Node.js 24 yourself" ;;
esac

if [ ! -x "$DEST/bin/node" ] || [ "$("$DEST/bin/node" --version 2>/dev/null)" != "v$NODE24_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch node-linux-$arch@$NODE24_VERSION"
  say "installing Node.js $NODE24_VERSION into $DEST (system node is $(node --version 2>/dev/null || echo none))"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # npm pack checks the tarball against the registry's integrity hash.
  (cd "$tmp" && npm pack --silent "node-linux-$arch@$NODE24_VERSION" >/dev/null) || die "npm pack node-linux-$arch@$NODE24_VERSION failed"
  mkdir -p "$tmp/x"
  tar -xzf "$tmp"/node-linux-"$arch"-*.tgz -C "$tmp/x"
  rm -rf "$DEST.new"
  mkdir -p "$DEST.new"
  # bin/node, and include/node: the headers node-gyp builds the addon against.
  cp -a "$tmp/x/package/bin" "$tmp/x/package/include" "$DEST.new/"
  chmod 0755 "$DEST.new/bin/node"
  got=$("$DEST.new/bin/node" --version) || die "the downloaded node does not run"
  [ "$got" = "v$NODE24_VERSION" ] || die "the downloaded node is $got, not v$NODE24_VERSION"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
fi

if [ "${1-}" = "--bin" ]; then
  printf '%s\n' "$PWD/$DEST/bin"
fi
