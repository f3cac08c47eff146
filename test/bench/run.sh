#!/usr/bin/env bash
# `npm run bench`: the same fio jobs against a torusd volume and against
# nbdkit's file plugin (the reference NBD server, default threading), both
# backed by the same disk, then a comparison table and
# test/bench/results/latest.json.
#
# Environment:
#   BENCH_SECONDS  seconds per timed fio job (default 20)
#   BENCH_DIR      parent of the per-run work folder (default .local/bench in
#                  the repo). The run folder is removed at the end; after a
#                  failure its logs and fio output stay.
#   BENCH_KEEP=1   keep the whole run folder (logs, fio JSON, data files)
#   BENCH_TORUS_SIZE  torusd --size (default 4GiB)
#
# Every process started here is stopped on exit, failure or Ctrl-C. Ports
# are free ones picked at start; none is fixed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)

SECONDS_PER_JOB=${BENCH_SECONDS:-20}
[[ $SECONDS_PER_JOB =~ ^[1-9][0-9]*$ ]] || {
  echo "bench: BENCH_SECONDS must be a positive integer, got '$SECONDS_PER_JOB'" >&2
  exit 2
}
TORUS_SIZE=${BENCH_TORUS_SIZE:-4GiB}
TARGET_SIZE=1g # fio --size; also the volume size and the nbdkit file size
VOLUME=bench
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=15

say() { printf 'bench: %s\n' "$*"; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

bash scripts/install-deps.sh

BENCH_ROOT=${BENCH_DIR:-$REPO/.local/bench}
mkdir -p "$BENCH_ROOT"
WORK=$(mktemp -d "$BENCH_ROOT/run-XXXXXX")
mkdir -p "$WORK/fio"

ETCD_PID=""
TORUSD_PID=""
NBDKIT_PID=""

# SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT_S.
stop_pid() {
  local name=$1 pid=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_pid torusd "$TORUSD_PID"
  stop_pid nbdkit "$NBDKIT_PID"
  stop_pid etcd "$ETCD_PID"
  if [ "${BENCH_KEEP:-}" = 1 ]; then
    say "run folder kept: $WORK"
  elif [ "$code" -ne 0 ]; then
    # Keep what explains the failure, not the gigabytes of data.
    rm -rf "$WORK/etcd" "$WORK/torusd-data" "$WORK/nbdkit.img"
    say "logs and fio output kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls CMD... until it succeeds; fails early if PID exits, or after TIMEOUT_S.
wait_until() {
  local what=$1 pid=$2 log=$3 timeout_s=$4
  shift 4
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 || true
      die "$what exited before it was ready (log above, $log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$log" >&2 || true
      die "$what was not ready within ${timeout_s}s (log above, $log)"
    fi
    sleep 0.1
  done
}

# True when URL answers 2xx and its body contains SUBSTRING.
http_has() {
  node -e '
    fetch(process.argv[1], { signal: AbortSignal.timeout(1000) })
      .then(async (r) => process.exit(r.ok && (await r.text()).includes(process.argv[2]) ? 0 : 1))
      .catch(() => process.exit(1));
  ' "$1" "$2"
}

peak_rss_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

mapfile -t PORTS < <(node test/bench/free-port.mjs 4)
ETCD_CLIENT_PORT=${PORTS[0]}
ETCD_PEER_PORT=${PORTS[1]}
TORUS_NBD_PORT=${PORTS[2]}
NBDKIT_PORT=${PORTS[3]}
ETCD=127.0.0.1:$ETCD_CLIENT_PORT

say "work folder $WORK ($(df -h --output=avail "$WORK" | tail -n 1 | tr -d ' ') free on its disk)"

# --- etcd --------------------------------------------------------------------
etcd_env=()
[ "$(uname -m)" = aarch64 ] && etcd_env=(ETCD_UNSUPPORTED_ARCH=arm64)
env "${etcd_env[@]}" etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
  --log-level error --logger zap >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
wait_until etcd "$ETCD_PID" "$WORK/etcd.log" "$READY_TIMEOUT_S" \
  http_has "http://$ETCD/health" '"health":"true"'
say "etcd ready on $ETCD (pid $ETCD_PID)"

# --- torusd ------------------------------------------------------------------
node dist/cmd/torusd.js -C "$ETCD" --data-dir "$WORK/torusd-data" --size "$TORUS_SIZE" \
  --peer-address 127.0.0.1:0 --port 0 --nbd-address "127.0.0.1:$TORUS_NBD_PORT" \
  --auto-join --debug-init >"$WORK/torusd.log" 2>&1 &
TORUSD_PID=$!
wait_until torusd "$TORUSD_PID" "$WORK/torusd.log" "$READY_TIMEOUT_S" \
  grep -q '"msg":"torusd ready"' "$WORK/torusd.log"
say "torusd ready, NBD on 127.0.0.1:$TORUS_NBD_PORT (pid $TORUSD_PID, --size $TORUS_SIZE)"
node dist/cmd/torusctl.js -C "$ETCD" volume create-block "$VOLUME" 1GiB >/dev/null
TORUS_URI="nbd://127.0.0.1:$TORUS_NBD_PORT/$VOLUME"

# --- nbdkit (reference) ------------------------------------------------------
truncate -s 1G "$WORK/nbdkit.img"
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$NBDKIT_PORT" file "$WORK/nbdkit.img" \
  >"$WORK/nbdkit.log" 2>&1 &
NBDKIT_PID=$!
NBDKIT_URI="nbd://127.0.0.1:$NBDKIT_PORT/"
wait_until nbdkit "$NBDKIT_PID" "$WORK/nbdkit.log" "$READY_TIMEOUT_S" nbdinfo --size "$NBDKIT_URI"
say "nbdkit ready on 127.0.0.1:$NBDKIT_PORT (pid $NBDKIT_PID)"

# --- fio ---------------------------------------------------------------------
# run_fio TARGET URI JOB [fio options...]
run_fio() {
  local target=$1 uri=$2 job=$3
  shift 3
  local out="$WORK/fio/$target-$job.json"
  # Each job starts with no writeback pending: the jobs alternate between
  # targets, and the previous job's dirty pages would otherwise be written
  # back during this one.
  sync
  if ! fio --name="$job" --ioengine=nbd --uri="$uri" --size="$TARGET_SIZE" \
    --output-format=json --output="$out" "$@" >"$WORK/fio/$target-$job.stdout" 2>&1; then
    cat "$WORK/fio/$target-$job.stdout" >&2 || true
    if ! kill -0 "$TORUSD_PID" 2>/dev/null; then
      tail -n 5 "$WORK/torusd.log" >&2 || true
      die "torusd is gone (last log lines above); fio job $job against $target failed"
    fi
    die "fio job $job against $target failed (fio output above; JSON in $out)"
  fi
}

TIMED=(--time_based "--runtime=$SECONDS_PER_JOB")
# name|fio options. Reads of blocks never written are holes in torus, so the
# prefill (one sequential pass over the whole 1 GiB, not time based) comes
# first and the read jobs follow it.
JOBS=(
  "prefill-write-1m-qd4|--rw=write --bs=1M --iodepth=4"
  "randread-4k-qd16|--rw=randread --bs=4k --iodepth=16 ${TIMED[*]}"
  "seqread-1m-qd4|--rw=read --bs=1M --iodepth=4 ${TIMED[*]}"
  "randwrite-4k-qd16|--rw=randwrite --bs=4k --iodepth=16 ${TIMED[*]}"
  "randwrite-4k-qd16-fsync32|--rw=randwrite --bs=4k --iodepth=16 --fsync=32 ${TIMED[*]}"
  "seqwrite-1m-qd4|--rw=write --bs=1M --iodepth=4 ${TIMED[*]}"
)
job_names=()
for spec in "${JOBS[@]}"; do
  name=${spec%%|*}
  read -r -a opts <<<"${spec#*|}"
  job_names+=("$name")
  # Alternate the targets job by job so both see the same machine state.
  say "fio $name: torusd"
  run_fio torusd "$TORUS_URI" "$name" "${opts[@]}"
  say "fio $name: nbdkit"
  run_fio nbdkit "$NBDKIT_URI" "$name" "${opts[@]}"
done

TORUSD_RSS=$(peak_rss_kib "$TORUSD_PID")
NBDKIT_RSS=$(peak_rss_kib "$NBDKIT_PID")
kill -0 "$TORUSD_PID" 2>/dev/null || die "torusd exited during the run (log: $WORK/torusd.log)"

echo
node test/bench/fio-summary.mjs --fio-dir "$WORK/fio" --jobs "$(IFS=,; echo "${job_names[*]}")" \
  --targets torusd,nbdkit --rss-kib "torusd=$TORUSD_RSS,nbdkit=$NBDKIT_RSS" \
  --bench-dir "$WORK" --seconds "$SECONDS_PER_JOB" --out test/bench/results/latest.json
