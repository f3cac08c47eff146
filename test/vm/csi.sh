#!/usr/bin/env bash
# `npm run test:vm:csi`: the CSI driver in the VM (Debian's kernel with nbd,
# under QEMU; see test/vm/harness/run-in-vm.sh): two nodes, each a torusd with
# kernel attach and a `torusblk csi` plugin, driven over gRPC as kubelet
# drives them: test/vm/guest/csi.mjs. Node death shortens the lease
# (TORUS_VM_LEASE_TTL, default 15 s) so the suite stays within 10 minutes.
# Runs on Node 24 (scripts/node24.sh). Fails, never skips, when the VM cannot
# run. TORUS_VM_ONLY=move,block runs a subset (the words before the colon).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
node24_bin=$(bash scripts/node24.sh --bin)
[ -n "$node24_bin" ] && export PATH="$node24_bin:$PATH"
bash scripts/install-deps.sh
node=$(command -v node)
started=$(date +%s)
set +e
TORUS_VM_TIMEOUT=${TORUS_VM_TIMEOUT:-600} bash test/vm/harness/run-in-vm.sh env TORUS_VM_ONLY="${TORUS_VM_ONLY:-}" TORUS_VM_LEASE_TTL="${TORUS_VM_LEASE_TTL:-15}" "$node" test/vm/guest/csi.mjs
code=$?
set -e
echo "vm csi suite: exit $code after $(( $(date +%s) - started )) s"
exit $code
