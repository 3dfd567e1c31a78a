"""The load balancer in the daemon: health checks, drain and enable, `fw lb`, events, Maglev slices.

How it works. One `LbService` per daemon (per worker with `--queues`), attached at start whatever
the policy (a reload may bring virtual servers). It owns a fw.lb.health.HealthChecker whose
epoll fd the daemon's loop watches; the loop also wakes at the checker's `next_due()` (a
`wakeups` entry), so checks start, advance and time out between packet batches, never inside one.
Each HealthChange goes to the engine's load balancer (`engine.nat.lb.apply`: the sans-IO side,
fw/engine_lb.py) and becomes an EVE `lb` event. A health or weight change starts a new Maglev
table; the loop builds it in slices of DEFAULT_BUDGET probes (about a millisecond) between
batches (a `background` entry) and it is swapped in whole when full; until then the old table
answers.

Control commands (fw/cli/lb.py): `lb` (the rows of `fw lb --json`: each virtual server, each real
server's health, weight, active sessions, sessions opened, bytes of its ended sessions, last
check), `lb-drain` and `lb-enable` (`fw lb drain|enable NAME ADDR:PORT`, until the next reload).
A reload rebuilds the balancers (drain is forgotten); the checker keeps the state of targets
whose address, port and check are unchanged, and the servers it holds down are marked down again.

Metrics (fw/metrics.py reads `rows()` through the engine): fw_lb_up, fw_lb_sessions,
fw_lb_opened_total, fw_lb_bytes_total per virtual and real server.
"""

from __future__ import annotations

import logging
import select
import time

from fw.decision import LogEvent
from fw.lb.health import DOWN, UP, HealthChange, HealthChecker
from fw.lb.servers import server_name

log = logging.getLogger("fw.lb")


class LbService:
    """Health checks and `fw lb` of one daemon (see the module docstring)."""

    def __init__(self, daemon, clock=time.monotonic):
        self.daemon = daemon
        self.clock = clock
        self.checker = HealthChecker(daemon.config.mark)
        self.counters = {"changes": 0, "checks_unknown": 0}
        daemon.loop.watch(self.checker.fileno(), select.POLLIN, self._ready)
        daemon.wakeups.append(self.checker.next_due)
        daemon.background.append(self.work)
        daemon.reload_hooks.append(self._reloaded)
        daemon.commands.update({"lb": self.status, "lb-drain": self.drain, "lb-enable": self.enable})
        daemon.stats_sections["virtual_servers"] = self.rows
        self.refresh(clock())

    @property
    def lb(self):
        return self.daemon.engine.nat.lb

    # -- health -----------------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Check what the policy in force asks for; servers the checker holds down stay down."""
        self.checker.replace_targets(self.lb.services.health_targets(), now)
        for key, target in self.checker.targets.items():
            if not target.up:
                self.lb.apply(HealthChange(key, UP, DOWN, "still down"))

    def _reloaded(self, policy, _path, error) -> None:
        if policy is not None:
            self.refresh(self.clock())

    def _ready(self, _events) -> None:
        self.poll(self.clock())

    def poll(self, now: float) -> None:
        """Checks started, advanced and timed out; their state changes applied and logged."""
        for change in self.checker.poll(now):
            self.counters["changes"] += 1
            if not self.lb.apply(change):
                self.counters["checks_unknown"] += 1
                continue
            vs_name, server = change.server
            log.info("virtual server %s: real server %s is %s (%s)", vs_name, server, change.new, change.why)
            self._event(vs_name, server, change.new, change.old, change.why, now)

    def tick(self, now: float) -> None:
        """Once a second from the loop (the checker is also polled when its fd or next_due says)."""
        self.poll(now)

    def work(self) -> bool:
        """Between two batches: the checks that are due, and one slice of a pending Maglev table;
        True while a table is still being built."""
        due = self.checker.next_due()
        if due is not None:
            now = self.clock()
            if due <= now:
                self.poll(now)
        return not self.lb.work()

    # -- control ----------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """`fw lb --json` rows; a last check's time on the wall clock, as what leaves the process."""
        offset = time.time() - self.clock()
        last = {key: (round(at + offset, 3), good, why) for key, (at, good, why) in self.checker.last_checks().items()}
        return self.lb.status(last)

    def status(self, _request: dict) -> dict:
        return {"ok": True, "virtual_servers": self.rows()}

    def drain(self, request: dict) -> dict:
        return self._change(request, "drain")

    def enable(self, request: dict) -> dict:
        return self._change(request, "enable")

    def _change(self, request: dict, what: str) -> dict:
        from fw.drivers.control import error_answer  # noqa: PLC0415

        name, server = str(request.get("name") or ""), canonical_server(str(request.get("server") or ""))
        try:
            getattr(self.lb, what)(name, server)
        except KeyError as exc:
            known = "; ".join(f"{row['name']}: " + ", ".join(s["server"] for s in row["real_servers"])
                              for row in self.lb.status())
            return error_answer(f"{exc.args[0] if exc.args else exc} (virtual servers: {known or 'none'})", 2)
        self._event(name, server, "drained" if what == "drain" else "enabled", None, f"fw lb {what}", self.clock())
        log.info("virtual server %s: real server %s %s on request", name, server,
                 "drained" if what == "drain" else "enabled")
        return {"ok": True, "virtual_server": name, "server": server, "action": what}

    def _event(self, vs_name: str, server: str, state: str, old, why: str, now: float) -> None:
        effects = self.daemon.effects
        if effects is None:
            return
        body = {"virtual_server": vs_name, "real_server": server, "state": state, "why": why}
        if old is not None:
            body["old"] = old
        effects((LogEvent({"event_type": "lb", "time": now, "lb": body}),))

    def close(self) -> None:
        self.daemon.loop.unwatch(self.checker.fileno())
        self.checker.close()


def canonical_server(text: str) -> str:
    """`addr:port` as the balancer names it (`[2001:db8::21]:80`, `2001:0db8::21` normalised)."""
    import ipaddress  # noqa: PLC0415

    address, sep, port = text.rpartition(":")
    address = address.strip("[]")
    try:
        return server_name(str(ipaddress.ip_address(address)), int(port)) if sep else text
    except ValueError:
        return text


def attach_lb(daemon) -> LbService:
    """The LbService of a started daemon (with no virtual servers it checks nothing; a reload may
    bring some)."""
    service = LbService(daemon)
    daemon.services.append(service)
    return service
