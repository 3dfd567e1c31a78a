"""HA session sync over Redis, for firewalls that share traffic (asymmetric paths included).

How it is cut (docs/sync.md tells the whole story):
- `codec`: messages on the wire: canonical JSON, HMAC-SHA256, version, cluster, replay checks.
- `tracker`: which of our sessions changed (new, state, expectations, refreshes, removals) and how a
  peer's session is merged into our table (engine.adopt); who owns a session (claims after a
  node died).
- `hold`: packets whose verdict waits for a peer's announcement (or, with --sync-defer, for Redis).
- `link`: the Redis writer and reader threads (pub/sub for updates, a hash for the snapshot).
- `service`: the daemon side: the packet hook, holds and releases, the wake-up socket, stats.
- `config`: what `fw run --sync` was told; `lab`: the HA lab (two firewalls, asymmetric routes).
- `forwarding`: packets sent to their session's owner over the sync link (docs/forwarding.md);
  `slices`: which NAT port slice (fw.nat.ports) a node takes, from its node id.
"""

from fw.sync.config import SyncConfig, read_key_file

__all__ = ["SyncConfig", "read_key_file", "attach_sync"]


def attach_sync(daemon, config: SyncConfig):
    """Hook sync into a started daemon (a single-queue one, or a worker of --queues: each has its
    own); returns the SyncService."""
    from fw.sync.service import attach_sync as attach  # noqa: PLC0415  (redis only when sync is on)

    return attach(daemon, config)


def stats_line(section: dict) -> str:
    """`fw stats`' line for the sync section of the daemon's stats."""
    redis = section["redis"]
    peers = ", ".join(f"{name} ({peer['last_heard']:.1f} s ago)" for name, peer in section["peers"].items())
    hold, wait = section["hold"], section["hold"]["wait"]
    refused = sum(redis.get("refused", {}).values())
    return (f"sync: node {section['node']}, cluster {section['cluster']}, redis writer {redis['writer']}, "
            f"reader {redis['reader']}; peers: {peers or 'none heard'}; announced "
            f"{sum(section['announced'].values())}, applied {sum(section['applied'].values())}, refused {refused}; "
            f"held {hold['held']} (accepted {hold['accepted']}, dropped {hold['dropped']}, full {hold['full']}), "
            f"wait median {wait['median_ms']} ms, worst {wait['worst_ms']} ms")
