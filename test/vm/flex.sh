#!/usr/bin/env bash
# `npm run test:vm:flex`: the FlexVolume driver in the VM (Debian's kernel
# with nbd, under QEMU; see test/vm/harness/run-in-vm.sh), run as kubelet
# runs it against two torusds with kernel attach: test/vm/guest/flex.mjs.
# Runs on Node 24 (scripts/node24.sh) like the other suites. Fails, never
# skips, when the VM cannot run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec bash test/vm/harness/run-suite.sh "vm flex suite" flex.mjs
