"""FTP through NAT (filled in below)."""
