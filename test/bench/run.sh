#!/usr/bin/env bash
# `npm run bench`: installs what is missing and builds (scripts/install-deps.sh),
# then runs test/bench/bench.mjs, which starts everything it measures, runs the
# fio jobs, prints the tables and writes test/bench/results/latest.json.
# README "Benchmark" says what is measured and how to read it.
#
# Options (`npm run bench -- --help` lists them all; each has an environment
# variable too, and a flag wins over its variable):
#   --quick              development mode: 1 round of 3 s, 10 s idle window, one re-replication
#   --json FILE          where the JSON goes (BENCH_OUT; default test/bench/results/latest.json)
#   --rounds N           rounds, every job on every target interleaved (BENCH_ROUNDS; default 3)
#   --seconds N          seconds per timed fio job (BENCH_SECONDS; default 20)
#   --ramp N             unmeasured fio --ramp_time per timed job (BENCH_RAMP_SECONDS; default 2)
#   --idle-seconds N     idle CPU window, 0 to skip (BENCH_IDLE_SECONDS; default 60)
#   --targets LIST       subset of nbdkit-file,nbdkit-memory,nbdkit-null,torusd,torusd-r2 (BENCH_TARGETS)
#   --rebuild MODE       both | fast | 0 (BENCH_REBUILD; default both, fast with --quick)
#   --strict             exit 3 when an issue-7 target is missed (BENCH_STRICT=1); a failed
#                        replication check always exits 1
#   --keep               keep the whole run folder: logs, fio JSON, data (BENCH_KEEP=1)
# Environment only:
#   BENCH_REBUILD_RATE       --rebalance-rate for the first re-replication (default 10GiB: not the limit)
#   BENCH_REBUILD_TIMEOUT_S  give up on a re-replication after this long (default 1800)
#   BENCH_QUIET_TIMEOUT_S    wait at most this long for torus's background work before a job (default 300)
#   BENCH_TORUS_SIZE         torusd --size of every peer (default 8GiB)
#   BENCH_DIR                parent of the per-run work folder (default .local/bench in the repo).
#                            The run folder is removed at the end; after a failure its logs and fio
#                            output stay.
#
# Every process started is stopped on exit, failure or Ctrl-C. Ports are free
# ones picked at start; none is fixed.
set -euo pipefail

# A relative --json names a file where the caller was (npm sets INIT_CWD).
export BENCH_CALLER_CWD="${INIT_CWD:-$PWD}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# On Node.js 24, as test/run.sh: torusd and every process the bench starts
# use process.execPath.
node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then
  export PATH="$node24_bin:$PATH"
fi

bash scripts/install-deps.sh
exec node test/bench/bench.mjs "$@"
