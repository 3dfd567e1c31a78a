"""NAT source ports against the host's own ephemeral ports (net.ipv4.ip_local_port_range).

Why: a `masquerade` entry (or an `snat` entry to one of the firewall's own addresses) hands out
ports on an address the host's own sockets use too: the daemon's health checks, its Redis sync
client, any local program. The kernel picks those sockets' source ports from
ip_local_port_range; when a translated session holds the same (address, port) toward the same
server, the server's replies are the kernel's (conntrack finds its own connection and the
daemon's rules let replies of its own connections by), and one of the two connections breaks.
Linux's own NAT has the same hazard and the same remedy: translated ports outside that range.

How it works: `overlaps(entries)` reads the range once and returns one warning line per entry
whose translated address is local (masquerade always; snat when its first address can be bound
here) and whose `ports` overlap the range. `fw run` logs them at start; it refuses nothing (a
small site may accept the risk), and docs/nat.md says how to avoid it.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def local_port_range(path: Path = RANGE_FILE) -> tuple[int, int] | None:
    """(first, last) of the host's ephemeral ports, or None when it cannot be read."""
    try:
        first, last = (int(field) for field in path.read_text().split())
    except (OSError, ValueError):
        return None
    return first, last


def is_local(address: bytes) -> bool:
    """Whether `address` is one of this host's own (a socket can be bound to it)."""
    family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ipaddress.ip_address(address)), 0))
        except OSError:
            return False
    return True


def overlaps(entries, ephemeral: tuple[int, int] | None = None, local=is_local) -> list[str]:
    """One warning line per snat/masquerade entry whose ports may collide with the host's own."""
    ephemeral = ephemeral or local_port_range()
    if ephemeral is None:
        return []
    first, last = ephemeral
    warnings = []
    for entry in entries:
        if entry.type == "masquerade":
            where = "masquerade uses the firewall's own address"
        elif entry.type == "snat" and entry.to_first is not None and local(entry.to_first):
            where = f"snat to {ipaddress.ip_address(entry.to_first)}, one of the firewall's own addresses"
        else:
            continue
        low, high = entry.ports
        if low <= last and first <= high:
            warnings.append(
                f"nat entry {entry.name!r} ({entry.file}:{entry.line}): its ports {low}-{high} overlap this "
                f"host's ip_local_port_range {first}-{last} and {where}: a local connection (health checks, "
                f"sync) and a translated session may meet on one port; give the entry ports outside "
                f"{first}-{last} (e.g. ports: 1024-{first - 1}) or move the range "
                f"(sysctl net.ipv4.ip_local_port_range)")
    return warnings
