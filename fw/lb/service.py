"""All the virtual servers of a policy in one worker: found by destination, fed health, listed.

How it works: `VirtualServers(specs, previous)` takes the policy's parsed list
(fw/policy/virtual_servers.py) and builds one `Balancer` per virtual server (at a reload, a maglev
one starts from the previous one's table, its new one built in slices by `work`), plus a dict from
(packed address, proto, port) to it, so the engine finds a new session's virtual server in one
lookup (`lookup`). The daemon's health checker checks `health_targets()` (keys are (virtual server,
real server) name pairs, so one real server behind two virtual servers is checked for each, with
each one's `health`); each `HealthChange` is handed to every worker's `apply`. `drain`/`enable` are
`fw lb drain`/`enable`, `work` and `expire` the background work, `status` the rows of `fw lb
--json`. No I/O, no clock.
"""

from __future__ import annotations

import ipaddress

from fw.lb.balancer import Balancer
from fw.lb.maglev import DEFAULT_BUDGET
from fw.packet.constants import PROTO_NAMES


class VirtualServers:
    """The balancers of one policy, in one worker."""

    def __init__(self, specs=(), previous: VirtualServers | None = None):
        self.specs = {spec.name: spec for spec in specs}
        before = previous.balancers if previous is not None else {}
        self.balancers = {
            spec.name: Balancer(spec.name, [(r.address, r.port, r.weight) for r in spec.real_servers],
                                spec.scheduler, spec.persistence, spec.maglev_table_size, before.get(spec.name))
            for spec in self.specs.values()
        }
        self._by_destination = {
            (ipaddress.ip_address(spec.address).packed, spec.proto, spec.port): spec.name
            for spec in self.specs.values()
        }

    def __len__(self) -> int:
        return len(self.specs)

    def lookup(self, dst: bytes, proto: int, dport: int):
        """(spec, balancer) of the virtual server at this destination, or None."""
        name = self._by_destination.get((dst, proto, dport))
        return None if name is None else (self.specs[name], self.balancers[name])

    def health_targets(self) -> list[tuple[tuple[str, str], str, int, object]]:
        """(key, address, port, HealthSpec) of every real server whose virtual server has `health`."""
        return [((spec.name, server.name), server.address, server.port, spec.health)
                for spec in self.specs.values() if spec.health is not None
                for server in spec.real_servers]

    def apply(self, change) -> bool:
        """A HealthChange whose `server` is a (virtual server, real server) key; False if unknown
        (the policy changed since the check was planned)."""
        vs_name, server_name = change.server
        balancer = self.balancers.get(vs_name)
        if balancer is None or server_name not in balancer.scheduler.by_name:
            return False
        balancer.set_up(server_name, change.new == "up")
        return True

    def drain(self, vs_name: str, server_name: str) -> None:
        """`fw lb drain NAME ADDR:PORT`; KeyError names what is unknown."""
        self._balancer(vs_name).drain(server_name)

    def enable(self, vs_name: str, server_name: str) -> None:
        self._balancer(vs_name).enable(server_name)

    def _balancer(self, vs_name: str) -> Balancer:
        if vs_name not in self.balancers:
            raise KeyError(f"no virtual server '{vs_name}'")
        return self.balancers[vs_name]

    def work(self, budget: int = DEFAULT_BUDGET) -> bool:
        """One step of pending work for each balancer that has some; True when none is left."""
        done = True
        for balancer in self.balancers.values():
            done = balancer.work(budget) and done
        return done

    def expire(self, now: float) -> int:
        return sum(balancer.expire(now) for balancer in self.balancers.values())

    def status(self, last_checks: dict | None = None) -> list[dict]:
        """`fw lb --json` rows; `last_checks` maps health keys to (when, good, why)."""
        last_checks = last_checks or {}
        rows = []
        for name, spec in self.specs.items():
            servers = []
            for server in self.balancers[name].servers:
                last = last_checks.get((name, server.name))
                servers.append({
                    "server": server.name, "health": server.health, "weight": server.weight,
                    "active": server.active, "opened": server.opened,
                    "last_check": None if last is None else {"at": last[0], "ok": last[1], "why": last[2]},
                })
            rows.append({"name": name, "address": spec.address, "proto": PROTO_NAMES[spec.proto],
                         "port": spec.port, "scheduler": spec.scheduler, "real_servers": servers})
        return rows
