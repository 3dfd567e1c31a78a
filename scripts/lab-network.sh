#!/usr/bin/env bash
# A lab host's addresses and routes beyond what Vagrant configures (SPEC "The lab").
#
#   scripts/lab-network.sh [--address IPV4 IPV6/LEN]... [--route DESTINATION GATEWAY]...
#
# --address: find the interface that carries IPV4 (Vagrant gave it that address; its name differs by
# provider) and add IPV6/LEN to it, without duplicate address detection (SPEC: nodad, ready at once).
# --route: DESTINATION via GATEWAY, IPv4 or IPv6; the default route (the VM's NAT) is left alone.
# Idempotent (`ip ... replace`); the Vagrantfile runs it at every `vagrant up`.
set -euo pipefail

interface_of() {
    ip -o -4 addr show | awk -v want="$1" '{ split($4, a, "/"); if (a[1] == want) { print $2; exit } }'
}

while [ $# -gt 0 ]; do
    case "$1" in
    --address)
        [ $# -ge 3 ] || { echo "lab-network: --address needs IPV4 IPV6/LEN" >&2; exit 2; }
        interface=$(interface_of "$2")
        if [ -z "$interface" ]; then
            echo "lab-network: no interface carries $2" >&2
            exit 1
        fi
        sysctl -q -w "net/ipv6/conf/$interface/disable_ipv6=0" "net/ipv6/conf/$interface/accept_dad=0"
        ip addr replace "$3" dev "$interface" nodad
        echo "lab-network: $interface has $2 and $3"
        shift 3
        ;;
    --route)
        [ $# -ge 3 ] || { echo "lab-network: --route needs DESTINATION GATEWAY" >&2; exit 2; }
        ip route replace "$2" via "$3"
        echo "lab-network: route $2 via $3"
        shift 3
        ;;
    *)
        echo "lab-network: unknown argument '$1'" >&2
        exit 2
        ;;
    esac
done
