#!/bin/sh
# The torusd container's entrypoint: maps the Torus environment variables
# (the names CoreOS Torus's DaemonSet used) onto torusd's flags, installs the
# FlexVolume driver into the node's plugin folder when DROP_MOUNT_BIN=1, then
# runs torusd in its place. Arguments to the container go to torusd as well.
#
# Read here, with their defaults:
#   ETCD_HOST=127.0.0.1  ETCD_PORT=2379    -> --etcd HOST:PORT
#   STORAGE_SIZE=2GiB                      -> --size
#   LISTEN_HOST=127.0.0.1                  -> --host (HTTP listener)
#   PEER_ADDRESS=http://$LISTEN_HOST:40000 -> --peer-address
#   LISTEN_HTTP_PORT=4321                  -> --port
#   AUTO_JOIN=0  DEBUG_INIT=0  DEBUG=0     -> --auto-join, --debug-init, --debug
#   DROP_MOUNT_BIN=0                       -> 1 copies the driver to
#                                             $TORUS_PLUGIN_DIR/coreos.com~torus/torus
# torus's own:
#   TORUS_DATA_DIR=/data                   -> --data-dir
#   TORUS_FLEX_SOCKET=/run/torus/flex.sock -> --flex-socket (empty: no FlexVolume service)
#   TORUS_FLEX_STATE_DIR=/var/lib/kubelet/plugins/coreos.com~torus -> --flex-state-dir
#   TORUS_CLUSTER_SECRET_FILE              -> --cluster-secret-file
#   TORUS_NODE_NAME                        -> passed on to torusd, which names the
#                                             node so in lock holders ("in use by
#                                             torusd ... on <node>"); default: the
#                                             pod's hostname
#   TORUS_PLUGIN_DIR=/plugin, TORUS_FLEX_DRIVER=/opt/torus/bin/torus-flex, TORUSD=torusd
#     (where the driver goes and comes from, and the torusd to run: tests
#     point them elsewhere)
# Booleans take 1/true/yes/on or 0/false/no/off/empty; anything else stops
# the container with a message rather than being guessed at.
set -eu

say() { printf 'torus-entrypoint: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 2
}

# flag NAME -> exit 0 when the variable NAME is on.
flag() {
  eval "v=\${$1-}"
  case "$v" in
    1 | true | TRUE | True | yes | YES | on | ON) return 0 ;;
    '' | 0 | false | FALSE | False | no | NO | off | OFF) return 1 ;;
    *) die "$1=\"$v\": expected 1 or 0" ;;
  esac
}

LISTEN_HOST=${LISTEN_HOST:-127.0.0.1}
ETCD_HOST=${ETCD_HOST:-127.0.0.1}
ETCD_PORT=${ETCD_PORT:-2379}
STORAGE_SIZE=${STORAGE_SIZE:-2GiB}
LISTEN_HTTP_PORT=${LISTEN_HTTP_PORT:-4321}
PEER_ADDRESS=${PEER_ADDRESS:-http://$LISTEN_HOST:40000}
TORUS_DATA_DIR=${TORUS_DATA_DIR:-/data}
# Unset means the default; set to empty means off.
TORUS_FLEX_SOCKET=${TORUS_FLEX_SOCKET-/run/torus/flex.sock}
TORUS_FLEX_STATE_DIR=${TORUS_FLEX_STATE_DIR:-/var/lib/kubelet/plugins/coreos.com~torus}
TORUS_PLUGIN_DIR=${TORUS_PLUGIN_DIR:-/plugin}
TORUS_FLEX_DRIVER=${TORUS_FLEX_DRIVER:-/opt/torus/bin/torus-flex}
TORUSD=${TORUSD:-torusd}
TORUS_NODE_NAME=${TORUS_NODE_NAME:-}
export TORUS_NODE_NAME

case "$ETCD_HOST" in
  *:*) die "ETCD_HOST=\"$ETCD_HOST\" holds a port: put the port in ETCD_PORT" ;;
esac
if [ -n "${LOG_FLAGS-}" ]; then
  say "LOG_FLAGS is not used by torus (Torus's capnslog setting); DEBUG=1 turns on debug logs"
fi

# Check every boolean before acting on any of them.
for v in AUTO_JOIN DEBUG_INIT DEBUG DROP_MOUNT_BIN; do
  flag "$v" || true
done

if flag DROP_MOUNT_BIN; then
  # kubelet finds <plugin dir>/<vendor>~<driver>/<driver>. Copy, then rename
  # over the old one: kubelet may be running the old driver right now, and a
  # rename never leaves it a half-written file.
  [ -f "$TORUS_FLEX_DRIVER" ] || die "DROP_MOUNT_BIN=1 but the driver $TORUS_FLEX_DRIVER is missing"
  [ -d "$TORUS_PLUGIN_DIR" ] || die "DROP_MOUNT_BIN=1 but $TORUS_PLUGIN_DIR is not mounted (mount kubelet's volume plugin dir there)"
  dest="$TORUS_PLUGIN_DIR/coreos.com~torus"
  mkdir -p "$dest"
  cp "$TORUS_FLEX_DRIVER" "$dest/.torus.new"
  chmod 0755 "$dest/.torus.new"
  mv -f "$dest/.torus.new" "$dest/torus"
  say "installed the FlexVolume driver as $dest/torus"
fi

set -- \
  --etcd "$ETCD_HOST:$ETCD_PORT" \
  --data-dir "$TORUS_DATA_DIR" \
  --size "$STORAGE_SIZE" \
  --peer-address "$PEER_ADDRESS" \
  --host "$LISTEN_HOST" \
  --port "$LISTEN_HTTP_PORT" \
  "$@"
if [ -n "$TORUS_FLEX_SOCKET" ]; then
  set -- "$@" --flex-socket "$TORUS_FLEX_SOCKET" --flex-state-dir "$TORUS_FLEX_STATE_DIR"
fi
if [ -n "${TORUS_CLUSTER_SECRET_FILE-}" ]; then set -- "$@" --cluster-secret-file "$TORUS_CLUSTER_SECRET_FILE"; fi
if flag AUTO_JOIN; then set -- "$@" --auto-join; fi
if flag DEBUG_INIT; then set -- "$@" --debug-init; fi
if flag DEBUG; then set -- "$@" --debug; fi

exec "$TORUSD" "$@"
