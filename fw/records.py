"""The daemon's records: session snapshots, events and per-rule counters in the store, metrics.

How it works: `Records` is built by `fw run` around the engine before the daemon starts (so the
snapshot is restored before the first packet), then `attach(daemon)` hooks it into the running
daemon through the hook points the daemon offers, and nothing else: the packet handler's `observe`
(per-rule counters, one call per packet), the effects' `event_sinks` (every LogEvent also goes to
the store's background writer, which never blocks), `reload_hooks` (a reload is recorded),
`stats_sections` (`fw stats` shows rules and the writer) and `services` (periodic snapshot, writer
flush and metrics, each ticked once a second and closed in reverse order at shutdown, after the
queue is drained, so the last snapshot is complete).
"""

from __future__ import annotations

import logging

from fw.metrics import Metrics, RuleCounters
from fw.store import EventWriter, SnapshotService, SnapshotStore, Store
from fw.store.records import reload_event

log = logging.getLogger("fw.records")


class Records:
    def __init__(self, engine, store: Store, snapshots: SnapshotStore | None = None,
                 metrics_listen: tuple[str, int] | None = None):
        self.engine = engine
        self.store = store
        self.rules = RuleCounters()
        self.snapshots = SnapshotService(engine, snapshots or SnapshotStore())
        self.writer = EventWriter(store, rule_counters=self.rules)
        self.metrics_listen = metrics_listen
        self.metrics: Metrics | None = None

    def restore(self) -> int:
        """Sessions from the last snapshot into the engine (before the first packet)."""
        restored = self.snapshots.restore()
        if restored:
            log.info("%d sessions restored from %s", restored, self.snapshots.store.path)
        return restored

    def attach(self, daemon) -> None:
        """Hook into a started daemon. OSError if the metrics address cannot be bound."""
        self.writer.start()
        daemon.handler.observe = self.rules.count
        daemon.effects.event_sinks.append(self.writer.submit)
        daemon.reload_hooks.append(self._record_reload)
        daemon.stats_sections["rules"] = self.rules.as_dict
        daemon.stats_sections["store"] = self.writer.stats
        daemon.services += [self.snapshots, self.writer]
        if self.metrics_listen is not None:
            self.metrics = Metrics(self.engine, rules=self.rules, daemon_counters=daemon.counters,
                                   writer=self.writer, verdicts=daemon.handler.verdicts)
            self.metrics.serve(*self.metrics_listen)
            daemon.services.append(self.metrics)

    def _record_reload(self, policy, path: str, error: str | None) -> None:
        if policy is not None:
            self.writer.submit(reload_event(policy.revision, path))
        else:
            self.writer.submit(reload_event(self.engine.policy.revision, path, ok=False, message=error))
