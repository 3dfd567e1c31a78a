#!/usr/bin/env bash
# Install fw as the systemd service fw.service, and start it.
#
#   scripts/install-service.sh [--venv DIR] [--policy FILE] [--no-start]
#
# --venv: the venv whose fw runs (default: the repository's .venv); /usr/local/bin/fw links to it.
# --policy: copied to /etc/fw/policy.yaml (the unit's default FW_POLICY) and checked first.
# Installs packaging/: the unit, /etc/default/fw (kept if present: it is the operator's),
# tmpfiles.d (iptables-legacy's lock), logrotate, and bash completion. Then, if systemd runs here:
# daemon-reload, enable, and (unless --no-start) restart, so that a new policy or unit takes effect.
# FW_ROOT=DIR installs under DIR instead of / and leaves systemd alone (tests, packaging).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
root=${FW_ROOT:-}
venv=$repo/.venv
policy=
start=yes
while [ $# -gt 0 ]; do
    case "$1" in
    --venv) venv=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --no-start) start=no; shift ;;
    *) echo "install-service: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
venv=$(cd "$venv" && pwd)
fw=$venv/bin/fw
[ -x "$fw" ] || { echo "install-service: no fw in $venv/bin (scripts/install-venv.sh makes it)" >&2; exit 1; }

install -d "$root/usr/local/bin" "$root/etc/fw" "$root/etc/systemd/system" "$root/etc/default" \
    "$root/etc/tmpfiles.d" "$root/etc/logrotate.d" "$root/usr/share/bash-completion/completions"
ln -sfn "$fw" "$root/usr/local/bin/fw"
install -m 0644 "$repo/packaging/systemd/fw.service" "$root/etc/systemd/system/fw.service"
[ -e "$root/etc/default/fw" ] || install -m 0644 "$repo/packaging/default/fw" "$root/etc/default/fw"
install -m 0644 "$repo/packaging/tmpfiles.d/fw.conf" "$root/etc/tmpfiles.d/fw.conf"
install -m 0644 "$repo/packaging/logrotate/fw" "$root/etc/logrotate.d/fw"
_FW_COMPLETE=bash_source "$fw" >"$root/usr/share/bash-completion/completions/fw"
if [ -n "$policy" ]; then
    "$fw" policy check "$policy"
    install -m 0644 "$policy" "$root/etc/fw/policy.yaml"
fi
echo "install-service: fw.service installed under ${root:-/} (fw: $fw)"

if [ -n "$root" ] || [ ! -d /run/systemd/system ]; then
    echo "install-service: systemd is not managing this root: not started"
    exit 0
fi
systemd-tmpfiles --create /etc/tmpfiles.d/fw.conf
systemctl daemon-reload
systemctl enable fw.service
if [ "$start" = yes ]; then
    systemctl restart fw.service
    systemctl --no-pager --lines=5 status fw.service
fi
