#!/usr/bin/env bash
# One VM suite as npm runs it (test/vm/run.sh, flex.sh, csi.sh): Node 24
# (scripts/node24.sh), install-deps, the build packed into one tar file for
# the guest (test/vm/guest/stage.sh --pack), then the guest script, run from
# the guest's tmpfs on the same Node 24 (the checkout is shared at the same
# path), in a VM booted by run-in-vm.sh. Prints the suite's wall time.
#
#   run-suite.sh LABEL SCRIPT [VAR=VALUE...]
#
# SCRIPT is under test/vm/guest/; VAR=VALUE pairs go to its environment.
# Exit status: the guest script's (124: run-in-vm.sh gave up on the VM).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
label=$1
script=$2
shift 2
node24_bin=$(bash scripts/node24.sh --bin)
if [ -n "$node24_bin" ]; then export PATH="$node24_bin:$PATH"; fi
bash scripts/install-deps.sh
started=$(date +%s)
# In the checkout: the guest sees the host's /tmp hidden under its own tmpfs.
tar="$PWD/test/vm/stage-$$.tar"
trap 'rm -f "$tar" "$tar.part"' EXIT
bash test/vm/guest/stage.sh --pack "$tar"
guest_path="$(dirname "$(command -v node)"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
set +e
bash test/vm/harness/run-in-vm.sh env "PATH=$guest_path" "TORUS_VM_STAGE_TAR=$tar" "$@" bash test/vm/guest/stage.sh "$script"
code=$?
set -e
echo "$label: exit $code after $(($(date +%s) - started)) s"
exit "$code"
