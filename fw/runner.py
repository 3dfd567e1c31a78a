"""One run path for `fw run`: the engine, its records and the services a daemon gets, the same
with one queue (fw.cli.daemon) and in each worker of `--queues A-B` (fw.workers).

How it works. `build` makes the engine (events on, offload as asked), the store's records around it
(events and per-rule counters to the store, periodic snapshots: one file per queue for a worker) and
restores the last snapshot before the first packet. `attach` hooks a started daemon: the offload
service (--offload), the load balancer's (fw.drivers.lb) and the records (and the metrics endpoint
when it serves one). The supervisor of workers serves --metrics itself, from its workers' summed `fw
stats`.
"""

from __future__ import annotations

import gc


def build(policy, store, offload: bool = False, queue: int | None = None, metrics_listen=None,
          nat_slice: tuple[int, int] = (0, 1)):
    """(engine, records) for a daemon (queue None) or the worker of `queue`; `nat_slice`: this
    node's share of the NAT port ranges (active/active HA, fw.sync.slices)."""
    from fw.engine import Engine, EngineConfig  # noqa: PLC0415
    from fw.records import Records  # noqa: PLC0415
    from fw.store import SnapshotStore, default_snapshot_path  # noqa: PLC0415

    engine = Engine(policy, EngineConfig(events=True, offload=offload, nat_slice=tuple(nat_slice)))
    gc.freeze()  # the policy's objects out of the cyclic collector's way
    snapshots = SnapshotStore(default_snapshot_path(queue)) if queue is not None else None
    records = Records(engine, store, snapshots, metrics_listen=metrics_listen)
    records.restore()
    return engine, records


def attach(daemon, records) -> None:
    """Hook offload (if asked), the load balancer's service (health checks, `fw lb`) and the records
    into a started daemon. OSError if the metrics address cannot be bound."""
    from fw.drivers.lb import attach_lb  # noqa: PLC0415

    attach_lb(daemon)
    if daemon.config.offload:
        from fw.drivers.offload import OffloadService  # noqa: PLC0415

        service = OffloadService(daemon.engine)
        service.attach(daemon.effects)
        daemon.services.append(service)
        daemon.stats_sections["offload"] = service.stats
        bindings = getattr(daemon.handler, "bindings", None)  # NAT: the kernel holds established bindings
        if bindings is not None:
            bindings.use_offload(service)  # so a kernel-held translated session is offloaded too
    records.attach(daemon)
