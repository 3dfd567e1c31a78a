#!/usr/bin/env bash
# Install the Debian packages that ROLEs need (default: dev), as listed in scripts/apt-packages.txt.
#
#   scripts/install-system-packages.sh [ROLE...]         install (as root, with apt-get)
#   scripts/install-system-packages.sh --list [ROLE...]  print the packages, one a line
#
# Roles: dev (`make install`), fw, server, client (the Vagrant lab VMs). Not root, or no apt-get:
# says which packages it skips and succeeds, so that `make install` still builds the venv. Every
# package installed already: says so, and neither needs root nor runs apt-get (the lab's offline box
# has them all baked in, and no network).
set -euo pipefail

list_file=${FW_APT_PACKAGES:-"$(dirname "$0")/apt-packages.txt"}

packages_of() {
    # Lines "NAME ROLE,ROLE" (comments and blank lines skipped) -> the NAMEs tagged with any role.
    awk -v wanted="$*" '
        BEGIN { n = split(wanted, w, " "); for (i = 1; i <= n; i++) want[w[i]] = 1 }
        { sub(/#.*/, "") }
        NF >= 2 {
            split($2, roles, ",")
            for (r in roles) if (roles[r] in want) { print $1; next }
        }' "$list_file"
}

list_only=no
if [ "${1:-}" = --list ]; then
    list_only=yes
    shift
fi
[ $# -gt 0 ] || set -- dev
for role in "$@"; do
    if ! awk '{ sub(/#.*/, "") } NF >= 2 { print $2 }' "$list_file" | tr ',' '\n' | grep -qx -- "$role"; then
        echo "install-system-packages: unknown role '$role' (see $list_file)" >&2
        exit 2
    fi
done
mapfile -t packages < <(packages_of "$@")

if [ "$list_only" = yes ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f '${Status}\n' "$package" 2>/dev/null | grep -qx 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-packages: all ${#packages[@]} packages are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not root or no apt-get: skipping system packages (${packages[*]})"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}"
