#!/usr/bin/env bash
# Brings a Debian 12 machine (or a fresh clone) to the point where torus builds
# and its tests run: the third-party tools the tests drive, node_modules, and
# the compiled output (dist/ and the native addon). Idempotent: each step runs
# only when something is missing or stale, and prints one line when it does.
# Silent when there is nothing to do.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'install-deps: %s\n' "$*"; }
die() {
  printf 'install-deps: error: %s\n' "$*" >&2
  exit 1
}

# Runs a noisy command with its output kept aside. If it fails, the output is
# kept: its error lines are shown (a package's postinst error may come long
# before apt's closing lines), then its tail, then where the whole log is.
run_quiet() {
  local what=$1
  shift
  local log code=0 errors
  log=$(mktemp "${TMPDIR:-/tmp}/install-deps.XXXXXX.log")
  "$@" >"$log" 2>&1 || code=$?
  if [ "$code" -ne 0 ]; then
    printf 'install-deps: %s failed (exit status %s)\n' "$what" "$code" >&2
    errors=$(grep -n -i -E '(^E: |error|fatal|failed|exit status)' "$log" | head -n 30 || true)
    if [ -n "$errors" ]; then
      printf 'install-deps: its error lines (line number: text):\n%s\n' "$errors" >&2
    fi
    printf 'install-deps: its last 40 lines:\n' >&2
    tail -n 40 "$log" >&2
    printf 'install-deps: the whole output is kept in %s\n' "$log" >&2
    exit 1
  fi
  rm -f "$log"
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi

# Looks a tool up on PATH and in the sbin directories (not on a user's PATH).
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# --- 1. Debian packages -------------------------------------------------------
# command:package pairs; a package is installed when one of its commands is missing.
TOOLS=(
  etcd:etcd-server
  etcdctl:etcd-client
  nbdinfo:libnbd-bin
  nbdcopy:libnbd-bin
  nbdfuse:libnbd-bin
  qemu-io:qemu-utils
  qemu-img:qemu-utils
  qemu-nbd:qemu-utils
  fio:fio
  nbdkit:nbdkit
  mkfs.ext4:e2fsprogs
  mkfs.xfs:xfsprogs
  dmsetup:dmsetup
  fusermount3:fuse3
  nbd-client:nbd-client
  nbd-server:nbd-server
  busybox:busybox-static
  gcc:gcc
  g++:g++
  ip:iproute2
  nft:nftables
  file:file
)
missing_pkgs=()
for pair in "${TOOLS[@]}"; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! have "$cmd" && [[ " ${missing_pkgs[*]-} " != *" $pkg "* ]]; then
    missing_pkgs+=("$pkg")
  fi
done
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
    die "missing packages ${missing_pkgs[*]}, and not root and no sudo: install them with apt-get"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    die "missing packages ${missing_pkgs[*]}, and apt-get is not available (torus targets Debian 12)"
  fi
  say "installing apt packages: ${missing_pkgs[*]}"
  run_quiet "apt-get update" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  run_quiet "apt-get install" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"
  for pair in "${TOOLS[@]}"; do
    have "${pair%%:*}" || die "${pair%%:*} is still missing after installing ${pair#*:}"
  done
  # etcd-server's postinst enables and starts etcd.service, an etcd on
  # 127.0.0.1:2379: the port of `npm run local`'s own etcd. Only when this run
  # installed the package (it was not there a moment ago, so that etcd holds
  # nothing), stop it and keep it from starting at boot. An etcd-server that
  # was already installed is never touched (deploy/local/up.sh then puts its
  # own etcd on other ports).
  if [[ " ${missing_pkgs[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ] &&
    command -v systemctl >/dev/null 2>&1; then
    if "${SUDO[@]}" systemctl disable --now etcd.service >/dev/null 2>&1; then
      say "stopped and disabled etcd.service, which installing etcd-server started on 127.0.0.1:2379:" \
        "torus starts its own etcd (npm run local, the tests); 'systemctl enable --now etcd' undoes this"
    else
      say "warning: could not stop etcd.service, which installing etcd-server started on 127.0.0.1:2379;" \
        "npm run local will put its own etcd on other ports"
    fi
  fi
fi

# --- 2. Kernel features some integration tests use (reported, not fixed) -------
if [ ! -e /dev/fuse ]; then
  if command -v modprobe >/dev/null 2>&1; then
    "${SUDO[@]}" modprobe fuse >/dev/null 2>&1 || true
  fi
  [ -e /dev/fuse ] || say "warning: /dev/fuse is missing (modprobe fuse did not help): FUSE (nbdfuse) tests will fail"
fi
if ! { [ -e /dev/loop-control ] && losetup --find >/dev/null 2>&1; }; then
  say "warning: no free loop device (/dev/loop-control, losetup --find): mount -o loop tests will fail"
fi

# --- 3. Node.js 24 and node_modules ----------------------------------------------------
# Builds and installs on the project's Node 24 toolchain (node, npm, node-gyp)
# whoever runs this script: on a machine whose system node is older,
# scripts/node24.sh installs it and it goes first on PATH (test/run.sh and
# deploy/local/up.sh do the same for what they run after).
node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then
  export PATH="$node24_bin:$PATH"
  # Set by the system's npm when it runs us (npm test, npm run local): its own
  # node-gyp, which npm 11 would otherwise use for any dependency's native
  # build. Debian's links libnode (scripts/build-addon.sh says why that crashes).
  unset npm_config_node_gyp
fi
if [ ! -d node_modules ] || [ ! -e node_modules/.package-lock.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing node modules (npm ci)"
  # npm ci only: a lock file out of step with package.json is a bug to fix
  # (test/unit/lockfile.test.ts), never papered over with npm install.
  run_quiet "npm ci" npm ci --no-audit --no-fund
fi

# --- 4. Build (TypeScript to dist/, native addon) --------------------------------------
# scripts/build-addon.sh (npm run build) builds the addon with the node-gyp and
# the headers of the node on PATH, and refuses an addon that links libnode.

STAMP=dist/.build-stamp
ADDON=native/build/Release/torus_native.node
FLEX=native/build/flex/torus
need_build=""
if [ ! -e "$STAMP" ] || [ ! -e "$ADDON" ] || [ ! -e "$FLEX" ]; then
  need_build="dist/, the native addon or the FlexVolume driver is missing"
else
  inputs=()
  for p in cmd src native package.json package-lock.json tsconfig.json; do
    [ -e "$p" ] && inputs+=("$p")
  done
  newer=$(find "${inputs[@]}" -path native/build -prune -o -type f -newer "$STAMP" -print -quit)
  [ -n "$newer" ] && need_build="sources changed since the last build"
  # An addon built by Debian's node-gyp (before scripts/build-addon.sh) links
  # libnode and crashes Node 24.
  [ -z "$need_build" ] && ! bash scripts/build-addon.sh --check &&
    need_build="the native addon links libnode (built by Debian's node-gyp)"
fi
if [ -n "$need_build" ]; then
  say "building with npm run build ($need_build)"
  run_quiet "npm run build" npm run build
  [ -e "$ADDON" ] || die "npm run build did not produce $ADDON"
  [ -e "$FLEX" ] || die "npm run build did not produce $FLEX"
  touch "$STAMP"
fi
