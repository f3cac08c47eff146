#!/usr/bin/env bash
# The test command (`npm test`): installs what is missing, builds, then runs
# every vitest suite under test/. Extra arguments go to vitest, e.g.
# `npm test -- test/unit` or `npm test -- -t crc32c`. Exits with vitest's code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every run is on Node.js 24, the supported runtime: on a machine whose
# system node is older (Debian 12 ships 18.20.4), scripts/node24.sh installs
# it with its npm into .tools/node24 and it goes first on PATH, for npm,
# node-gyp, vitest and every process the tests start (they use
# process.execPath).
node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then
  export PATH="$node24_bin:$PATH"
fi
echo "test/run.sh: node $(node --version), npm $(npm --version)"

bash scripts/install-deps.sh

# Every torusd, torusblk and in-process pool the tests start poisons the
# buffers given back to its pool and checks the poison when it hands one
# out again (src/util/buffer-pool.ts): a buffer released while something
# still reads it shows as corrupt data in the read-back checks, one written
# after release fails an assertion. Slower, and only for tests; set
# TORUS_POOL_POISON=0 to run without it.
export TORUS_POOL_POISON="${TORUS_POOL_POISON:-1}"

# The tests are TypeScript too, and vitest only strips their types: a full
# run checks them first (test/tsconfig.json, about 15 s), so a test that no
# longer matches the code it calls fails here, not by running something else.
if [ "$#" -eq 0 ]; then
  echo "test/run.sh: type-checking the tests (tsc -p test/tsconfig.json)"
  npx --no-install tsc -p test/tsconfig.json
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT

set +e
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json="$results" "$@"
code=$?
set -e

# vitest's own summary is a table; also print the plain closing line
# ("N passed, N failed") that CI reads to count tests.
if [ -s "$results" ]; then
  node -e '
    const r = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
    // The failed tests again, one line each with the first line of the
    // error, so that the tail of a long CI log says what failed.
    for (const file of r.testResults ?? []) {
      const name = file.name.replace(process.cwd() + "/", "");
      if (file.status === "failed" && !(file.assertionResults ?? []).some((a) => a.status === "failed")) {
        console.log(`vitest: FAILED ${name}: ${(file.message ?? "").split("\n")[0].slice(0, 300)}`);
      }
      for (const a of file.assertionResults ?? []) {
        if (a.status !== "failed") continue;
        const why = (a.failureMessages ?? [""])[0].split("\n")[0].slice(0, 300);
        console.log(`vitest: FAILED ${name} > ${a.fullName}: ${why}`);
      }
    }
  ' "$results" || true
fi
exit "$code"
