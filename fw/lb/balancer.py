# cython: annotation_typing=False
"""One virtual server's balancing in one worker: its real servers, scheduler and persistence.

How it works: `choose(src, sport, now)` answers a new flow with a real server, or None when none
is available (all down or drained: `lb:all-down`). With persistence, a client whose remembered
server is still available goes back to it; otherwise the scheduler picks and the choice is
remembered. The engine keeps the chosen server in the session for the session's whole life and
reports `opened(server)` and `closed(server)`, which keep the active counts lc/wlc use. Health
(`set_up`) and drain/enable (`set_weight`, `drain`, `enable`) change a server for new flows only.
`work(budget)` runs pending background work (a Maglev table) and `expire(now)` the affinity table;
the driver calls both off the packet path. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from fw.lb.maglev import DEFAULT_BUDGET
from fw.lb.persistence import Affinity
from fw.lb.schedulers import make_scheduler
from fw.lb.servers import RealServer


class Balancer:
    """Real servers of one virtual server; `servers` are (address, port, weight) triples."""

    def __init__(self, name: str, servers, scheduler: str = "wlc", persistence: float = 0,
                 table_size: int | None = None, previous: Balancer | None = None):
        self.name = name
        real = [RealServer(address, port, weight) for address, port, weight in servers]
        self.configured = {s.name: s.weight for s in real}  # what `enable` restores
        self.scheduler = make_scheduler(scheduler, real, table_size,
                                        previous.scheduler if previous is not None else None)
        self.affinity = Affinity(persistence) if persistence else None

    @property
    def servers(self) -> list[RealServer]:
        return self.scheduler.servers

    def server(self, name: str) -> RealServer:
        """The real server called `name` ("addr:port"); KeyError if it is not one of ours."""
        return self.scheduler.by_name[name]

    def choose(self, src: bytes, sport: int, now: float) -> RealServer | None:
        affinity = self.affinity
        if affinity is not None:
            remembered = affinity.lookup(src, now)
            if remembered is not None:
                server = self.scheduler.by_name.get(remembered)
                if server is not None and server.available:
                    affinity.remember(src, server.name, now)
                    return server
        server = self.scheduler.pick(src, sport)
        if server is not None and affinity is not None:
            affinity.remember(src, server.name, now)
        return server

    def opened(self, server: RealServer) -> None:
        server.active += 1
        server.opened += 1

    def closed(self, server: RealServer) -> None:
        server.active -= 1

    def set_up(self, name: str, up: bool) -> None:
        server = self.server(name)
        if server.up != up:
            server.up = up
            self.scheduler.update(server)

    def set_weight(self, name: str, weight: int) -> None:
        if weight < 0:
            raise ValueError(f"weight {weight} < 0")
        server = self.server(name)
        if server.weight != weight:
            server.weight = weight
            self.scheduler.update(server)

    def drain(self, name: str) -> None:
        """No new sessions for this server (weight 0); its sessions stay (`fw lb drain`)."""
        self.set_weight(name, 0)

    def enable(self, name: str) -> None:
        """Back to its configured weight (`fw lb enable`)."""
        self.set_weight(name, self.configured[name])

    def work(self, budget: int = DEFAULT_BUDGET) -> bool:
        """Pending background work, at most about `budget` steps; True when none is left."""
        return self.scheduler.work(budget)

    def expire(self, now: float) -> int:
        return self.affinity.expire(now) if self.affinity is not None else 0
