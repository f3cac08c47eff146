#!/usr/bin/env bash
# `npm run test:vm:powerloss`: power-loss durability. torusd runs inside the
# VM (Debian's kernel under QEMU TCG, test/vm/harness/run-in-vm.sh) with its
# data dir on ext4 on a virtio disk backed by a raw image on the host; a
# writer in the guest writes generations of a per-sector pattern, each ended
# by a FLUSH, and the host kills QEMU with SIGKILL right after a FLUSH is
# acknowledged or at a random moment with writes in flight, boots the guest
# again on the same image and checks every sector (test/vm/powerloss-host.mjs,
# test/vm/guest/powerloss.mjs). TORUS_PL_KILLS (default 4) power cuts, then a
# checking boot; about 5-8 minutes on 2 cores. Runs on Node 24
# (scripts/node24.sh). Fails, never skips, when a tool or the VM is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
node24_bin=$(bash scripts/node24.sh --bin)
[ -n "$node24_bin" ] && export PATH="$node24_bin:$PATH"
bash scripts/install-deps.sh
exec node test/vm/powerloss-host.mjs
