#!/usr/bin/env bash
# `npm run test:vm:powerloss`: power-loss durability. torusd runs inside the
# VM (Debian's kernel under QEMU TCG, test/vm/harness/run-in-vm.sh) with its
# data dir on a virtio disk backed by a raw image on the host, formatted over
# a deleted file's bytes; a writer in the guest writes generations of a
# per-sector pattern, each ended by a FLUSH, and the host kills QEMU with
# SIGKILL right after a FLUSH is acknowledged or at a random moment with
# writes in flight, boots the guest again on the same image and checks every
# sector (test/vm/powerloss-host.mjs, test/vm/guest/powerloss.mjs).
#
# One run per file system in TORUS_PL_FILESYSTEMS (default "ext4 xfs": the
# two a Kubernetes node's disk is most often formatted with; ext4-nojournal is
# there to run by hand). Each: TORUS_PL_KILLS (default 4) power cuts, then a
# checking boot; about 2-5 minutes on 2 cores. Then one run per file system in
# TORUS_PL_REPLICATED_FILESYSTEMS (default "ext4"; empty skips it) with three
# torusd in the guest, replication 2: one power cut takes every replica, and
# each boot also reads the volume through every peer and checks that every
# block has 2 equal copies on its ring owners. Then one run per file system
# in TORUS_PL_PEER_FILESYSTEMS (default "xfs"; empty skips it) where the power
# goes from one peer of three alone, while the others run: that peer's data
# dir is on its own disk behind dm-flakey, which drops what had not reached
# the disk; the writer uses another peer (a replica cut) or that one (a
# coordinator cut), 6 cuts in one boot (test/vm/guest/peer-powerloss.mjs).
# Every file system runs even when an earlier one fails. Runs on Node 24 (scripts/node24.sh). Fails,
# never skips, when a tool or the VM is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
node24_bin=$(bash scripts/node24.sh --bin)
[ -n "$node24_bin" ] && export PATH="$node24_bin:$PATH"
bash scripts/install-deps.sh
failed=()
for fs in ${TORUS_PL_FILESYSTEMS:-ext4 xfs}; do
  echo "=== power-loss suite, data dir on $fs"
  TORUS_PL_FS=$fs node test/vm/powerloss-host.mjs || failed+=("$fs")
done
for fs in ${TORUS_PL_REPLICATED_FILESYSTEMS-ext4}; do
  echo "=== power-loss suite, 3 torusd with replication 2, data dirs on $fs"
  TORUS_PL_FS=$fs TORUS_PL_PEERS=3 node test/vm/powerloss-host.mjs || failed+=("$fs (replicated)")
done
for fs in ${TORUS_PL_PEER_FILESYSTEMS-xfs}; do
  echo "=== power-loss suite, one peer of 3 cut alone, data dirs on $fs"
  TORUS_PL_FS=$fs TORUS_PL_CUT=peer node test/vm/powerloss-host.mjs || failed+=("$fs (one peer)")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "power-loss suite FAILED on: ${failed[*]}"
  exit 1
fi
echo "power-loss suite passed on: ${TORUS_PL_FILESYSTEMS:-ext4 xfs}; replicated: ${TORUS_PL_REPLICATED_FILESYSTEMS-ext4}; one peer cut: ${TORUS_PL_PEER_FILESYSTEMS-xfs}"
