#!/usr/bin/env bash
# The server VM: a web server (nginx, port 80) and an anonymous FTP server (vsftpd, active and
# passive), on the lab's server network, reached through the fw VM.
#
#   vagrant/provision-server.sh
#
# Serves /var/www/html/index.html and /srv/ftp/pub/hello.txt; vsftpd's passive ports: 40000-40100.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/install-system-packages.sh" server

echo "hello from the server, through fw" >/var/www/html/index.html
# vsftpd refuses an anonymous root its ftp user could write to: root owns it.
install -d -m 0755 -o root -g root /srv/ftp /srv/ftp/pub
echo "hello over FTP, through fw" >/srv/ftp/pub/hello.txt
head -c 1048576 /dev/urandom >/srv/ftp/pub/1M.bin
install -m 0644 "$repo/vagrant/vsftpd.conf" /etc/vsftpd.conf
systemctl enable nginx vsftpd
systemctl restart nginx vsftpd
