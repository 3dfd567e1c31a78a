#!/usr/bin/env bash
# The host side of the Vagrant lab: its Debian packages, the libvirt daemons, the accelerator.
#
#   scripts/lab-host.sh install          the packages of scripts/lab-host-packages.txt (not part of
#                                        `make install`: `make lab-box` runs it)
#   scripts/lab-host.sh start            start virtlogd and libvirtd unless they run (no systemd here)
#   scripts/lab-host.sh stop             stop the daemons that `start` started (their pid files), and
#                                        remove the empty LIBVIRT_* chains such a libvirtd leaves
#   scripts/lab-host.sh accel KERNEL INITRD
#                                        print the libvirt domain type: kvm or qemu (TCG)
#
# accel is a timed probe boot: /dev/kvm may open and a kernel still hang under KVM (nested
# virtualization: it stops after "Probing EDD"), so the kernel boots under qemu, first with KVM,
# then with TCG, each until its console says it runs the initramfs' /init, or the time is up
# (FW_LAB_PROBE_KVM, default 30 s; FW_LAB_PROBE_TCG, default 300 s). Neither: one line, exit 1.
# FW_LAB_QEMU names the emulator (default qemu-system-x86_64).
set -euo pipefail

RUN=${FW_LAB_RUN:-/run/fw-lab}
BOOTED="Run /init as init process"

die() { echo "lab-host: $*" >&2; exit 1; }

install_packages() {
    FW_APT_PACKAGES="$(dirname "$0")/lab-host-packages.txt" "$(dirname "$0")/install-system-packages.sh" lab-host
}

start_daemon() {  # NAME: start it in the background unless one runs; remember that we did
    local name=$1
    if pgrep -x "$name" >/dev/null; then
        return 0
    fi
    command -v "$name" >/dev/null || die "no libvirt: $name is not installed (scripts/lab-host.sh install)"
    "$name" --daemon --pid-file "$RUN/$name.pid"
    echo "lab-host: started $name (pid $(cat "$RUN/$name.pid"))"
}

start_daemons() {
    [ "$(id -u)" = 0 ] || die "needs root (libvirtd)"
    command -v virsh >/dev/null || die "no libvirt: virsh is not installed (scripts/lab-host.sh install)"
    install -d "$RUN"
    start_daemon virtlogd
    start_daemon libvirtd
    local i
    for i in $(seq 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        [ "$i" = 50 ] || sleep 0.2
    done
    stop_daemons >&2
    die "no libvirt: libvirtd does not answer on qemu:///system"
}

stop_daemons() {
    local name pid
    for name in libvirtd virtlogd; do
        [ -f "$RUN/$name.pid" ] || continue
        pid=$(cat "$RUN/$name.pid")
        if kill "$pid" 2>/dev/null; then
            while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
            echo "lab-host: stopped $name (pid $pid)"
            [ "$name" != libvirtd ] || remove_libvirt_chains
        fi
        rm -f "$RUN/$name.pid"
    done
}

remove_libvirt_chains() {  # what a libvirtd leaves in the host's iptables: its LIBVIRT_* chains, if empty
    local tool table chain rule
    for tool in iptables ip6tables; do
        for table in filter nat mangle; do
            for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^LIBVIRT_/ { print $2 }'); do
                if "$tool" -t "$table" -S "$chain" | grep -q '^-A'; then continue; fi  # holds rules: not ours to drop
                "$tool" -t "$table" -S | grep -- "-j $chain\$" | while read -r rule; do
                    # shellcheck disable=SC2086  # the rule's words, as iptables -S printed them
                    "$tool" -t "$table" -D ${rule#-A }
                done
                "$tool" -t "$table" -X "$chain"
            done
        done
    done
}

probe() {  # ACCEL KERNEL INITRD SECONDS: does the kernel reach the initramfs' /init in time?
    local accel=$1 kernel=$2 initrd=$3 seconds=$4 log pid ok=1 deadline
    log=$(mktemp)
    "${FW_LAB_QEMU:-qemu-system-x86_64}" -accel "$accel" -m 1024 -nodefaults -display none -no-reboot \
        -serial "file:$log" -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 root=/dev/fw-lab-probe rootdelay=1" >/dev/null 2>&1 &
    pid=$!
    deadline=$((SECONDS + seconds))
    while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
        if grep -q "$BOOTED" "$log"; then
            ok=0
            break
        fi
        sleep 0.5
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
    return $ok
}

accel() {  # KERNEL INITRD
    [ $# -eq 2 ] || { echo "usage: $0 accel KERNEL INITRD" >&2; exit 2; }
    local start=$SECONDS
    if [ -r /dev/kvm ] && probe kvm "$1" "$2" "${FW_LAB_PROBE_KVM:-30}"; then
        echo "lab-host: KVM boots the kernel ($((SECONDS - start)) s): domain type kvm" >&2
        echo kvm
    elif probe tcg "$1" "$2" "${FW_LAB_PROBE_TCG:-300}"; then
        echo "lab-host: KVM does not boot the kernel, TCG does ($((SECONDS - start)) s): domain type qemu" >&2
        echo qemu
    else
        die "no KVM and no TCG: $(basename "${FW_LAB_QEMU:-qemu-system-x86_64}") boots the lab's kernel with neither"
    fi
}

case "${1:-}" in
install) install_packages ;;
start) start_daemons ;;
stop) stop_daemons ;;
accel) shift; accel "$@" ;;
*) echo "usage: $0 install|start|stop|accel KERNEL INITRD" >&2; exit 2 ;;
esac
