#!/usr/bin/env bash
# The Vagrant lab booted here, when its inputs changed (meant for CI after `make test`; not called by
# .ci/run until it has passed end to end once: docs/deploy.md).
#
#   scripts/lab-ci.sh [--always]
#
# The lab takes longer than CI's budget allows on every run (docs/deploy.md, "The lab booted here":
# the box, three VMs under TCG, their provisioning and the check), so it runs when what it tests
# changed since the last run that passed here: vagrant/, scripts/, packaging/, policies/lab.yaml and
# pyproject.toml (their content hash, kept in FW_LAB_CACHE/ci-passed). --always runs it anyway.
# The run is tests/test_lab_vms_boot.py with FW_LAB_VMS=1: the box, a VM that does not come up,
# then up, check and down, each step timed.
set -euo pipefail

cd "$(dirname "$0")/.."
cache=${FW_LAB_CACHE:-/var/cache/fw-lab}
stamp=$cache/ci-passed
INPUTS=(vagrant scripts packaging policies/lab.yaml pyproject.toml)

inputs_hash() {
    git ls-files -z -- "${INPUTS[@]}" | xargs -0 sha256sum | sha256sum | cut -c1-16
}

hash=$(inputs_hash)
if [ "${1:-}" != --always ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "lab-ci: the lab's inputs ($hash) passed here already: VM lab skipped (--always runs it)"
    exit 0
fi
[ $# -eq 0 ] || [ "$1" = --always ] || { echo "usage: $0 [--always]" >&2; exit 2; }
echo "lab-ci: the lab's inputs ($hash) have not passed here yet: booting the VM lab"
start=$SECONDS
scripts/lab-host.sh install
scripts/lab-box.sh
FW_LAB_VMS=1 "${PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider tests/test_lab_vms_boot.py
install -d "$cache"
echo "$hash" >"$stamp"
echo "lab-ci: VM lab passed in $((SECONDS - start)) s"
