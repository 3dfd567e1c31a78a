# cython: annotation_typing=False
"""A real server as the balancer of one worker sees it: address, port, weight, health, counts.

How it works: a `RealServer` is a small mutable record. Its `name` ("addr:port", IPv6 in
brackets) is what Maglev hashes and what events and `fw lb` show; `order` sorts servers the same way
on every node (family, packed address, port), so that table-building schedulers see them in one
order whatever the policy's order. `available` means it may get new sessions: up and weight > 0
(weight 0 drains: its sessions stay, new ones go elsewhere). `active` (sessions open now) and
`opened` (sessions ever opened) are this worker's counts, kept by the `Balancer`.
"""

from __future__ import annotations

import ipaddress


class RealServer:
    """One real server of a virtual server, in one worker."""

    __slots__ = ("address", "packed", "family", "port", "name", "order", "weight", "up", "active", "opened", "choice")

    def __init__(self, address: str, port: int, weight: int = 1, up: bool = True):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range (1-65535)")
        if weight < 0:
            raise ValueError(f"weight {weight} < 0")
        ip = ipaddress.ip_address(address)
        self.address = str(ip)
        self.packed = ip.packed
        self.family = ip.version
        self.port = port
        self.name = server_name(self.address, port)
        self.order = (ip.version, ip.packed, port)
        self.weight = weight
        self.up = up
        self.active = 0
        self.opened = 0
        self.choice = None  # the engine's load balancer's fw.engine_lb.Choice for this server, once made

    @property
    def available(self) -> bool:
        """May get new sessions: up, and not drained (weight > 0)."""
        return self.up and self.weight > 0

    @property
    def health(self) -> str:
        """up | down | drained, as `fw lb` shows it."""
        if not self.up:
            return "down"
        return "up" if self.weight > 0 else "drained"

    def __repr__(self) -> str:
        return f"RealServer({self.name}, weight={self.weight}, {self.health}, active={self.active})"


def server_name(address: str, port: int) -> str:
    """`203.0.113.21:8080`, `[2001:db8::21]:8080`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def in_order(servers) -> list[RealServer]:
    """The servers in the order every node uses (family, packed address, port)."""
    return sorted(servers, key=lambda s: s.order)
