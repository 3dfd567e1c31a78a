"""One node's forwarding link, assembled: what `fw run --forward-to-owner` will attach to its loop.

How it works. `ForwardingNode(config, sync_key, cluster, node, redis_url, mark)` opens the
listening socket (Receiver and its Gate), a Sender sharing that socket (so datagrams leave from the
published address), the directory thread (our address out, the peers' in) and the Owners view.
The daemon's loop then:
- polls `fileno()`; on readable, `receive()` gives the admitted datagrams to run through its engine
  (never to forward again: they carry FORWARDED);
- for a packet of a session in its table, `route_session(owner, forwarded)`; for one it would hold,
  `route_unplaced(forwarded)`; a FORWARD route goes out with `forward(route, packet, hook, iif,
  oif, mark)` (GSO split first), which returns False if nothing went (decide it here then);
- tells it which peers sync hears (`peers_heard(names)`, every tick); the directory's table
  arrives by itself (the thread replaces a dict; `refresh()` folds it into the Owners view, also
  every tick);
- `stats()` is the `forward` section of `fw stats --json` (docs/forwarding.md), `close()` at exit.

`default_listen(redis_url)`: the node's address on the sync link, the source address the kernel
picks toward Redis (a UDP socket connected there, nothing sent), with port 6380, as SPEC says.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fw.sync.forwarding.directory import Directory, DirectoryThread
from fw.sync.forwarding.endpoint import DEFAULT_PORT, Receiver, Sender
from fw.sync.forwarding.gate import Gate, Limits
from fw.sync.forwarding.owner import FORWARD, Owners, Route
from fw.sync.forwarding.report import stats_line
from fw.sync.forwarding.wire import Sealer, forwarding_key


@dataclass(frozen=True)
class ForwardConfig:
    listen: tuple[str, int] | None = None  # None: default_listen(the sync URL)
    mtu: int = 1500  # the sync link's
    limits: Limits = field(default_factory=Limits)
    refresh: float = 5.0  # directory
    ttl: float = 15.0

    def check(self) -> None:
        """ValueError with a message for the operator (`fw run` exits 2 before anything starts)."""
        if not 576 <= self.mtu <= 65535:  # 576: a datagram still carries a TCP segment of 370 bytes
            raise ValueError(f"the sync link's MTU {self.mtu}: expected 576 to 65535")
        limits = self.limits
        if not 40 <= limits.max_packet <= 65535 or limits.window < 32 or limits.max_age <= 0:
            raise ValueError("forwarding limits: a packet of 40 to 65535 bytes, a window of 32 or more, an age over 0")
        if min(limits.packets_per_second, limits.bytes_per_second, limits.burst_seconds) <= 0:
            raise ValueError("forwarding rates and bursts must be above 0")
        if not 0 < self.refresh < self.ttl:
            raise ValueError("the directory is refreshed more often than its entries expire")


def default_listen(redis_url: str, port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Our address toward Redis (the sync link's side), and `port`; ValueError for a unix:// URL."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix" or not parts.hostname:
        raise ValueError("--forward-listen is needed when Redis is reached over a unix socket")
    family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname, parts.port or 6379))  # a route lookup: nothing is sent
        return probe.getsockname()[0], port


class ForwardingNode:
    """The sockets, the directory and the routing of one node (see the module's docstring)."""

    def __init__(self, config: ForwardConfig, sync_key: bytes, cluster: str, node: str, redis_url: str,
                 mark: int = 0):  # fmt: skip
        config.check()
        key = forwarding_key(sync_key, cluster)
        self.node = node
        self.owners = Owners(node)
        self.routes: Counter = Counter()  # route reasons, local and forward
        self.receiver = Receiver(Gate(key, node, self._is_peer, config.limits),
                                 config.listen or default_listen(redis_url), mark=mark)  # fmt: skip
        self.sender = Sender(Sealer(key, node, int(time.time() * 1e6)), mark=mark, sock=self.receiver.sock,
                             mtu=config.mtu, max_packet=config.limits.max_packet)  # fmt: skip
        self.directory = DirectoryThread(redis_url, Directory(cluster, node, key, ttl=config.ttl),
                                         self.receiver.address, mark=mark, refresh=config.refresh)  # fmt: skip
        self._heard: frozenset[str] = frozenset()
        self._seen_peers: dict | None = None

    def start(self) -> ForwardingNode:
        self.directory.start()
        return self

    def _is_peer(self, name: str) -> bool:
        return name in self.owners.alive

    def fileno(self) -> int:
        return self.receiver.fileno()

    def receive(self):
        return [datagram for datagram, _source in self.receiver.receive()]

    def peers_heard(self, names: Iterable[str]) -> None:
        self._heard = frozenset(names) - {self.node}
        self.refresh()

    def refresh(self) -> None:
        """Fold the directory's latest table and the peers heard into the Owners view."""
        peers = self.directory.peers
        if peers is not self._seen_peers or self._heard != self.owners.alive:
            self._seen_peers = peers
            self.owners.update(self._heard, peers)

    def route_session(self, owner: str | None, forwarded: bool) -> Route:
        return self._counted(self.owners.for_session(owner, forwarded))

    def route_unplaced(self, forwarded: bool) -> Route:
        return self._counted(self.owners.for_unplaced(forwarded))

    def _counted(self, route: Route) -> Route:
        self.routes[f"{route.kind}:{route.reason}"] += 1
        return route

    def forward(self, route: Route, packet: bytes, hook: int, iif: str | None, oif: str | None, mark: int = 0) -> bool:
        if route.kind != FORWARD:
            raise ValueError(f"not a forwarding route: {route}")
        return self.sender.forward(route.address, packet, hook, iif, oif, mark) > 0

    def stats(self) -> dict:
        return {"listen": list(self.receiver.address), "sent": self.sender.stats(), "received": self.receiver.stats(),
                "routes": dict(self.routes), "directory": self.directory.stats()}  # fmt: skip

    def stats_line(self) -> str:
        return stats_line(self.stats())

    def close(self) -> None:
        self.directory.close()
        self.sender.close()
        self.receiver.close()
