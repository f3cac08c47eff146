# Shared by deploy/local/up.sh and down.sh (sourced, with the repo as the
# working directory): settings, pid files and readiness checks.

LOCAL=$REPO/.local
# etcd's ports: TORUS_ETCD_PORT / TORUS_ETCD_PEER_PORT when set, else the pair
# up.sh chose because an etcd it did not start held 2379 (.local/etcd.ports,
# kept with the data until `npm run local:down -- --wipe`), else 2379 / 2380.
ETCD_PORTS_FILE=$LOCAL/etcd.ports
ETCD_PORT=${TORUS_ETCD_PORT:-2379}
ETCD_PEER_PORT=${TORUS_ETCD_PEER_PORT:-2380}
if [ -z "${TORUS_ETCD_PORT:-}" ] && [ -s "$ETCD_PORTS_FILE" ]; then
  read -r ETCD_PORT ETCD_PEER_PORT <"$ETCD_PORTS_FILE" || true
fi
NBD_PORT=${TORUS_NBD_PORT:-10809}
HTTP_PORT=${TORUS_HTTP_PORT:-4321}
PEER_PORT=${TORUS_PEER_PORT:-40000}
ETCD_ENDPOINT=127.0.0.1:$ETCD_PORT
STOP_TIMEOUT_S=20

say() { printf 'local: %s\n' "$*"; }
die() {
  printf 'local: error: %s\n' "$1" >&2
  shift
  for line in "$@"; do printf '       %s\n' "$line" >&2; done
  exit 1
}

# What a service's command line must contain, so a pid file left over from a
# reboot never makes us signal an unrelated process that got the same pid.
service_signature() {
  case $1 in
    etcd) echo "--data-dir $LOCAL/etcd" ;;
    torusd) echo "torusd.js" ;;
  esac
}

# Prints the pid of a running service started by up.sh; fails if there is none.
service_pid() {
  local file="$LOCAL/$1.pid" pid cmdline
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *"$(service_signature "$1")"* ]] || return 1
  echo "$pid"
}

# Fails when the running service was started with other ports than this
# run asks for (TORUS_*_PORT changed while it was up).
same_settings() {
  local name=$1 pid=$2 expected=$3 cmdline
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
  [[ $cmdline == *"$expected "* ]] && return 0
  die "$name from .local is already running (pid $pid) with other settings than this run asks for ($expected)." \
    "Stop it first with: npm run local:down"
}

# SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL. Removes the pid file.
stop_service() {
  local name=$1 pid
  if ! pid=$(service_pid "$name"); then
    rm -f "$LOCAL/$name.pid"
    echo "$name was not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    echo "$name (pid $pid) did not stop within ${STOP_TIMEOUT_S}s of SIGTERM; killed it"
  else
    echo "$name stopped (pid $pid)"
  fi
  rm -f "$LOCAL/$name.pid"
}

# True when URL answers 2xx (and, given SUBSTRING, its body contains it).
http_ok() {
  node -e '
    fetch(process.argv[1], { signal: AbortSignal.timeout(1000) })
      .then(async (r) => process.exit(r.ok && (await r.text()).includes(process.argv[2] ?? "") ? 0 : 1))
      .catch(() => process.exit(1));
  ' "$@"
}

etcd_healthy() { http_ok "http://$ETCD_ENDPOINT/health" '"health":"true"'; }

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_busy() {
  node -e '
    const s = require("node:net").connect(Number(process.argv[1]), "127.0.0.1");
    s.setTimeout(1000, () => process.exit(1));
    s.on("connect", () => process.exit(0));
    s.on("error", () => process.exit(1));
  ' "$1"
}

# Polls CHECK... until it succeeds; fails with the log's tail if the service
# exits or TIMEOUT_S passes.
wait_ready() {
  local name=$1 timeout_s=$2
  shift 2
  local deadline=$((SECONDS + timeout_s))
  # The pid file is written as soon as bash forks, before the child has
  # exec'd the daemon: until then its command line is up.sh's, and
  # service_pid would take the daemon for gone ("exited while starting",
  # seen under load). Give the exec up to 5 s while that pid is alive.
  local pid i
  pid=$(cat "$LOCAL/$name.pid")
  for ((i = 0; i < 100; i++)); do
    if service_pid "$name" >/dev/null || ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.05
  done
  until "$@" >/dev/null 2>&1; do
    if ! service_pid "$name" >/dev/null; then
      tail -n 20 "$LOCAL/$name.log" >&2 || true
      die "$name exited while starting (last lines of .local/$name.log above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$LOCAL/$name.log" >&2 || true
      die "$name was not ready within ${timeout_s}s (last lines of .local/$name.log above)"
    fi
    sleep 0.2
  done
}
