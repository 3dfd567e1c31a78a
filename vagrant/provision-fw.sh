#!/usr/bin/env bash
# The fw VM: routes between the lab's two networks and runs fw as the systemd service fw.service
# with policies/lab.yaml. Every step is a shared script of scripts/ (as `make install` uses them).
#
#   vagrant/provision-fw.sh LAN_IPV4 LAN_IPV6/LEN WAN_IPV4 WAN_IPV6/LEN
#
# FW_VENV: where the project is installed (default /opt/fw/venv, `pip install` of this checkout).
# FW_SKIP_PACKAGES=1: no apt-get, no pip; FW_VENV must hold an installed fw already. With FW_ROOT=DIR
# (install the service under DIR) this runs against the namespace lab: tests/test_deploy_lab.py.
set -euo pipefail

[ $# -eq 4 ] || { echo "usage: $0 LAN_IPV4 LAN_IPV6/LEN WAN_IPV4 WAN_IPV6/LEN" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${FW_VENV:-/opt/fw/venv}

if [ "${FW_SKIP_PACKAGES:-0}" != 1 ]; then
    "$repo/scripts/install-system-packages.sh" fw
    "$repo/scripts/install-venv.sh" "$venv" "$repo"
fi
"$repo/scripts/lab-network.sh" --address "$1" "$2" --address "$3" "$4"
"$repo/scripts/enable-forwarding.sh" --persist
"$repo/scripts/install-service.sh" --venv "$venv" --policy "$repo/policies/lab.yaml"
