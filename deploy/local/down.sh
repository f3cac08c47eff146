#!/usr/bin/env bash
# `npm run local:down`: stops the torusd and etcd that `npm run local` started
# (SIGTERM, then SIGKILL after a bound). Data stays in .local/ for the next
# `npm run local`; `npm run local:down -- --wipe` deletes it too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
# shellcheck source=deploy/local/common.sh
. deploy/local/common.sh

wipe=""
for arg in "$@"; do
  case $arg in
    --wipe) wipe=1 ;;
    -h | --help)
      echo "usage: npm run local:down [-- --wipe]"
      exit 0
      ;;
    *) die "unknown argument '$arg' (usage: npm run local:down [-- --wipe])" ;;
  esac
done

# torusd first: it still talks to etcd while it shuts down.
say "$(stop_service torusd)"
say "$(stop_service etcd)"

if [ -n "$wipe" ]; then
  rm -rf "$LOCAL/torusd-data" "$LOCAL/etcd" "$LOCAL/torusd.log" "$LOCAL/etcd.log" "$ETCD_PORTS_FILE"
  say "wiped .local/torusd-data, .local/etcd and the logs"
else
  say "data kept in .local/torusd-data and .local/etcd (npm run local:down -- --wipe deletes it)"
fi
