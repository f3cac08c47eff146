#!/usr/bin/env bash
# `npm run test:vm:csi`: the CSI driver in the VM (Debian's kernel with nbd,
# under QEMU; see test/vm/harness/run-in-vm.sh): two nodes, each a torusd with
# kernel attach and a `torusblk csi` plugin, driven over gRPC as kubelet
# drives them: test/vm/guest/csi.mjs. Node death shortens the lease
# (TORUS_VM_LEASE_TTL, default 15 s) so that the suite stays short.
# Runs on Node 24 (scripts/node24.sh). Fails, never skips, when the VM cannot
# run. TORUS_VM_ONLY=move,block runs a subset (the words before the colon).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec bash test/vm/harness/run-suite.sh "vm csi suite" csi.mjs \
  "TORUS_VM_ONLY=${TORUS_VM_ONLY:-}" "TORUS_VM_LEASE_TTL=${TORUS_VM_LEASE_TTL:-15}"
