#!/usr/bin/env bash
# The Vagrant lab booted here, when its inputs changed: CI's step after `make test` (.ci/run).
#
#   scripts/lab-ci.sh [--always] [--budget SECONDS]
#
# The lab takes longer than CI can give it on every run (docs/deploy.md, "The lab booted here": the
# box, three VMs under TCG, their provisioning and the check), so it runs when what it tests changed
# since the last run that passed on this machine: vagrant/, scripts/, packaging/, policies/lab.yaml
# and pyproject.toml (their content hash, kept in FW_LAB_CACHE/ci-passed). --always runs it anyway.
# The run: the host's packages, the box (cached by its own key), then tests/test_lab_vms_boot.py
# with FW_LAB_VMS=1 (a VM that does not come up, then up, check and down, each step timed).
#
# --budget: the seconds it may take (.ci/run gives it what is left of CI's 90 minutes). Less than
# FW_LAB_CI_NEEDS (default 3600 s, the slowest measured run and a margin) left: one line, not run, no
# stamp (the next CI run tries again), exit 0. A step that fails or outlives the budget: one line,
# the lab torn down (scripts/lab-vms.sh down), exit 1.
set -euo pipefail

cd "$(dirname "$0")/.."
cache=${FW_LAB_CACHE:-/var/cache/fw-lab}
stamp=$cache/ci-passed
needs=${FW_LAB_CI_NEEDS:-3600}
INPUTS=(vagrant scripts packaging policies/lab.yaml pyproject.toml)

usage() { echo "usage: $0 [--always] [--budget SECONDS]" >&2; exit 2; }

always=no
budget=
while [ $# -gt 0 ]; do
    case "$1" in
    --always) always=yes; shift ;;
    --budget)
        if [ $# -lt 2 ] || ! [[ $2 =~ ^-?[0-9]+$ ]]; then usage; fi
        budget=$2
        shift 2 ;;
    *) usage ;;
    esac
done

inputs_hash() {
    git ls-files -z -- "${INPUTS[@]}" | xargs -0 sha256sum | sha256sum | cut -c1-16
}

hash=$(inputs_hash)
if [ "$always" = no ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "lab-ci: the lab's inputs ($hash) passed here already: VM lab skipped (--always runs it)"
    exit 0
fi
if [ -n "$budget" ] && [ "$budget" -lt "$needs" ]; then
    echo "lab-ci: the lab's inputs ($hash) have not passed here, but $budget s are left and the lab needs up to $needs s: VM lab not run (scripts/lab-ci.sh runs it)"
    exit 0
fi
start=$SECONDS
deadline=$((start + ${budget:-86400}))
echo "lab-ci: the lab's inputs ($hash) have not passed here yet: booting the VM lab${budget:+ (at most $budget s)}"

step() {  # WHAT COMMAND...: run it within what is left of the budget; a failure tears the lab down
    local what=$1 status=0
    shift
    timeout --kill-after=30 $((deadline - SECONDS)) "$@" || status=$?
    [ "$status" = 0 ] && return 0
    scripts/lab-vms.sh down >/dev/null 2>&1 || true
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "lab-ci: VM lab stopped at $what: out of its $((deadline - start)) s; torn down" >&2
    else
        echo "lab-ci: VM lab failed at $what (exit $status) after $((SECONDS - start)) s; torn down" >&2
    fi
    exit 1
}

step "the host's packages" scripts/lab-host.sh install
step "the box" scripts/lab-box.sh
step "tests/test_lab_vms_boot.py" env FW_LAB_VMS=1 "${PYTHON:-.venv/bin/python}" -m pytest -q -s -p no:cacheprovider \
    tests/test_lab_vms_boot.py
install -d "$cache"
echo "$hash" >"$stamp"
echo "lab-ci: VM lab passed in $((SECONDS - start)) s"
