#!/usr/bin/env bash
# The Vagrant lab's three VMs on libvirt, from the offline box of scripts/lab-box.sh, and their check.
#
#   scripts/lab-vms.sh up      boot server, fw, client (make lab-vms), in parallel; provision them
#                              (in parallel) as vagrant/Vagrantfile says (fw.service runs `fw run`)
#   scripts/lab-vms.sh check   the end-to-end check from the client VM (make lab-vms-check), then down
#   scripts/lab-vms.sh down    destroy the VMs, the lab's networks and volumes; stop the daemons
#                              that scripts/lab-host.sh started (make lab-vms-down)
#   scripts/lab-vms.sh networks   print the libvirt networks `up` defines (XML)
#
# Nothing leaves this machine: the script defines the three libvirt networks itself before Vagrant
# looks for them, all without forwarding: fw-lab-mgmt for Vagrant's ssh (203.0.113.128/25, the half
# of the lab's WAN range that the lab leaves free; this host is .129, DHCP for the VMs, no DNS) and
# the lab's fw-lab-lan and fw-lab-wan (no host address at all). The domain
# type is kvm where a timed probe boot of the box's kernel works under KVM, else qemu (TCG).
# Every step prints its time; a failure prints one line, then tears everything down.
#
# FW_LAB_DOMAIN_TYPE=kvm|qemu skips the probe; FW_LAB_BOOT_TIMEOUT (s, default 1800) is how long
# the VMs may take to come up, together (`vagrant up`: boot, ssh, networks, the repository's rsync); FW_LAB_STATE (default /run/fw-lab) keeps the logs and the ssh config.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state=${FW_LAB_STATE:-/run/fw-lab}
log=$state/vagrant.log
export FW_LAB_BOX=${FW_LAB_BOX:-fw-lab/bookworm64}
export FW_LAB_MANAGEMENT=isolated FW_LAB_CONSOLE_DIR=$state
export FW_LAB_BOOT_TIMEOUT=${FW_LAB_BOOT_TIMEOUT:-1800}
export VAGRANT_DEFAULT_PROVIDER=libvirt FW_LAB_RUN=$state
MACHINES=(server fw client)
NETWORKS=(fw-lab-mgmt fw-lab-lan fw-lab-wan)
VIRSH=(virsh -q -c qemu:///system)

say() { echo "lab-vms: $*"; }
refuse() {  # MESSAGE: one line; nothing was started
    echo "lab-vms: $*" >&2
    exit 1
}
fail() {  # MESSAGE: one line, then nothing left running
    echo "lab-vms: $*" >&2
    teardown >/dev/null 2>&1 || true
    exit 1
}
vagrant_in_lab() { (cd "$repo/vagrant" && vagrant "$@") >>"$log" 2>&1; }

require_tools() {
    command -v vagrant >/dev/null || refuse "no vagrant (scripts/lab-host.sh install)"
    if ! command -v virsh >/dev/null || ! command -v libvirtd >/dev/null; then
        refuse "no libvirt: virsh or libvirtd is not installed (scripts/lab-host.sh install)"
    fi
    vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt' ||
        refuse "no vagrant-libvirt plugin (scripts/lab-host.sh install)"
}

box_dir() {  # the cached box of the current inputs, if Vagrant holds that very box
    local key installed vagrant_box
    key=$("$repo/scripts/lab-box.sh" --key)
    vagrant_box="${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${FW_LAB_BOX//\//-VAGRANTSLASH-}/0/libvirt"
    [ -f "$vagrant_box/fw-lab-key" ] || refuse "no box $FW_LAB_BOX in Vagrant: run make lab-box"
    installed=$(cat "$vagrant_box/fw-lab-key")
    [ "$installed" = "$key" ] ||
        refuse "stale box: $FW_LAB_BOX was built from other inputs ($installed, now $key): run make lab-box"
    echo "${FW_LAB_CACHE:-/var/cache/fw-lab}/box-$key"
}

network_xml() {  # NAME: isolated (no <forward>); the management network alone has the host and DHCP
    local name=$1
    echo "<network><name>$name</name><bridge name='${name//-/}' stp='off' delay='0'/>"
    if [ "$name" = fw-lab-mgmt ]; then
        echo "<dns enable='no'/><ip address='203.0.113.129' netmask='255.255.255.128'>"
        echo "<dhcp><range start='203.0.113.140' end='203.0.113.250'/></dhcp></ip>"
    fi
    echo "</network>"
}

create_networks() {
    local name xml
    for name in "${NETWORKS[@]}"; do
        xml=$state/$name.xml
        network_xml "$name" >"$xml"
        "${VIRSH[@]}" net-create "$xml" >/dev/null || fail "libvirt refused the network $name"
        if "${VIRSH[@]}" net-dumpxml "$name" | grep -q '<forward'; then
            fail "the network $name forwards: refusing to boot"
        fi
    done
    say "networks ${NETWORKS[*]}: isolated (no forwarding)"
}

domain_type() {  # BOX_DIR: kvm or qemu, from a timed probe boot of the box's kernel
    local type
    if [ -n "${FW_LAB_DOMAIN_TYPE:-}" ]; then
        echo "$FW_LAB_DOMAIN_TYPE"
        return
    fi
    type=$("$repo/scripts/lab-host.sh" accel "$1/vmlinuz" "$1/initrd.img" 2>"$state/accel.log") ||
        fail "$(sed 's/^lab-host: //' "$state/accel.log" | tail -n 1)"
    echo "$type"
}

on() {  # MACHINE COMMAND: run it on the VM over ssh (Vagrant's ssh config, without Vagrant's start-up)
    ssh -F "$state/ssh-config" -o LogLevel=ERROR -o ConnectTimeout=60 \
        -o ControlMaster=auto -o "ControlPath=$state/ssh-%h" -o ControlPersist=300 "$1" "$2"
}

boot_all() {  # one `vagrant up`: vagrant-libvirt boots the VMs in parallel; its lines timestamped
    local start=$SECONDS machine first ready late=()
    (
        cd "$repo/vagrant"
        status=0
        timeout --kill-after=60 "$FW_LAB_BOOT_TIMEOUT" vagrant up --no-provision 2>&1 || status=$?
        echo "$status" >"$state/up.status"
    ) | while IFS= read -r line; do printf '%(%s)T %s\n' -1 "$line"; done >"$state/up.log"
    cat "$state/up.log" >>"$log"
    for machine in "${MACHINES[@]}"; do
        first=$(awk -v m="==> $machine:" 'index($0, m) { print $1; exit }' "$state/up.log")
        ready=$(awk -v m="==> $machine: Machine booted and ready!" 'index($0, m) { print $1; exit }' "$state/up.log")
        if [ -z "$first" ] || [ -z "$ready" ]; then
            late+=("$machine")
        else
            say "$machine booted in $((ready - first)) s (domain type $FW_LAB_DOMAIN_TYPE)"
        fi
    done
    if [ ${#late[@]} -gt 0 ]; then
        late=("${late[@]/%/,}")
        late[-1]=${late[-1]%,}
        fail "the VM ${late[*]} did not come up in $((SECONDS - start)) s (log: $state/up.log; console: $state/NAME.console)"
    fi
    [ "$(cat "$state/up.status")" = 0 ] || fail "vagrant up failed (log: $state/up.log)"
    say "all up in $((SECONDS - start)) s (booted, networks configured, repository copied to /vagrant)"
}

provision_all() {  # the three `vagrant provision` at once, each timed, each with its log
    local machine result failed=()
    for machine in "${MACHINES[@]}"; do
        (
            t=$SECONDS
            status=0
            (cd "$repo/vagrant" && vagrant provision "$machine") >"$state/provision-$machine.log" 2>&1 || status=$?
            echo "$status $((SECONDS - t))" >"$state/provision-$machine.status"
        ) &
    done
    wait
    for machine in "${MACHINES[@]}"; do
        read -r -a result <"$state/provision-$machine.status"
        cat "$state/provision-$machine.log" >>"$log"
        # vagrant may succeed without provisioning ("Domain is not running"): its provisioner must have run.
        if [ "${result[0]}" = 0 ] && grep -q "==> $machine: Running provisioner: $machine " "$state/provision-$machine.log"; then
            say "$machine provisioned in ${result[1]} s"
        else
            failed+=("$machine")
        fi
    done
    [ ${#failed[@]} -eq 0 ] || fail "provisioning ${failed[*]} failed (log: $state/provision-${failed[0]}.log)"
}

slow_start() {
    # Under TCG a Python program starts many times slower: fw.service's readiness wait (15 s for
    # `fw stats` to answer) gets 240 s. Only the wait changes; the service is the shipped unit.
    on fw "sudo install -d /etc/systemd/system/fw.service.d && sudo tee /etc/systemd/system/fw.service.d/tcg.conf" \
        >/dev/null <<'EOF' || fail "could not give fw.service its TCG start-up time"
# scripts/lab-vms.sh: this VM runs under TCG, where fw takes long to start and to answer.
[Service]
TimeoutStartSec=300
ExecStartPost=
ExecStartPost=/usr/bin/timeout 240 /bin/sh -c 'until /usr/local/bin/fw stats >/dev/null 2>&1; do sleep 1; done'
EOF
    say "fw VM: fw.service may take 240 s to answer (TCG)"
}

up() {
    local dir start=$SECONDS
    [ "$(id -u)" = 0 ] || refuse "needs root (libvirt's system instance)"
    install -d "$state"
    : >"$log"
    require_tools
    dir=$(box_dir)
    "$repo/scripts/lab-host.sh" start >>"$log" 2>"$state/host.log" ||
        refuse "$(sed 's/^lab-host: //' "$state/host.log" | tail -n 1)"
    if "${VIRSH[@]}" list --all --name | grep -q '^fw-lab-' ||
        "${VIRSH[@]}" net-list --all --name | grep -q '^fw-lab-'; then
        refuse "the lab is up already (virsh list --all, virsh net-list --all): make lab-vms-down first"
    fi
    rm -f "$state/accel.log"
    FW_LAB_DOMAIN_TYPE=$(domain_type "$dir")
    export FW_LAB_DOMAIN_TYPE
    # What the probe found: progress, on stdout (stderr is for the one line of a failure).
    if [ -f "$state/accel.log" ]; then sed 's/^lab-host: /lab-vms: /' "$state/accel.log"; fi
    create_networks
    boot_all
    (cd "$repo/vagrant" && vagrant ssh-config) >"$state/ssh-config" 2>>"$log" || fail "vagrant ssh-config failed"
    [ "$FW_LAB_DOMAIN_TYPE" = kvm ] || slow_start
    provision_all
    on fw 'sudo fw stats' >>"$log" 2>&1 || fail "fw does not answer on the fw VM (sudo fw stats)"
    say "up in $((SECONDS - start)) s: fw runs on the fw VM; make lab-vms-check, make lab-vms-down"
}

expect() {  # WHAT GOT WANTED: one line, ok or the failure
    if [ "$2" = "$3" ]; then
        say "ok: $1"
    else
        fail "check failed: $1: got '$2', wanted '$3'"
    fi
}

check_web() {
    local url
    for url in http://203.0.113.10/ 'http://[2001:db8:2::10]/'; do
        expect "curl $url from the client, through fw" \
            "$(on client "curl -sS --max-time 20 '$url'" 2>&1)" "hello from the server, through fw"
    done
}

check_ftp() {
    local sum host mode
    sum=$(on server 'sha256sum /srv/ftp/pub/1M.bin' | cut -c1-64)
    for host in 203.0.113.10 '[2001:db8:2::10]'; do
        for mode in on off; do
            expect "FTP download of 1M.bin from $host, passive-mode $mode, its sha256" \
                "$(on client "timeout 120 lftp -e 'set net:max-retries 1; set net:timeout 20; \
                    set ftp:passive-mode $mode; cat pub/1M.bin; bye' '$host' | sha256sum" | cut -c1-64)" "$sum"
        done
    done
}

check_blocked() {
    # A port lab.yaml does not open: the SYN is dropped, so curl times out (28), not refused (7).
    expect "client to 203.0.113.10:8000 is dropped (curl times out)" \
        "$(on client 'curl -sS --max-time 5 -o /dev/null http://203.0.113.10:8000/ 2>/dev/null; echo $?')" 28
    expect "server to the client's ssh is dropped" \
        "$(on server 'nc -z -w 5 198.51.100.10 22 2>/dev/null; echo $?')" 1
}

check_sessions() {  # a slow FTP download, seen live in the fw VM's session table
    local download found="" deadline=$((SECONDS + 120))
    # 1 MiB at 16 KiB/s: a minute, long enough to be seen from a slow VM.
    on client "lftp -e 'set net:limit-rate 16384; cat pub/1M.bin; bye' 203.0.113.10 >/dev/null" &
    download=$!
    while [ -z "$found" ] && [ $SECONDS -lt $deadline ]; do
        found=$(on fw 'sudo fw sessions 2>/dev/null' |
            grep -E '^tcp +198\.51\.100\.10:[0-9]+ +203\.0\.113\.10:21 +ESTABLISHED ' || true)
        [ -n "$found" ] || sleep 1
    done
    kill "$download" 2>/dev/null || true  # seen: the rest of the download is not needed
    wait "$download" 2>/dev/null || true
    [ -n "$found" ] || fail "check failed: fw sessions on the fw VM never showed the client's FTP session"
    say "ok: fw sessions on the fw VM shows the FTP session: $found"
}

check() {
    local start=$SECONDS
    [ -f "$state/ssh-config" ] || refuse "the lab is not up: make lab-vms first"
    check_web
    check_ftp
    check_blocked
    check_sessions
    say "check passed in $((SECONDS - start)) s; tearing down"
    down
}

teardown() {
    local name
    if command -v virsh >/dev/null && "${VIRSH[@]}" version >/dev/null 2>&1; then
        vagrant_in_lab destroy -f || true
        for name in $("${VIRSH[@]}" list --all --name | grep '^fw-lab-' || true); do
            "${VIRSH[@]}" destroy "$name" >/dev/null 2>&1 || true
            "${VIRSH[@]}" undefine "$name" --remove-all-storage >/dev/null 2>&1 || true
        done
        for name in "${NETWORKS[@]}"; do
            "${VIRSH[@]}" net-destroy "$name" >/dev/null 2>&1 || true
            "${VIRSH[@]}" net-undefine "$name" >/dev/null 2>&1 || true
        done
        for name in $("${VIRSH[@]}" vol-list default 2>/dev/null | awk '$1 ~ /^fw-lab-/ { print $1 }'); do
            "${VIRSH[@]}" vol-delete --pool default "$name" >/dev/null || true
        done
    fi
    for name in "$state"/ssh-*; do  # the ssh connections `on` keeps open
        if [ -S "$name" ]; then ssh -o "ControlPath=$name" -O exit fw-lab >/dev/null 2>&1 || true; fi
    done
    "$repo/scripts/lab-host.sh" stop
    rm -f "$state/ssh-config"
}

down() {
    local start=$SECONDS
    install -d "$state"
    teardown
    say "down in $((SECONDS - start)) s: no fw-lab domain, network or volume left"
}

networks() {  # the XML of the networks `up` defines
    local name
    for name in "${NETWORKS[@]}"; do network_xml "$name"; done
}

case "${1:-}" in
up) up ;;
networks) networks ;;
check) check ;;
down) down ;;
*) echo "usage: $0 up|check|down|networks" >&2; exit 2 ;;
esac
