#!/usr/bin/env bash
# `npm run bench`: installs what is missing and builds (scripts/install-deps.sh),
# then runs test/bench/bench.mjs, which starts everything it measures, runs the
# fio jobs, prints the tables and writes test/bench/results/latest.json.
# README "Benchmark" says what is measured and how to read it.
#
# Environment:
#   BENCH_SECONDS        seconds per timed fio job (default 20; 3 with BENCH_QUICK)
#   BENCH_ROUNDS         rounds: every job on every target, interleaved (default 3; 1 with BENCH_QUICK)
#   BENCH_RAMP_SECONDS   unmeasured fio --ramp_time before each timed job (default 2; 1 with BENCH_QUICK)
#   BENCH_QUICK=1        development mode: 1 round of 3 s, re-replication at the high rate only
#   BENCH_TARGETS        comma-separated subset of nbdkit-file,nbdkit-memory,nbdkit-null,torusd,torusd-r2
#   BENCH_REBUILD        both (default): re-replication at BENCH_REBUILD_RATE and at torusd's default
#                        rate; fast: the first only (default with BENCH_QUICK); 0: skip
#   BENCH_REBUILD_RATE   --rebalance-rate for the first re-replication (default 10GiB: not the limit)
#   BENCH_REBUILD_TIMEOUT_S  give up on a re-replication after this long (default 1800)
#   BENCH_QUIET_TIMEOUT_S    wait at most this long for torus's background work before a job (default 300)
#   BENCH_TORUS_SIZE     torusd --size of every peer (default 8GiB)
#   BENCH_STRICT=1       exit 3 when an issue-7 ratio target is missed (a failed replication
#                        check always exits 1)
#   BENCH_DIR            parent of the per-run work folder (default .local/bench in the repo).
#                        The run folder is removed at the end; after a failure its logs and fio
#                        output stay.
#   BENCH_KEEP=1         keep the whole run folder (logs, fio JSON, data)
#   BENCH_OUT            where the JSON goes (default test/bench/results/latest.json)
#
# Every process started is stopped on exit, failure or Ctrl-C. Ports are free
# ones picked at start; none is fixed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bash scripts/install-deps.sh
exec node test/bench/bench.mjs
