# cython: annotation_typing=False
"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): the lookup table.

How it works: each real server has a permutation of the table's M slots (M prime), given by an
`offset` and a `skip` taken from two independent stable hashes of its name ("addr:port"):
slot j of its permutation is (offset + j * skip) mod M; skip is in 1..M-1, so with M prime every
permutation visits every slot. Servers take turns in their fixed order (sorted, see servers.py),
each claiming the next slot of its permutation that is still free, until the table is full; with
weights, a server takes a turn when its credit (its weight added every round) reaches the largest
weight (the paper's "relative frequency of the backends' turns"), so slot counts follow weights.
A flow goes to `slots[hash(flow) mod M]`. When a server leaves, only its slots must change owner;
the others mostly keep theirs (the paper's minimal disruption; bench/lb_bench.py measures it).

Building takes O(M log M) probes, about a fifth of a second in Python at M = 100,003: too long for
the packet path. A `MaglevBuilder` fills a table in steps of at most `budget` probes
(`step(budget)` returns True when done; `steps(budget)` is the same as a generator), so a driver can
interleave it with packets, or `run()` it in a thread; the finished `MaglevTable` is swapped in
whole, and until then the old one answers.
"""

from __future__ import annotations

from array import array

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.lb.hashing import OFFSET, SKIP, stable_hash
from fw.lb.servers import RealServer

DEFAULT_TABLE_SIZE = 65537
DEFAULT_BUDGET = 2000  # probes per step: about a millisecond of Python


def permutation(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a server's permutation of a table of `size` slots (a prime)."""
    data = name.encode()
    return stable_hash(data, OFFSET) % size, stable_hash(data, SKIP) % (size - 1) + 1


class MaglevTable:
    """A finished lookup table: `slots[i]` is an index into `servers` (an array of C ints; empty when
    no server)."""

    __slots__ = ("servers", "slots", "size")

    def __init__(self, servers: tuple[RealServer, ...], slots, size: int):
        self.servers = servers
        self.slots = slots
        self.size = size

    def owner(self, flow_hash: int) -> RealServer | None:
        """The server the table gives this flow hash, whatever its health."""
        if not self.servers:
            return None
        return self.servers[self.slots[flow_hash % self.size]]

    def counts(self) -> dict[str, int]:
        """Slots per server name (for tests and `fw lb`)."""
        result = dict.fromkeys((s.name for s in self.servers), 0)
        for index in self.slots:
            result[self.servers[index].name] += 1
        return result


class MaglevBuilder:
    """Fills one table for `servers` (in the order given, each with weight > 0) in bounded steps."""

    def __init__(self, servers, size: int = DEFAULT_TABLE_SIZE):
        self.servers = tuple(servers)
        self.size = size
        if any(s.weight <= 0 for s in self.servers):
            raise ValueError("a Maglev table holds servers with weight > 0 only")
        count = len(self.servers)
        params = [permutation(s.name, size) for s in self.servers]
        # An array of C ints, not a list: nothing for the cyclic collector to traverse (a list of
        # 65,537 slots would be visited by every full collection while the table is in use).
        self._slots = array("i", [-1]) * size if count else array("i")
        self._position = [offset for offset, _ in params]
        self._skip = [skip for _, skip in params]
        self._weights = [s.weight for s in self.servers]
        self._top = max(self._weights, default=0)
        self._credit = [0] * count
        self._turn = 0
        self._searching = -1  # the server looking for a free slot, -1 between two turns
        self.filled = 0 if count else size
        self.probes = 0

    @property
    def done(self) -> bool:
        return self.filled >= self.size

    @cython.locals(slots="int[:]", size=cython.long, pos=cython.long, skip=cython.long, work=cython.long,
                   limit=cython.long, probed=cython.long, nxt=cython.long)
    def step(self, budget: int = DEFAULT_BUDGET) -> bool:
        """At most about `budget` probes of work; True when the table is full."""
        slots, size, position, skips = self._slots, self.size, self._position, self._skip
        work = 0
        while work < budget and self.filled < size:
            server = self._searching
            if server < 0:
                server = self._next_turn()
                work += 1
                if server < 0:
                    continue
            pos, skip = position[server], skips[server]
            limit = budget - work
            probed = 0
            while slots[pos] >= 0 and probed < limit:
                pos += skip
                if pos >= size:
                    pos -= size
                probed += 1
            work += probed + 1
            if slots[pos] >= 0:  # out of budget in mid-search: resume here next step
                position[server], self._searching = pos, server
                break
            slots[pos] = server
            self.filled += 1
            nxt = pos + skip
            position[server], self._searching = (nxt - size if nxt >= size else nxt), -1
        self.probes += work
        return self.filled >= size

    def _next_turn(self) -> int:
        """The server whose turn it is, or -1 when this server lets its turn pass (low weight)."""
        server = self._turn
        self._turn = server + 1 if server + 1 < len(self.servers) else 0
        self._credit[server] += self._weights[server]
        if self._credit[server] < self._top:
            return -1
        self._credit[server] -= self._top
        return server

    def steps(self, budget: int = DEFAULT_BUDGET):
        """A generator doing one step per iteration (yields the slots filled so far)."""
        while not self.step(budget):
            yield self.filled

    def run(self) -> MaglevTable:
        """Build to the end (in a thread, or where a pause does not matter) and return the table."""
        while not self.step(1 << 30):
            pass
        return self.table()

    def table(self) -> MaglevTable:
        if not self.done:
            raise RuntimeError("the Maglev table is not built yet")
        return MaglevTable(self.servers, self._slots, self.size)


def build_table(servers, size: int = DEFAULT_TABLE_SIZE) -> MaglevTable:
    """A whole table at once."""
    return MaglevBuilder(servers, size).run()


def is_prime(number: int) -> bool:
    """Trial division (table sizes are below 2**24: at most ~2,000 divisions)."""
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    divisor = 3
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 2
    return True


def smallest_prime_at_least(number: int) -> int:
    candidate = max(number, 2)
    while not is_prime(candidate):
        candidate += 1
    return candidate


def default_table_size(servers: int) -> int:
    """The smallest prime >= max(65537, 100 x servers) (SPEC: prime, >= 100 x the real servers)."""
    return smallest_prime_at_least(max(DEFAULT_TABLE_SIZE, 100 * servers))
