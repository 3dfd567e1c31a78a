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
