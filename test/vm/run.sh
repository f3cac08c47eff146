#!/usr/bin/env bash
# `npm run test:vm`: the kernel attach suite. Boots Debian's kernel (which has
# the nbd driver this host's kernel may lack) under QEMU with
# test/vm/harness/run-in-vm.sh and runs test/vm/guest/scenarios.mjs inside:
# attach/mkfs/mount/detach across two torusds, a read fault while mounting,
# torusd restarts (SIGTERM, kill -9, a long one) under a writer, a restart
# past the budget, and the death of the serving torusd. Fails (never skips)
# when the VM cannot run. TORUS_VM_ONLY=attach,restart runs a subset;
# TORUS_VM_LEASE_TTL (default 120 s) is node A's lease in the restart checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec bash test/vm/harness/run-suite.sh "vm suite" scenarios.mjs \
  "TORUS_VM_ONLY=${TORUS_VM_ONLY:-}" "TORUS_VM_LEASE_TTL=${TORUS_VM_LEASE_TTL:-120}"
