#!/usr/bin/env bash
# Servers for the README's walkthrough of `fw top`: a web server on 8080 and an anonymous FTP server
# on 21 in the lab's server namespace, each serving a 5 MB file `big.bin`, stopped after a time.
#
#   sudo scripts/lab-servers.sh [PREFIX] [SECONDS]     (default: fwlab- 600)
#
# Files and logs go to /run/fw/lab-PREFIX/servers/. The servers run under `timeout SECONDS`, so
# nothing outlives the walkthrough; `fw lab down` also ends whatever still runs in the namespaces.
set -euo pipefail

prefix=${1:-fwlab-}
seconds=${2:-600}
namespace="${prefix}server"
folder="/run/fw/lab-${prefix}/servers"
ip netns pids "$namespace" >/dev/null 2>&1 || { echo "lab-servers: no namespace $namespace (run make lab first)" >&2; exit 1; }
command -v vsftpd >/dev/null || { echo "lab-servers: vsftpd is not installed (make install)" >&2; exit 1; }

mkdir -p "$folder/www" "$folder/ftp" /var/run/vsftpd/empty
chmod 755 "$folder/ftp"
[ -f "$folder/www/big.bin" ] || head -c 5000000 /dev/urandom > "$folder/www/big.bin"
cp "$folder/www/big.bin" "$folder/ftp/big.bin"
cat > "$folder/vsftpd.conf" <<CONF
listen=YES
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$folder/ftp
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_min_port=30000
pasv_max_port=30100
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
CONF

ip netns exec "$namespace" timeout "$seconds" python3 -m http.server 8080 --directory "$folder/www" \
    >"$folder/http.log" 2>&1 &
ip netns exec "$namespace" timeout "$seconds" vsftpd "$folder/vsftpd.conf" >"$folder/vsftpd.log" 2>&1 &
for _ in $(seq 50); do
    if ip netns exec "$namespace" ss -Hltn | grep -q ':8080 ' && ip netns exec "$namespace" ss -Hltn | grep -q ':21 '; then
        echo "web http://203.0.113.10:8080/big.bin and ftp://203.0.113.10/big.bin for ${seconds} s (files in $folder)"
        exit 0
    fi
    sleep 0.1
done
echo "lab-servers: the servers did not start; see $folder/*.log" >&2
exit 1
