"""Prometheus metrics (`fw run --metrics HOST:PORT`) and per-rule counters.

How it works: nothing here reads the engine from another thread. The daemon's loop calls
`Metrics.tick(now)` once a second (it is one of the daemon's services); that copies the numbers it
needs from the engine, the rule counters, the daemon's counters and the event writer into a plain
snapshot and swaps it in whole. prometheus-client's HTTP server thread renders the latest snapshot
on each scrape through a custom collector on a registry of our own (not the library's global one).

`RuleCounters` (fw/rule_counters.py, compiled, imported here) holds the per-rule counters:
`count(decision)` is the one per-packet call: it adds the packet to the rule its session was
opened by (or that refused it): packets, bytes and sessions. `deltas()` gives what was counted
since its last call, for the store. The Prometheus HTTP thread reads `totals()`-shaped copies only
(made on the loop's tick).

Metric names (all prefixed fw_): sessions, sessions_limit, expectations, packets_total{verdict,
reason}, rule_packets_total{rule}, rule_bytes_total{rule}, rule_sessions_total{rule},
expectations_made_total, session_events_total{event} (inserts, expiries, evictions, killed, ...),
reloads_total{result}, events_written_total, events_lost_total, policy_info{revision}; per
virtual and real server (labels virtual_server, real_server): lb_up (1: up, 0: down or drained),
lb_sessions (active), lb_opened_total, lb_bytes_total (bytes of its ended sessions, both
directions). Services add families of their own with `add_source(build)`: `build()` runs on the
loop's tick and returns finished families (owner forwarding's fw_forward_*,
fw.sync.forwarding.report).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fw.rule_counters import RuleCounters

__all__ = ["Metrics", "RuleCounters", "parse_listen", "rule_lines"]

SESSION_EVENTS = ("inserts", "expiries", "evictions", "killed", "timeout_resets", "loose_pickups",
                  "restore_errors", "policy_swaps", "alg_refused", "recheck_closed", "recheck_resets",
                  "log_suppressed")


def rule_lines(rules: dict) -> list[str]:
    """`fw stats` text for RuleCounters.as_dict(): one line per rule, busiest first."""
    ordered = sorted(rules.items(), key=lambda item: (-item[1]["packets"], item[0]))
    return [f"  {name}: {c['packets']} packets, {c['bytes']} bytes, {c['sessions']} sessions"
            for name, c in ordered]


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all addresses) -> (host, port); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
    return host or "0.0.0.0", int(port)


class Metrics:
    """The metrics of one daemon. `serve(host, port)`, then `tick(now)` each second, `close()`.

    From an engine (one process), or `Metrics.from_stats(get_stats)` for a supervisor whose numbers
    are its workers' `fw stats` summed (fw.workers)."""

    def __init__(self, engine=None, *, rules: RuleCounters | None = None, daemon_counters: Counter | None = None,
                 writer=None, verdicts=None, read: Callable[[], dict] | None = None):
        self.engine = engine
        self.read = read or self.read_engine
        self.rules = rules
        self.daemon_counters = daemon_counters if daemon_counters is not None else Counter()
        self.writer = writer
        self.verdicts = verdicts  # the packet handler's fw.decision.Verdicts: final verdicts by reason
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.snapshot: dict = {}
        self.sources: list[Callable[[], list]] = []
        self.families: list = []
        self.server = None
        self._thread = None
        self.tick(0.0)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP endpoint (OSError if the address is taken); the address it listens on."""
        self.server, self._thread = start_http_server(port, host, registry=self.registry)
        return self.server.server_address[:2]

    @classmethod
    def from_stats(cls, get_stats: Callable[[], dict]) -> Metrics:
        """Metrics whose numbers come from a `fw stats --json`-shaped dict (see snapshot_of_stats)."""
        return cls(read=lambda: snapshot_of_stats(get_stats()))

    def add_source(self, build: Callable[[], list]) -> None:
        """More metric families: `build()` is called on each tick (the loop's thread)."""
        self.sources.append(build)

    def tick(self, now: float) -> None:
        """Copy the numbers (on the daemon's loop thread) into a new snapshot."""
        self.snapshot = self.read()
        self.families = [family for build in self.sources for family in build()]

    def read_engine(self) -> dict:
        engine = self.engine
        packets = {}
        verdicts = self.verdicts
        if verdicts is not None:  # final verdicts are counted where they are given
            packets = {("accept", r): n for r, n in verdicts.accepted.items()}
            packets.update({("drop", r): n for r, n in verdicts.dropped.items()})
        writer = self.writer.stats() if self.writer is not None else {}
        return {
            "sessions": len(engine.table), "sessions_limit": engine.max_sessions,
            "expectations": len(engine.expectations), "expectations_total": engine.counters["expectations"],
            "packets": packets, "rules": self.rules.totals() if self.rules is not None else {},
            "session_events": {name: engine.counters[name] for name in SESSION_EVENTS},
            "reloads": {"ok": self.daemon_counters["reloads"], "failed": self.daemon_counters["reload_failures"]},
            "events_written": writer.get("written", 0), "events_lost": writer.get("lost", 0),
            "revision": engine.policy.revision,
            "lb": lb_values(engine.nat.lb.status()) if engine.nat.lb.active else [],
        }

    def collect(self):
        """prometheus-client's collector interface: the families of the latest snapshot."""
        s = self.snapshot
        yield GaugeMetricFamily("fw_sessions", "Sessions in the table.", value=s["sessions"])
        if s["sessions_limit"] is not None:
            yield GaugeMetricFamily("fw_sessions_limit", "The table's size limit (options.max_sessions).",
                                    value=s["sessions_limit"])
        yield GaugeMetricFamily("fw_expectations", "ALG expectations waiting.", value=s["expectations"])
        yield CounterMetricFamily("fw_expectations_made", "ALG expectations made.", value=s["expectations_total"])
        family = CounterMetricFamily("fw_packets", "Packets by verdict and reason.", labels=("verdict", "reason"))
        for (verdict, reason), n in sorted(s["packets"].items()):
            family.add_metric((verdict, reason), n)
        yield family
        names = (("packets", "Packets of sessions a rule opened, or that it refused."),
                 ("bytes", "Bytes (IP total length) of those packets."),
                 ("sessions", "Sessions the rule opened."))
        for position, (name, text) in enumerate(names):
            family = CounterMetricFamily(f"fw_rule_{name}", text, labels=("rule",))
            for rule, values in sorted(s["rules"].items()):
                family.add_metric((rule,), values[position])
            yield family
        family = CounterMetricFamily("fw_session_events", "Session table events.", labels=("event",))
        for name, n in s["session_events"].items():
            family.add_metric((name,), n)
        yield family
        family = CounterMetricFamily("fw_reloads", "Policy reloads by result.", labels=("result",))
        for result, n in s["reloads"].items():
            family.add_metric((result,), n)
        yield family
        yield CounterMetricFamily("fw_events_written", "Events written to the store.", value=s["events_written"])
        yield CounterMetricFamily("fw_events_lost", "Events the store did not get (queue full, database "
                                  "failure).", value=s["events_lost"])
        family = GaugeMetricFamily("fw_policy_info", "The policy revision in force.", labels=("revision",))
        family.add_metric((s["revision"] or "",), 1)
        yield family
        yield from lb_families(s.get("lb") or [])
        yield from self.families

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def snapshot_of_stats(stats: dict) -> dict:
    """The metrics snapshot of a `fw stats --json` answer (fw.daemon.Daemon.stats, or the
    supervisor's sum of its workers'). Keys read: sessions.active/.limit/.expectations,
    packets.by_verdict, rules, engine (counters), policy.reloads/.reload_failures/.revision (else
    the last word of policy.summary), store.written/.lost. Missing ones count as 0 (limit: absent)."""
    sessions, policy = stats.get("sessions") or {}, stats.get("policy") or {}
    engine, store = stats.get("engine") or {}, stats.get("store") or {}
    by_verdict = (stats.get("packets") or {}).get("by_verdict") or {}
    packets = {(verdict, reason): n for verdict, reasons in by_verdict.items() for reason, n in reasons.items()}
    rules = {rule: (c.get("packets", 0), c.get("bytes", 0), c.get("sessions", 0))
             for rule, c in (stats.get("rules") or {}).items()}
    summary = str(policy.get("summary") or "").split()
    return {
        "sessions": sessions.get("active", 0), "sessions_limit": sessions.get("limit"),
        "expectations": sessions.get("expectations", 0), "expectations_total": engine.get("expectations", 0),
        "packets": packets, "rules": rules,
        "session_events": {name: engine.get(name, 0) for name in SESSION_EVENTS},
        "reloads": {"ok": policy.get("reloads", 0), "failed": policy.get("reload_failures", 0)},
        "events_written": store.get("written", 0), "events_lost": store.get("lost", 0),
        "revision": policy.get("revision") or (summary[-1] if summary else ""),
        "lb": lb_values(stats.get("virtual_servers") or []),
    }


LB_FAMILIES = (
    ("up", GaugeMetricFamily, "Whether the real server may get new sessions (health up, weight > 0)."),
    ("sessions", GaugeMetricFamily, "Sessions open on the real server."),
    ("opened", CounterMetricFamily, "Sessions the real server was given."),
    ("bytes", CounterMetricFamily, "Bytes (IP total length, both directions) of its ended sessions."),
)


def lb_values(rows: list[dict]) -> list[tuple]:
    """(virtual server, real server, up, sessions, opened, bytes) of `fw lb --json` rows."""
    return [(row["name"], s["server"], int(s["health"] == "up"), s["active"], s["opened"], s.get("bytes", 0))
            for row in rows for s in row["real_servers"]]


def lb_families(values: list[tuple]):
    for position, (name, kind, text) in enumerate(LB_FAMILIES, start=2):
        family = kind(f"fw_lb_{name}", text, labels=("virtual_server", "real_server"))
        for value in values:
            family.add_metric(value[:2], value[position])
        yield family
