"""The store: policy revisions, events and per-rule counters in SQL (SQLite or PostgreSQL), and
session snapshots on disk.

How it is cut: `database.py` opens the database (URL resolution, migrations on first use, errors
as one-line `StoreError`s), `models.py` holds the tables, `policies.py` the revisions, `records.py`
events and counters, `writer.py` the daemon's background event writer, `snapshots.py` the session
snapshots, `explain.py` `fw policy test`'s reasoning. The CLI is fw/cli/store.py.

What the daemon calls (see docs/store.md):
    store = Store(url)                           # url: --db, else $FW_DB, else the netns default
    policy = active_policy(store)                # `fw run` without --policy (StoreError: exit 1)
    load = policy_loader(store)                  # Daemon(..., load_policy=load): reloads read the store
    writer = EventWriter(store, rule_counters=rules).start()   # writer.submit(event) per LogEvent
    snapshots = SnapshotService(engine, SnapshotStore()); snapshots.restore()
"""

from __future__ import annotations

from fw.store.database import NotFound, Store, StoreError, default_url, resolve_url
from fw.store.snapshots import SnapshotError, SnapshotService, SnapshotStore, default_snapshot_path
from fw.store.writer import EventWriter

__all__ = [
    "EventWriter", "NotFound", "SnapshotError", "SnapshotService", "SnapshotStore", "Store", "StoreError",
    "active_policy", "default_snapshot_path", "default_url", "policy_loader", "resolve_url",
]


def active_policy(store: Store | str | None = None):
    """The active revision as a Policy. StoreError when the database fails or none is active;
    fw.policy.PolicyError if the stored revision no longer loads (a newer fw that is stricter)."""
    from fw.store import policies  # noqa: PLC0415

    store = store if isinstance(store, Store) else Store(store)
    with store.session() as session:
        record = policies.active_revision(session)
        if record is None:
            raise StoreError(f"no policy revision is active in {store.label} "
                             "(fw policy load PATH --activate)")
        return policies.policy_of(record)


def policy_loader(store: Store):
    """A `load_policy(path)` for the daemon: `store.label` (the daemon's policy_path when it serves
    the store) loads the active revision, any other path a policy file or folder."""

    def load(path: str):
        if path == store.label:
            return active_policy(store)
        from fw.policy import load_policy  # noqa: PLC0415

        return load_policy(path)

    return load
