#!/usr/bin/env bash
# Make this host (or network namespace: `ip netns exec NS scripts/enable-forwarding.sh`) a router:
# IPv4 and IPv6 forwarding on. With --persist, also for the next boot, in
# $FW_ROOT/etc/sysctl.d/60-fw-forwarding.conf (FW_ROOT: install under another root, default /).
#
# Forwarding sysctls belong to the network namespace, so inside a namespace nothing else changes.
set -euo pipefail

SETTINGS=(net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1)

sysctl -q -w "${SETTINGS[@]}"
if [ "${1:-}" = --persist ]; then
    conf="${FW_ROOT:-}/etc/sysctl.d/60-fw-forwarding.conf"
    mkdir -p "$(dirname "$conf")"
    {
        echo "# fw: this host routes between its networks (scripts/enable-forwarding.sh)."
        printf '%s\n' "${SETTINGS[@]}"
    } >"$conf"
fi
echo "forwarding on: ipv4 $(sysctl -n net.ipv4.ip_forward), ipv6 $(sysctl -n net.ipv6.conf.all.forwarding)"
