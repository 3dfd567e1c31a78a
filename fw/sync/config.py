"""What `fw run --sync ...` was told, checked: the Redis URL, names, the shared key, the hold.

The key file holds at least 16 bytes (whitespace around them is dropped), e.g. made with
`head -c 32 /dev/urandom | base64 > /etc/fw/sync.key; chmod 600 /etc/fw/sync.key`, the same on
every node of the cluster.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from fw.sync.codec import NAME, load_key

log = logging.getLogger("fw.sync")
SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class SyncConfig:
    """`check()` raises ValueError with a message for the operator."""

    url: str
    node: str
    key: bytes
    cluster: str = "fw"
    hold_ms: int = 50
    defer: bool = False
    max_held: int = 1024
    max_held_bytes: int = 4 << 20
    worker: int | None = None  # the queue of a worker of `fw run --queues` (a sender of its own)
    key_file: str | None = None  # where the key came from (a worker reads it again)

    def describe(self) -> str:
        """The start-up line of `fw run --sync` (the password hidden)."""
        from fw.sync.link import redacted  # noqa: PLC0415  (redis only when sync is on)

        mode = f"hold {self.hold_ms} ms" + (", defer" if self.defer else "")
        return f"sync {redacted(self.url)} as node {self.node} of cluster {self.cluster} ({mode})"

    def for_worker(self) -> dict:
        """What a worker of `--queues` is told (fw.workers: its spec is JSON; the key is read again
        from its file, never passed on a command line)."""
        return {"url": self.url, "node": self.node, "key_file": self.key_file, "cluster": self.cluster,
                "hold_ms": self.hold_ms, "defer": self.defer}

    @classmethod
    def in_worker(cls, spec: dict, queue: int) -> SyncConfig:
        """The config of the worker of `queue` from for_worker()'s dict (ValueError: the key file)."""
        return cls(spec["url"], spec["node"], read_key_file(spec["key_file"]), spec["cluster"], spec["hold_ms"],
                   spec["defer"], worker=queue, key_file=spec["key_file"])

    def check(self) -> None:
        if urlsplit(self.url).scheme not in SCHEMES:
            raise ValueError(f"--sync {self.url}: expected redis://HOST:PORT/DB, rediss://... or unix://PATH")
        for option, name in (("--node-id", self.node), ("--cluster", self.cluster)):
            if not NAME.fullmatch(name):
                raise ValueError(f"{option} {name!r}: 1 to 64 of A-Z a-z 0-9 _ . : -")
        if not 0 <= self.hold_ms <= 10000:
            raise ValueError(f"--sync-hold-ms {self.hold_ms}: expected 0 to 10000")


def read_key_file(path: str) -> bytes:
    """The shared key; ValueError with a message for the operator. Warns if others may read it."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            key = load_key(handle.read(4096))
    except OSError as error:
        raise ValueError(f"cannot read the sync key file {path}: {error.strerror}") from None
    if mode & 0o077:
        log.warning("the sync key file %s can be read by others than its owner (chmod 600 it)", path)
    return key
