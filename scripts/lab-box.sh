#!/usr/bin/env bash
# Build the Vagrant lab's box offline from Debian packages, and add it to Vagrant (`make lab-box`).
#
#   scripts/lab-box.sh [--key]
#
# The VMs of the lab never reach a network beyond this machine, so everything they need is baked in:
# debootstrap (minbase) of Debian 12, then, in a chroot with services kept from starting, the packages
# of the roles fw, server and client (scripts/apt-packages.txt) and what Vagrant needs in a guest
# (ssh with Vagrant's insecure key, sudo, rsync, systemd-networkd); the wheels of fw's dependencies,
# built by the box's own pip (markers follow its Python) in /opt/fw-lab/wheels, checked by an
# offline `pip install` of this checkout there, and /etc/pip.conf pointing pip there (no index).
# The tree becomes an ext4 image without mounting (`mkfs.ext4 -d`), converted to qcow2; the kernel
# and initrd are booted directly (the box's Vagrantfile names them), so the image has no boot loader.
#
# Cached under FW_LAB_CACHE (default /var/cache/fw-lab) by a key, the hash of every input (this
# script, the package list, the dependencies in pyproject.toml): box-KEY/ holds the box, its kernel
# and initrd. An existing box-KEY is only re-added when Vagrant's copy carries another key.
# --key prints the key and exits. FW_LAB_BOX names the box (default fw-lab/bookworm64, what
# scripts/lab-vms.sh gives the Vagrantfile); FW_LAB_MIRROR the Debian mirror (default: the host's).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FW_LAB_CACHE:-/var/cache/fw-lab}
log=$cache/box-build.log
box_name=${FW_LAB_BOX:-fw-lab/bookworm64}
mirror=${FW_LAB_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
disk_size=4G
# What a Vagrant guest needs (beyond the roles' packages): boot, ssh, sudo, rsync, networkd's DHCP.
GUEST_PACKAGES=(linux-image-amd64 initramfs-tools systemd-sysv udev dbus openssh-server sudo rsync
                iputils-ping netbase ca-certificates less)
KERNEL_CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"

say() { echo "lab-box: $*"; }
die() { echo "lab-box: $*" >&2; exit 1; }

role_packages() { "$repo/scripts/install-system-packages.sh" --list fw server client | sort -u; }

dependencies() {
    python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$repo/pyproject.toml"
}

box_key() {
    { cat "$0"; role_packages; dependencies; } | sha256sum | cut -c1-16
}


build_rootfs() {  # ROOT: debootstrap, then the packages in a chroot where no service starts
    local root=$1
    local packages
    mapfile -t packages < <(role_packages)
    debootstrap --variant=minbase --cache-dir="$cache/debs" "$suite" "$root" "$mirror" >"$log" 2>&1 ||
        die "debootstrap failed (see $log)"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    # shellcheck disable=SC2016  # expanded by the chroot's shell
    if ! chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean' \
        sh "${GUEST_PACKAGES[@]}" "${packages[@]}" >>"$log" 2>&1; then
        umount "$root/proc"
        die "installing the packages in the box failed (see $log)"
    fi
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
}

build_wheels() {  # ROOT: wheels of fw's dependencies and build back end, by the box's own Python
    # (environment markers follow its exact version: Debian's 3.11.2 needs wheels the host's
    # Python may not), in /opt/fw-lab/wheels; then `pip install` of this checkout from them alone.
    local root=$1 requirements
    mapfile -t requirements < <(dependencies)
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    rm -rf "$root/tmp/fw-src"
    install -d "$root/tmp/fw-src"
    cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/fw" "$root/tmp/fw-src/"
    # The host's CA certificates (a proxy between it and PyPI may sign with its own CA); none of
    # the host's other pip settings (PIP_* in the environment: paths of the host).
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/tmp/fw-host-ca.crt"
    # shellcheck disable=SC2016  # expanded by the chroot's shell
    if ! chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/tmp/fw-host-ca.crt \
        sh -c 'python3 -m venv /tmp/wheels-venv &&
        /tmp/wheels-venv/bin/pip wheel -q --wheel-dir /opt/fw-lab/wheels "$@" &&
        python3 -m venv /tmp/offline-venv &&
        /tmp/offline-venv/bin/pip install -q --no-index --find-links /opt/fw-lab/wheels /tmp/fw-src' \
        sh "${requirements[@]}" "setuptools>=68" wheel pip >>"$log" 2>&1; then
        umount "$root/proc"
        die "the wheels of fw's dependencies, or fw's offline install from them, failed (see $log)"
    fi
    umount "$root/proc"
    rm -rf "$root/tmp/wheels-venv" "$root/tmp/offline-venv" "$root/tmp/fw-src" "$root/tmp/fw-host-ca.crt" \
        "$root/etc/resolv.conf"
}

vagrant_keys() {  # the directory of Vagrant's insecure key pair
    local dir
    dir=$(ruby -e 'puts Gem::Specification.find_by_name("vagrant").gem_dir' 2>/dev/null)/keys
    [ -r "$dir/vagrant.pub" ] || dir=/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys
    [ -r "$dir/vagrant.pub" ] || die "Vagrant's insecure key (keys/vagrant.pub) not found"
    echo "$dir"
}

configure_guest() {  # ROOT: what Vagrant expects of a box, and pip without an index
    local root=$1
    echo fw-lab >"$root/etc/hostname"
    echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
    # Each VM its own machine-id at first boot (systemd would copy dbus's), and so its own DHCP lease;
    # the lease follows the interface's MAC address anyway.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    # Vagrant restarts systemd-networkd after it sets the hostname: the address and the lease must
    # outlive that (no DHCPRELEASE, addresses kept), or vagrant-libvirt finds no lease for the VM,
    # and under TCG the new one comes too late for Vagrant ("not ready for guest communication").
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nKeepConfiguration=dhcp\n\n[DHCPv4]\nClientIdentifier=mac\nSendRelease=no\n' \
        >"$root/etc/systemd/network/99-management.network"
    chroot "$root" systemctl -q enable systemd-networkd ssh
    # What a lab VM needs not do at boot, under TCG: ext4 scrubbing, trims, man-db, apt.
    chroot "$root" systemctl -q mask e2scrub_reap.service e2scrub_all.timer fstrim.timer man-db.timer
    # Servers start where provisioning says (provision-server.sh), not on every VM.
    chroot "$root" systemctl -q disable nginx vsftpd iperf3 2>/dev/null || true
    chroot "$root" systemctl -q mask apt-daily.timer apt-daily-upgrade.timer
    chroot "$root" useradd -m -s /bin/bash vagrant
    install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
    install -m 0600 -o 1000 -g 1000 "$(vagrant_keys)/vagrant.pub" "$root/home/vagrant/.ssh/authorized_keys"
    echo "vagrant ALL=(ALL) NOPASSWD:ALL" >"$root/etc/sudoers.d/vagrant"
    chmod 0440 "$root/etc/sudoers.d/vagrant"
    echo "UseDNS no" >"$root/etc/ssh/sshd_config.d/vagrant.conf"
    printf '[global]\nno-index = true\nfind-links = /opt/fw-lab/wheels\n' >"$root/etc/pip.conf"
}

package_box() {  # ROOT DIR KEY: kernel, initrd, the qcow2 image and the box file in DIR
    local root=$1 dir=$2 key=$3 final=$4
    install -m 0644 "$(find "$root/boot" -name 'vmlinuz-*' | sort | tail -n 1)" "$dir/vmlinuz"
    install -m 0644 "$(find "$root/boot" -name 'initrd.img-*' | sort | tail -n 1)" "$dir/initrd.img"
    mkfs.ext4 -q -F -L fw-lab -d "$root" "$dir/box.raw" "$disk_size"
    qemu-img convert -O qcow2 "$dir/box.raw" "$dir/box.img"
    rm -f "$dir/box.raw"
    echo "{\"provider\": \"libvirt\", \"format\": \"qcow2\", \"virtual_size\": ${disk_size%G}}" >"$dir/metadata.json"
    cat >"$dir/Vagrantfile" <<EOF
# The fw lab's box (scripts/lab-box.sh, key $key): no boot loader, libvirt boots its kernel directly.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = "$final/vmlinuz"
    lv.initrd = "$final/initrd.img"
    lv.cmd_line = "$KERNEL_CMDLINE"
  end
end
EOF
    echo "$key" >"$dir/fw-lab-key"
    tar -C "$dir" -cf "$dir/fw-lab.box" metadata.json Vagrantfile fw-lab-key box.img
    rm -f "$dir/box.img"
}

box_dir_in_vagrant() { echo "${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${box_name//\//-VAGRANTSLASH-}/0/libvirt"; }

key=$(box_key)
if [ "${1:-}" = --key ]; then
    echo "$key"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--key]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
for tool in debootstrap mkfs.ext4 qemu-img vagrant; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/lab-host-setup.sh installs it)"
done

dir=$cache/box-$key
start=$SECONDS
if [ -f "$dir/fw-lab.box" ]; then
    say "box $key is cached in $dir"
else
    work=$cache/build-$key
    rm -rf "$work" "$dir"
    install -d "$work" "$cache/debs"
    trap 'if mountpoint -q "$work/root/proc"; then umount "$work/root/proc"; fi; rm -rf "$work"' EXIT
    say "building box $key: debootstrap of $suite from $mirror (log: $log)"
    build_rootfs "$work/root"
    say "packages installed ($((SECONDS - start)) s); wheels of fw's dependencies"
    build_wheels "$work/root"
    configure_guest "$work/root"
    install -d "$work/box"
    package_box "$work/root" "$work/box" "$key" "$dir"
    mv "$work/box" "$dir"
    say "built in $((SECONDS - start)) s: $dir ($(du -sh "$dir/fw-lab.box" | cut -f1))"
fi
if [ "$(cat "$(box_dir_in_vagrant)/fw-lab-key" 2>/dev/null)" = "$key" ]; then
    say "Vagrant has box $box_name $key"
else
    vagrant box add -f --name "$box_name" "$dir/fw-lab.box" >/dev/null
    say "added to Vagrant as $box_name"
fi
say "box ready in $((SECONDS - start)) s"
