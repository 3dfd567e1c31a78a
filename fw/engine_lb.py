# cython: annotation_typing=False
"""The engine's load balancer: a new session to a virtual server gets a real server, for life.

How it works. `LoadBalancer` holds the policy's virtual servers in this engine (one
fw.lb.service.VirtualServers: a Balancer per virtual server; `choose` finds one by the packet's
destination port in one dict of ints, then compares address and proto). NAT's destination
decision (fw/engine_nat.py, `Nat.bind`) asks `choose` first, as SPEC says ("the virtual_servers
entry whose address, proto and port the packet targets, else the first matching dnat entry"), and
only for a TCP or UDP session the rules accepted:

- no virtual server at that address, proto and port: None, NAT goes on with its dnat entries;
- a real server (scheduler, persistence, drained and down servers skipped): a `Choice` whose
  destination becomes the session's destination translation (binding names
  `lb:<name>:<addr:port>`); with `full_nat: true` the source is translated too (below);
- none available: an `AllDown` carrying `when_all_down` (reject: a TCP RST or ICMP unreachable
  through the engine's reject path; drop), reason `lb:all-down`.

A balanced session keeps its real server in its NAT Binding (`binding.lb`: this object and the
(virtual server, real server) names) for its whole life, whatever health, drain or the scheduler do
later. Counts per real server are engine state the driver reads (`status`, `counters`): `opened`
when the binding is made (a choice whose binding finds its tuple taken is `refused`: not
counted), `active` until the session is released (`closed`, which also adds the session's bytes,
both directions, to the server's `bytes`: bytes are known when a session ends).
The names, not the objects, identify a server, so a reload (new balancers) keeps the counts of
servers it keeps, and a session whose server left the policy is only forgotten.

full_nat's source: SPEC says "the firewall's address". The engine has no routes, so it takes the
virtual server's own address (an address the firewall answers for, from the policy); the live
daemon's NAT passes give routes, and then it is the route's preferred source toward the real
server, as masquerade's. The port comes from a pool per virtual address over FULL_NAT_PORTS
(the client's port kept when it is in that range and free, else the next free one after the last
handed out: `rotate`, so that a released port is not reused at once toward a real server whose
TIME_WAIT may still hold the tuple).

Nothing here reads a clock or does I/O: `now` comes with the packet; health (`apply`), drain and
enable, `work` (Maglev tables rebuilt in slices) and `expire` (persistence) are the driver's calls,
made off the packet path.
"""

from __future__ import annotations

import ipaddress

from fw.lb.maglev import DEFAULT_BUDGET
from fw.lb.schedulers import maglev_pick
from fw.lb.service import VirtualServers
from fw.nat.ports import Pool

TCP, UDP = 6, 17
ALL_DOWN = "lb:all-down"
# full_nat's source ports: below Linux's default ephemeral range (ip_local_port_range 32768-60999),
# so that the firewall's own connections to a real server (its health checks) never hold the port
# a balanced session's replies come back to.
FULL_NAT_PORTS = (1024, 32767)


class Choice:
    """A real server for a new session: its address and port, and what the binding keeps. Made
    once per (virtual server, real server) and kept on the RealServer (`choice`), with what every
    session to that server has in common: the destination it is translated to (`dst`, `dport`)
    and the checksum differences of that change (`ip_delta`, `l4_delta`: RFC 1624's old - new sum
    of the changed words, mod 0xFFFF; the client's own address and port are in both the old and
    the new tuple, so they cancel), so that a session without source translation needs no
    arithmetic on addresses (fw/engine_nat.py, `_destination_only`)."""

    __slots__ = ("spec", "server", "names", "key", "link", "full_nat", "dst", "dport", "ip_delta", "l4_delta")

    def __init__(self, spec, server, balancer=None, vip: bytes | None = None):
        self.spec = spec
        self.server = server
        self.names = f"lb:{spec.name}:{server.name}"
        self.key = (spec.name, server.name)
        self.link = (balancer, self.key)  # a binding's `lb`, shared by the server's sessions
        self.full_nat = bool(spec.full_nat)
        self.dst, self.dport = server.packed, server.port
        if vip is None:
            vip = ipaddress.ip_address(spec.address).packed
        address_delta = int.from_bytes(vip, "big") - int.from_bytes(server.packed, "big")
        self.ip_delta = address_delta % 0xFFFF if len(vip) == 4 else 0
        self.l4_delta = (address_delta + spec.port - server.port) % 0xFFFF


class Service:
    """One virtual server as `choose` finds it: its packed address and proto (`choose` finds the
    services by port first), spec, balancer, what refuses a session when no real server is
    available, and for maglev without persistence the scheduler itself and its `by_name` (`maglev`:
    its pick is called without going through the balancer)."""

    __slots__ = ("vip", "proto", "spec", "balancer", "refuse", "maglev", "by_name")

    def __init__(self, spec, balancer, vip: bytes):
        self.vip = vip
        self.proto = spec.proto
        self.spec = spec
        self.balancer = balancer
        self.refuse = REFUSE[spec.when_all_down]
        scheduler = balancer.scheduler
        self.maglev = scheduler if balancer.affinity is None and scheduler.name == "maglev" else None
        self.by_name = scheduler.by_name if self.maglev is not None else None


class AllDown:
    """No real server available: the session is refused as `when_all_down` says."""

    __slots__ = ("action", "reason")

    def __init__(self, action: str):
        self.action = action
        self.reason = ALL_DOWN


REFUSE = {"reject": AllDown("reject"), "drop": AllDown("drop")}


class LoadBalancer:
    """The virtual servers of the policy in force, in one engine (worker)."""

    def __init__(self, node: int = 0, nodes: int = 1) -> None:
        self.node, self.nodes = node, nodes  # full_nat's ports: this node's slice (HA active/active)
        self.services = VirtualServers(())
        self.pools: dict[tuple, Pool] = {}  # (family, packed VIP) -> full_nat's source pool
        self.closed_bytes: dict[tuple, int] = {}  # (vs, server) -> bytes of its ended sessions
        self.at: dict = {}  # port -> (Service, ...) there: `choose`'s one lookup (an int's hash)
        self.active = False

    def configure(self, specs) -> None:
        """A new policy's virtual servers. Counts of (virtual server, real server) pairs that stay
        carry over, and persistence's remembered clients; drain and health start afresh (the daemon
        re-applies what its checker knows)."""
        old = self.services
        services = VirtualServers(specs, old)  # maglev: the old tables answer while new ones are built
        for name, balancer in services.balancers.items():
            before = old.balancers.get(name)
            for server in balancer.servers:
                kept = before.scheduler.by_name.get(server.name) if before is not None else None
                if kept is not None:
                    server.active, server.opened = kept.active, kept.opened
            if before is not None and before.affinity is not None and balancer.affinity is not None:
                balancer.affinity.entries = before.affinity.entries  # clients keep their servers
        pools = {}
        for spec in services.specs.values():
            if spec.full_nat:
                packed = ipaddress.ip_address(spec.address).packed
                key = (spec.family, packed)
                pools[key] = self.pools.get(key) or Pool(spec.family, packed, packed, FULL_NAT_PORTS,
                                                         node=self.node, nodes=self.nodes, rotate=True)
        self.services, self.pools = services, pools
        at: dict[int, tuple] = {}
        for spec in services.specs.values():
            vip = ipaddress.ip_address(spec.address).packed
            balancer = services.balancers[spec.name]
            at[spec.port] = at.get(spec.port, ()) + (Service(spec, balancer, vip),)
            for server in balancer.servers:  # what every session to a server shares, made at load
                server.choice = Choice(spec, server, self, vip)
        self.at = at
        self.active = bool(len(services))

    def choose(self, pkt, sport: int, dport: int, now: float):
        """None (no virtual server here), a Choice, or an AllDown."""
        proto = pkt.proto
        if proto != TCP and proto != UDP:
            return None
        here = self.at.get(dport)
        if here is None:
            return None
        dst = pkt.dst
        for service in here:  # (one, unless virtual servers at other addresses share the port)
            if service.proto == proto and service.vip == dst:
                break
        else:
            return None
        if service.maglev is not None:  # balancer.choose without persistence, written out
            server = maglev_pick(service.maglev, pkt.src, sport, service.by_name)
        else:
            balancer = service.balancer
            if balancer.affinity is None:
                server = balancer.scheduler.pick(pkt.src, sport)
            else:
                server = balancer.choose(pkt.src, sport, now)
        if server is None:
            return service.refuse
        server.active += 1  # balancer.opened(server)
        server.opened += 1
        choice = server.choice  # made by `configure` (a reload makes new servers)
        if choice is None:  # a server added since (a test's scheduler.add)
            choice = server.choice = Choice(service.spec, server, self)
        return choice

    def serves(self, pkt, dport: int) -> bool:
        """Whether a virtual server is at the packet's destination (nothing is chosen)."""
        return (pkt.proto == TCP or pkt.proto == UDP) and self.services.lookup(pkt.dst, pkt.proto, dport) is not None

    def source_pool(self, spec) -> Pool:
        return self.pools[(spec.family, ipaddress.ip_address(spec.address).packed)]

    def closed(self, key: tuple, session_bytes: int) -> None:
        """A balanced session ended (its binding released)."""
        server = self._server(key)
        if server is not None and server.active > 0:
            server.active -= 1
        self.closed_bytes[key] = self.closed_bytes.get(key, 0) + session_bytes

    def refused(self, key: tuple) -> None:
        """`choose` picked this server, but the session was not made (its binding found its tuple
        taken: NAT's EXHAUSTED): neither opened nor active. The SYN's next try (or the engine's
        own second bind, after a finished session gave way) chooses again and counts then."""
        server = self._server(key)
        if server is not None:
            if server.active > 0:
                server.active -= 1
            if server.opened > 0:
                server.opened -= 1

    def adopted(self, key: tuple) -> None:
        """A balanced session restored from a snapshot or taken from an HA peer: counted active."""
        server = self._server(key)
        if server is not None:
            server.active += 1

    def _server(self, key: tuple):
        balancer = self.services.balancers.get(key[0])
        return balancer.scheduler.by_name.get(key[1]) if balancer is not None else None

    # -- the driver's calls (off the packet path) ----------------------------------------------

    def apply(self, change) -> bool:
        """A health checker's HealthChange for a (virtual server, real server) key."""
        return self.services.apply(change)

    def drain(self, vs_name: str, server_name: str) -> None:
        self.services.drain(vs_name, server_name)

    def enable(self, vs_name: str, server_name: str) -> None:
        self.services.enable(vs_name, server_name)

    def work(self, budget: int = DEFAULT_BUDGET) -> bool:
        """One slice of pending Maglev builds; True when nothing is left."""
        return self.services.work(budget)

    def expire(self, now: float) -> int:
        return self.services.expire(now)

    def status(self, last_checks: dict | None = None) -> list[dict]:
        """`fw lb --json` rows of this engine, each real server with its `bytes` too."""
        rows = self.services.status(last_checks)
        for row in rows:
            for server in row["real_servers"]:
                server["bytes"] = self.closed_bytes.get((row["name"], server["server"]), 0)
        return rows
