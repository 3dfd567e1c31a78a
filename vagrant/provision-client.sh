#!/usr/bin/env bash
# The client VM: curl and lftp (and nc, iperf3, hping3) for the walkthrough in docs/deploy.md.
#
#   vagrant/provision-client.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/install-system-packages.sh" client
