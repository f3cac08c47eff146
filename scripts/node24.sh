#!/usr/bin/env bash
# Node.js 24 (the supported runtime; Node 20 reached end of life in April
# 2026) for machines whose system node is older, such as Debian 12, which
# ships Node 18.20.4. Installs a complete Node 24 toolchain into
# .tools/node24/ (gitignored), with no network but the npm registry:
#   - bin/node and include/node (the headers the addon builds against): the
#     official binary that the registry carries as node-linux-<arch>@<version>;
#   - npm of the version that this Node release ships with (npm@<version>,
#     with its bundled node-gyp) in lib/node_modules/npm, and bin/npm and
#     bin/npx, which run it on this node.
# With bin/ first on PATH, node, npm, npx and node-gyp are all Node 24's. The
# system's npm must not build the addon: Debian's npm runs Debian's node-gyp,
# which links every addon with -lnode (libnode.so.108, Node 18's runtime),
# and such an addon loads a second Node into a Node 24 process, which then
# crashes (free(): invalid pointer). scripts/build-addon.sh uses the node-gyp
# next to the node on PATH and refuses an addon that links libnode.
# Idempotent and quiet when there is nothing to do.
#
#   bash scripts/node24.sh          # installs when needed
#   bash scripts/node24.sh --bin    # also prints the bin folder to put first on PATH
#                                   # (nothing when the system node is 24 or newer)
# test/run.sh (npm test, CI), deploy/local/up.sh (npm run local) and
# scripts/install-deps.sh use it, so every build, test run and local cluster
# is on Node 24.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned so that every machine tests on the same build; bump deliberately.
# NPM_VERSION: the npm that Node $NODE24_VERSION ships with (its CHANGELOG.md,
# "deps: upgrade npm to ..."); bump the two together.
NODE24_VERSION=24.22.3
NPM_VERSION=11.19.1
DEST=.tools/node24
# Written last: what a complete install holds.
MARK="node $NODE24_VERSION npm $NPM_VERSION"

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

if [ ! -x "$DEST/bin/node" ] || [ ! -x "$DEST/bin/npm" ] || [ "$(cat "$DEST/.installed" 2>/dev/null)" != "$MARK" ]; then
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch node-linux-$arch@$NODE24_VERSION and npm@$NPM_VERSION"
  say "installing Node.js $NODE24_VERSION and npm $NPM_VERSION into $DEST (system node is $(node --version 2>/dev/null || echo none))"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # npm pack checks each tarball against the registry's integrity hash.
  (cd "$tmp" && npm pack --silent "node-linux-$arch@$NODE24_VERSION" >/dev/null) || die "npm pack node-linux-$arch@$NODE24_VERSION failed"
  (cd "$tmp" && npm pack --silent "npm@$NPM_VERSION" >/dev/null) || die "npm pack npm@$NPM_VERSION failed"
  mkdir -p "$tmp/node" "$tmp/npm"
  tar -xzf "$tmp"/node-linux-"$arch"-*.tgz -C "$tmp/node"
  tar -xzf "$tmp/npm-$NPM_VERSION.tgz" -C "$tmp/npm"
  rm -rf "$DEST.new"
  mkdir -p "$DEST.new/lib/node_modules"
  # bin/node, and include/node: the headers node-gyp builds the addon against.
  cp -a "$tmp/node/package/bin" "$tmp/node/package/include" "$DEST.new/"
  chmod 0755 "$DEST.new/bin/node"
  # npm's tarball carries its dependencies (node-gyp among them).
  mv "$tmp/npm/package" "$DEST.new/lib/node_modules/npm"
  [ -f "$DEST.new/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js" ] || die "npm@$NPM_VERSION has no bundled node-gyp"
  # npm reads the same global npmrc as the system's npm (Debian's: /etc/npmrc,
  # where a proxy, registry or CA file would be set), not .tools/node24/etc/npmrc.
  sys_globalconfig=$(npm config get globalconfig 2>/dev/null || true)
  if [[ $sys_globalconfig == /* ]]; then
    printf 'globalconfig=%s\n' "$sys_globalconfig" >"$DEST.new/lib/node_modules/npm/npmrc"
  fi
  # Wrappers rather than the usual symlinks: npm-cli.js starts with
  # `#!/usr/bin/env node`, which would run npm on the system's node when
  # bin/ is not first on PATH.
  for tool in npm npx; do
    cat >"$DEST.new/bin/$tool" <<WRAPPER
#!/bin/sh
# $tool $NPM_VERSION on Node.js $NODE24_VERSION (scripts/node24.sh)
here=\$(dirname "\$(readlink -f "\$0")")
exec "\$here/node" "\$here/../lib/node_modules/npm/bin/$tool-cli.js" "\$@"
WRAPPER
    chmod 0755 "$DEST.new/bin/$tool"
  done
  got=$("$DEST.new/bin/node" --version) || die "the downloaded node does not run"
  [ "$got" = "v$NODE24_VERSION" ] || die "the downloaded node is $got, not v$NODE24_VERSION"
  got=$("$DEST.new/bin/npm" --version) || die "the downloaded npm does not run"
  [ "$got" = "$NPM_VERSION" ] || die "the downloaded npm is $got, not $NPM_VERSION"
  printf '%s\n' "$MARK" >"$DEST.new/.installed"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
fi

if [ "${1-}" = "--bin" ]; then
  printf '%s\n' "$PWD/$DEST/bin"
fi
