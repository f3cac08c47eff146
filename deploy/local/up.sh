#!/usr/bin/env bash
# `npm run local`: a one-node torus cluster on this machine. Installs what is
# missing, starts etcd and torusd in the background (state, logs and pids in
# .local/ in the repo), creates the volume and prints how to use it.
# Running it again while the cluster is up only prints the same help.
# Stop it with `npm run local:down` (data is kept; `-- --wipe` deletes it).
#
# Environment (defaults are Torus's ports):
#   TORUS_ETCD_PORT (2379)  TORUS_ETCD_PEER_PORT (2380)
#   TORUS_NBD_PORT (10809)  TORUS_HTTP_PORT (4321)  TORUS_PEER_PORT (40000)
#   TORUS_SIZE (2GiB, torusd --size)
#   TORUS_VOLUME (pad)  TORUS_VOLUME_SIZE (1GiB)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
# shellcheck source=deploy/local/common.sh
. deploy/local/common.sh

VOLUME=${TORUS_VOLUME:-pad}
VOLUME_SIZE=${TORUS_VOLUME_SIZE:-1GiB}
READY_TIMEOUT_S=60

# torusd runs on Node.js 24, the supported runtime, like `npm test`: on a
# machine whose system node is older (Debian 12 ships 18), scripts/node24.sh
# installs it into .tools/node24 and it goes first on PATH.
node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then
  export PATH="$node24_bin:$PATH"
fi
bash scripts/install-deps.sh
mkdir -p "$LOCAL"

started=()
# If this run fails half way, stop what it started so the next run starts clean.
on_exit() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    # Newest first: torusd still talks to etcd while it stops.
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
      say "cleaning up: $(stop_service "${started[i]}")"
    done
  fi
}
trap on_exit EXIT

# --- etcd --------------------------------------------------------------------
if pid=$(service_pid etcd); then
  same_settings etcd "$pid" "http://$ETCD_ENDPOINT"
  say "etcd is already running (pid $pid, $ETCD_ENDPOINT)"
else
  if etcd_healthy; then
    # Someone else's etcd (typically Debian's etcd.service, which installing
    # etcd-server starts on 127.0.0.1:2379): never touched. On the default
    # ports, torus's own etcd moves to the first free pair of 2479/2480,
    # 2579/2580, ...; ports the user chose, or chose before, are kept.
    if [ -n "${TORUS_ETCD_PORT:-}" ] || [ -s "$ETCD_PORTS_FILE" ]; then
      die "an etcd that this script did not start already answers on $ETCD_ENDPOINT." \
        "Stop it, or pick other ports: TORUS_ETCD_PORT=2479 TORUS_ETCD_PEER_PORT=2480 npm run local"
    fi
    foreign=$ETCD_ENDPOINT
    for base in 2479 2579 2679 2779 2879; do
      if ! port_busy "$base" && ! port_busy "$((base + 1))"; then
        ETCD_PORT=$base
        ETCD_PEER_PORT=$((base + 1))
        break
      fi
    done
    [ "$ETCD_PORT" != 2379 ] || die "an etcd that this script did not start already answers on $foreign, and 2479 to 2880 are busy too." \
      "Stop it, or pick other ports: TORUS_ETCD_PORT=... TORUS_ETCD_PEER_PORT=... npm run local"
    ETCD_ENDPOINT=127.0.0.1:$ETCD_PORT
    echo "$ETCD_PORT $ETCD_PEER_PORT" >"$ETCD_PORTS_FILE"
    say "an etcd that this script did not start answers on $foreign (if it is the etcd-server package's, see: systemctl status etcd); it is left alone."
    say "torus's own etcd uses $ETCD_ENDPOINT (peer port $ETCD_PEER_PORT) instead, from now on (.local/etcd.ports): give torusctl -C $ETCD_ENDPOINT"
  fi
  for port in "$ETCD_PORT" "$ETCD_PEER_PORT"; do
    port_busy "$port" && die "port $port is in use by another program; set TORUS_ETCD_PORT / TORUS_ETCD_PEER_PORT"
  done
  etcd_env=()
  [ "$(uname -m)" = aarch64 ] && etcd_env=(ETCD_UNSUPPORTED_ARCH=arm64)
  # setsid: the daemons outlive this script and ignore the terminal's Ctrl-C.
  setsid env "${etcd_env[@]}" etcd --name local --data-dir "$LOCAL/etcd" \
    --listen-client-urls "http://$ETCD_ENDPOINT" --advertise-client-urls "http://$ETCD_ENDPOINT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --log-level warn --logger zap \
    </dev/null >>"$LOCAL/etcd.log" 2>&1 &
  echo $! >"$LOCAL/etcd.pid"
  started+=(etcd)
  wait_ready etcd "$READY_TIMEOUT_S" etcd_healthy
  say "etcd started (pid $(cat "$LOCAL/etcd.pid"), $ETCD_ENDPOINT, data in .local/etcd)"
fi

# --- torusd ------------------------------------------------------------------
if pid=$(service_pid torusd); then
  same_settings torusd "$pid" "--nbd-address 127.0.0.1:$NBD_PORT"
  same_settings torusd "$pid" "--port $HTTP_PORT"
  say "torusd is already running (pid $pid)"
else
  for port in "$NBD_PORT" "$HTTP_PORT" "$PEER_PORT"; do
    port_busy "$port" && die "port $port is in use by another program; set TORUS_NBD_PORT / TORUS_HTTP_PORT / TORUS_PEER_PORT"
  done
  # The log is appended to across runs; readiness is judged on this run's part.
  log_start=$(($(stat -c %s "$LOCAL/torusd.log" 2>/dev/null || echo 0) + 1))
  setsid node dist/cmd/torusd.js -C "$ETCD_ENDPOINT" --data-dir "$LOCAL/torusd-data" \
    --size "${TORUS_SIZE:-2GiB}" --peer-address "127.0.0.1:$PEER_PORT" \
    --host 127.0.0.1 --port "$HTTP_PORT" --nbd-address "127.0.0.1:$NBD_PORT" \
    --auto-join --debug-init \
    </dev/null >>"$LOCAL/torusd.log" 2>&1 &
  echo $! >"$LOCAL/torusd.pid"
  started+=(torusd)
  torusd_ready() {
    tail -c "+$log_start" "$LOCAL/torusd.log" | grep -q '"msg":"torusd ready"' && http_ok "http://127.0.0.1:$HTTP_PORT/healthz"
  }
  wait_ready torusd "$READY_TIMEOUT_S" torusd_ready
  say "torusd started (pid $(cat "$LOCAL/torusd.pid"), data in .local/torusd-data, --size ${TORUS_SIZE:-2GiB})"
fi

# --- volume ------------------------------------------------------------------
TORUSCTL=(node dist/cmd/torusctl.js -C "$ETCD_ENDPOINT")
volumes_json=$("${TORUSCTL[@]}" volume list -o json)
if node -e 'process.exit(JSON.parse(process.argv[1]).volumes.some((v) => v.name === process.argv[2]) ? 0 : 1)' \
  "$volumes_json" "$VOLUME"; then
  say "volume $VOLUME exists"
else
  "${TORUSCTL[@]}" volume create-block "$VOLUME" "$VOLUME_SIZE" >/dev/null
  say "volume $VOLUME created ($VOLUME_SIZE)"
fi
started=()

URI="nbd://127.0.0.1:$NBD_PORT/$VOLUME"
ctl="node dist/cmd/torusctl.js"
[ "$ETCD_PORT" = 2379 ] || ctl="$ctl -C $ETCD_ENDPOINT"
node_note=""
if [ -n "$node24_bin" ]; then
  node_note="
torus runs on Node.js 24 from .tools/node24 (the system node is older); for the
torusctl commands below, put it first on PATH in this shell:
  export PATH=\"$node24_bin:\$PATH\""
fi
cat <<EOF

torus is up: etcd $ETCD_ENDPOINT, NBD 127.0.0.1:$NBD_PORT, HTTP 127.0.0.1:$HTTP_PORT, peer 127.0.0.1:$PEER_PORT
logs: .local/etcd.log .local/torusd.log$node_note

Look at the volume:
  nbdinfo $URI
Write and read it back with qemu-io:
  qemu-io -f raw -c 'write -P 0xab 0 1M' $URI
  qemu-io -f raw -c 'read -P 0xab 0 1M' $URI
Mount it as a file system through FUSE (no kernel NBD module needed):
  mkdir -p /tmp/$VOLUME-fuse /tmp/$VOLUME-mnt
  nbdfuse /tmp/$VOLUME-fuse $URI &        # /tmp/$VOLUME-fuse/nbd is the disk
  mkfs.ext4 -q /tmp/$VOLUME-fuse/nbd
  mount -o loop /tmp/$VOLUME-fuse/nbd /tmp/$VOLUME-mnt
  # ... then: umount /tmp/$VOLUME-mnt; fusermount3 -u /tmp/$VOLUME-fuse
Cluster state:
  $ctl list-peers
  $ctl volume list
  curl -s 127.0.0.1:$HTTP_PORT/v1/status
Stop (data kept in .local/):
  npm run local:down          # or: npm run local:down -- --wipe   to delete the data
EOF
