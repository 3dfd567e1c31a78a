# cython: annotation_typing=False
"""Schedulers, as IPVS has them: one class each, `pick(src, sport)` and add/update/remove.

How it works: a scheduler holds one virtual server's real servers in the order every node uses
(servers.py) and answers `pick(src, sport)` (the new flow's source address bytes and port) with a
real server that is `available` (up, weight > 0), or None when there is none: "all down", which
the engine turns into `when_all_down` with reason `lb:all-down`. `add`, `remove` and `update` (after
a server's weight or health changed) keep it current. `work(budget)` does pending background work
(Maglev's table) and returns True when there is none left; the driver calls it off the packet path.

- rr: the next available server after the last one picked (ip_vs_rr).
- wrr: interleaved weighted round robin (ip_vs_wrr): a current weight steps down from the largest
  weight by the weights' gcd; each pass takes the servers whose weight is at least the current one.
- lc / wlc: fewest active sessions, or fewest per unit of weight (ip_vs_lc, ip_vs_wlc; we count
  active sessions only, IPVS adds inactive ones / 256); ties go to the first server in order.
- sh: a stable hash of the source address, modulo the sum of the weights, falls in one server's
  share of that sum (ip_vs_sh's bucket table, with one bucket per unit of weight); when that server
  is not available, the source is hashed again (IPVS's sh-fallback), so other sources stay put.
  A weight change moves sources between servers, as in IPVS; Maglev keeps that to a minimum.
- maglev: see maglev.py; the flow (source address and port) is hashed into the table.
rr, wrr, lc and wlc depend on this worker's history; sh and maglev only on the configuration and
health, so every node with the same ones picks the same server for a flow.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from math import gcd
from operator import attrgetter

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.lb.hashing import SOURCE, flow_hash, stable_hash
from fw.lb.maglev import DEFAULT_BUDGET, MaglevBuilder, MaglevTable, default_table_size
from fw.lb.servers import RealServer, in_order

SH_ATTEMPTS = 32  # hashes tried before taking the first available server in order


class Scheduler:
    """The common part: the servers in order, by name; subclasses define `pick`."""

    name = ""
    consistent = False  # picks depend only on configuration and health (sh, maglev)

    def __init__(self, servers=()):
        self.servers: list[RealServer] = in_order(servers)
        self.by_name = {s.name: s for s in self.servers}
        if len(self.by_name) != len(self.servers):
            raise ValueError("duplicate real server")
        self.changed()

    def add(self, server: RealServer) -> None:
        if server.name in self.by_name:
            raise ValueError(f"real server {server.name} is already there")
        self.by_name[server.name] = server
        self.servers = in_order(self.by_name.values())
        self.changed()

    def remove(self, name: str) -> RealServer:
        server = self.by_name.pop(name)
        self.servers.remove(server)
        self.changed()
        return server

    def update(self, server: RealServer) -> None:
        """`server` (one of ours) changed weight or health."""
        self.changed()

    def changed(self) -> None:
        """The servers or their weights or health changed (subclasses recompute their state)."""

    def work(self, budget: int = DEFAULT_BUDGET) -> bool:
        return True

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        raise NotImplementedError


class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, servers=()):
        self._last_order = None
        self._next = 0
        super().__init__(servers)

    def changed(self) -> None:
        if self._last_order is not None:  # go on after the last one picked, wherever it is now
            self._next = bisect_right([s.order for s in self.servers], self._last_order)

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        servers = self.servers
        count = len(servers)
        for step in range(count):
            index = (self._next + step) % count
            server = servers[index]
            if server.available:
                self._next = index + 1 if index + 1 < count else 0
                self._last_order = server.order
                return server
        return None


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, servers=()):
        self._current = 0  # the current weight
        super().__init__(servers)

    def changed(self) -> None:
        weights = [s.weight for s in self.servers if s.available]
        self._step = 0
        for weight in weights:
            self._step = gcd(self._step, weight)
        self._top = max(weights, default=0)
        self._index = -1  # IPVS restarts the list on a change and keeps the current weight
        if self._current > self._top:
            self._current = 0

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        if self._top == 0:
            return None
        servers = self.servers
        count = len(servers)
        while True:
            self._index = (self._index + 1) % count
            if self._index == 0:
                self._current -= self._step
                if self._current <= 0:
                    self._current = self._top
            server = servers[self._index]
            if server.available and server.weight >= self._current:
                return server


class LeastConnection(Scheduler):
    name = "lc"

    def changed(self) -> None:
        self._available = [s for s in self.servers if s.available]

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        return min(self._available, key=_active, default=None)  # min keeps the first of equals


class WeightedLeastConnection(LeastConnection):
    name = "wlc"

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        return min(self._available, key=_active_per_weight, default=None)


_active = attrgetter("active")


def _active_per_weight(server: RealServer) -> float:
    return server.active / server.weight


class SourceHash(Scheduler):
    name = "sh"
    consistent = True

    def changed(self) -> None:
        self._members = [s for s in self.servers if s.weight > 0]
        self._bounds = list(accumulate(s.weight for s in self._members))
        self._total = self._bounds[-1] if self._bounds else 0

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        if self._total == 0:
            return None
        members, bounds, total = self._members, self._bounds, self._total
        for attempt in range(SH_ATTEMPTS):
            key = src if attempt == 0 else src + attempt.to_bytes(1, "big")
            server = members[bisect_right(bounds, stable_hash(key, SOURCE) % total)]
            if server.available:
                return server
        for server in members:  # nearly everything is down: the first available, in order
            if server.available:
                return server
        return None


class Maglev(Scheduler):
    name = "maglev"
    consistent = True

    def __init__(self, servers=(), table_size: int | None = None, previous: MaglevTable | None = None):
        self.table_size = table_size
        self.table: MaglevTable | None = None
        self.builder: MaglevBuilder | None = None
        if previous is not None and previous.size == (table_size or default_table_size(len(servers))):
            self.table = carried(previous, servers)  # answers (by name) until the new one is built
        super().__init__(servers)

    def changed(self) -> None:
        """Start a new table; the first one is built at once when there is no old one to answer."""
        size = self.table_size or default_table_size(len(self.servers))
        self.builder = MaglevBuilder([s for s in self.servers if s.available], size)
        if self.table is None:
            self.work(1 << 30)

    def work(self, budget: int = DEFAULT_BUDGET) -> bool:
        """One step of the pending table, swapped in whole when it is full."""
        if self.builder is None:
            return True
        if not self.builder.step(budget):
            return False
        self.install(self.builder.table())
        return True

    def install(self, table: MaglevTable) -> None:
        """Swap in a finished table (built here by `work`, or elsewhere by a builder's `run`)."""
        self.table = table
        if self.builder is not None and self.builder.done and self.builder.servers == table.servers:
            self.builder = None

    def pick(self, src: bytes, sport: int) -> RealServer | None:
        return maglev_pick(self, src, sport)

    def _fall_through(self, table: MaglevTable, slot: int) -> RealServer | None:
        """While a new table is being built: the next slot whose server may take the flow."""
        if not any(s.available for s in self.servers):
            return None
        servers, slots, size = table.servers, table.slots, table.size
        for step in range(1, size):
            server = servers[slots[(slot + step) % size]]
            if server.available and self.by_name.get(server.name) is server:
                return server
        return None  # only servers the old table does not know are available: wait for the new one


def maglev_pick(maglev: Maglev, src: bytes, sport: int, by_name: dict | None = None) -> RealServer | None:
    """`Maglev.pick`, a function (the engine's load balancer calls it directly, fw/engine_lb.py,
    with the scheduler's `by_name`, a dict it never replaces): the flow's slot in the table, its
    server if that one may take the flow (up, weight > 0, and still configured: a reload's carried
    table names a removed server's old object), else the fall-through."""
    table: MaglevTable = maglev.table
    servers = table.servers
    if not servers:
        return None
    if cython.compiled:  # the flow's hash as a C number, the slot read from the array's C ints
        slot = _c_flow_slot(src, sport, table.size)  # noqa: F821  (the pxd's)
        server = servers[_c_slot(table.slots, slot)]  # noqa: F821
    else:
        slot = flow_hash(src, sport) % table.size
        server = servers[table.slots[slot]]
    if by_name is None:
        by_name = maglev.by_name  # (compiled: the dict's own get, in C)
    if server.up and server.weight > 0 and by_name.get(server.name) is server:  # available
        return server
    return maglev._fall_through(table, slot)


def carried(table: MaglevTable, servers) -> MaglevTable:
    """An old configuration's table for new server objects (a reload): each slot of a server still
    configured names the new object (so it answers as the new one's health and weight say); a slot
    of a server gone keeps the old object, which `pick` passes over (`_fall_through`)."""
    by_name = {s.name: s for s in servers}
    return MaglevTable(tuple(by_name.get(s.name, s) for s in table.servers), table.slots, table.size)


SCHEDULERS = {
    "rr": RoundRobin, "wrr": WeightedRoundRobin, "lc": LeastConnection,
    "wlc": WeightedLeastConnection, "sh": SourceHash, "maglev": Maglev,
}


def make_scheduler(name: str, servers=(), table_size: int | None = None, previous=None) -> Scheduler:
    """The scheduler called `name` over `servers` (table_size, and `previous`: the scheduler this
    one replaces at a reload, maglev only: its table answers while the new one is built)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}' (expected {', '.join(SCHEDULERS)})")
    if name == "maglev":
        return Maglev(servers, table_size, previous.table if isinstance(previous, Maglev) else None)
    return SCHEDULERS[name](servers)
