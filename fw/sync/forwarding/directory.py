"""Where each node listens for forwarded packets, published in Redis and read by its peers.

How it works. Node N of cluster C keeps the key `fw:C:forward:N` (beside fw.sync.link's
`fw:C:sync:N` channels and `fw:C:sessions` hash): a string, one canonical JSON object signed like a
sync message but with the forwarding key (fw.sync.forwarding.wire.forwarding_key):

    {"v": 1, "cluster": C, "node": N, "addr": "192.0.2.1", "port": 6380, "ts": 1764176983.12,
     "mac": "64 hex digits"}

written with an expiry (`ttl`, 15 s) and rewritten every `refresh` (5 s): a node that dies
disappears from the directory by itself, one that comes back publishes again. Peers read every
`fw:C:forward:*` key (SCAN, then MGET) and keep the entries that authenticate, name the key's own
node, and are younger than `ttl` plus the clock slack; the others are counted by reason
(`malformed`, `forged`, `stale`) and ignored. Whoever can write to Redis without the key can hide a
node (it is then not forwarded to: its packets wait or are dropped as without forwarding), not
redirect its packets.

`Directory` is the format and the Redis commands (blocking: call them off the packet loop);
`DirectoryThread` runs them every `refresh` seconds with fw.sync.link's client (SO_MARK, timeouts,
backoff) and keeps `peers` (node -> (address, port)), a dict the loop may read at any time (it is
replaced whole, never changed in place).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from fw.sync.codec import NAME, canonical
from fw.sync.link import Backoff, client_for

log = logging.getLogger("fw.sync")

VERSION = 1
TTL = 15.0
REFRESH = 5.0
CLOCK_SLACK = 30.0  # seconds a peer's clock may be ahead of ours (as sync messages)
FIELDS = {"v": int, "cluster": str, "node": str, "addr": str, "port": int, "ts": (int, float), "mac": str}


class Unusable(Exception):
    """A directory entry we ignore; `reason` is its counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Directory:
    """The listen addresses of one cluster's nodes in Redis, signed with the forwarding key."""

    def __init__(self, cluster: str, node: str, key: bytes, ttl: float = TTL):
        if not NAME.fullmatch(cluster) or not NAME.fullmatch(node):
            raise ValueError("cluster and node names are 1-64 of A-Z a-z 0-9 _ . : -")
        self.cluster, self.node, self.key, self.ttl = cluster, node, key, ttl
        self.prefix = f"fw:{cluster}:forward:"
        self.refused: Counter = Counter()

    def key_of(self, node: str) -> str:
        return self.prefix + node

    def _mac(self, fields: dict) -> str:
        return hmac.new(self.key, canonical(fields), hashlib.sha256).hexdigest()

    def entry(self, address: tuple[str, int], now_wall: float) -> bytes:
        """Our signed entry for `address` (host, port)."""
        fields = {"v": VERSION, "cluster": self.cluster, "node": self.node, "addr": address[0],
                  "port": address[1], "ts": round(now_wall, 3)}  # fmt: skip
        return canonical({**fields, "mac": self._mac(fields)})

    def read_entry(self, node: str, blob: bytes, now_wall: float) -> tuple[str, int]:
        """The (address, port) that `node`'s entry gives; Unusable if we may not use it."""
        try:
            fields = json.loads(blob)
        except (ValueError, TypeError):
            raise Unusable("malformed", "not JSON") from None
        if not isinstance(fields, dict) or set(fields) != set(FIELDS) or any(
                not isinstance(fields[name], kind) or isinstance(fields[name], bool) for name, kind in FIELDS.items()):
            raise Unusable("malformed", "fields missing or of the wrong type")
        mac = fields.pop("mac")
        try:
            expected = self._mac(fields)
        except ValueError:
            raise Unusable("malformed", "a number out of range") from None
        if not hmac.compare_digest(mac, expected):
            raise Unusable("forged", f"the entry of {node}")
        if fields["v"] != VERSION or fields["cluster"] != self.cluster or fields["node"] != node:
            raise Unusable("malformed", "another version, cluster or node")
        if not -CLOCK_SLACK <= now_wall - fields["ts"] <= self.ttl + CLOCK_SLACK or not 0 < fields["port"] < 65536:
            raise Unusable("stale", f"the entry of {node}, {now_wall - fields['ts']:.0f} s old")
        return fields["addr"], fields["port"]

    def publish(self, client, address: tuple[str, int], now_wall: float) -> None:
        client.set(self.key_of(self.node), self.entry(address, now_wall), px=int(self.ttl * 1000))

    def withdraw(self, client) -> None:
        """Remove our entry (a clean stop: peers stop forwarding to us at their next read)."""
        client.delete(self.key_of(self.node))

    def fetch(self, client, now_wall: float) -> dict[str, tuple[str, int]]:
        """Every peer's usable entry (ours left out)."""
        keys = [key for key in client.scan_iter(match=self.prefix + "*", count=500)
                if key.decode(errors="replace") != self.key_of(self.node)]  # fmt: skip
        peers = {}
        for key, blob in zip(keys, client.mget(keys) if keys else [], strict=True):
            node = key.decode(errors="replace")[len(self.prefix):]
            if blob is None:
                continue  # expired between SCAN and MGET
            try:
                peers[node] = self.read_entry(node, blob, now_wall)
            except Unusable as refusal:
                self.refused[refusal.reason] += 1
        return peers


class DirectoryThread:
    """Publishes our address and reads the peers' every `refresh` seconds, off the packet loop."""

    def __init__(self, url: str, directory: Directory, address: tuple[str, int], mark: int = 0,
                 refresh: float = REFRESH, on_change: Callable[[dict], None] | None = None,
                 make_client=client_for):  # fmt: skip
        self.url, self.directory, self.address, self.mark = url, directory, address, mark
        self.refresh, self.on_change, self.make_client = refresh, on_change, make_client
        self.peers: dict[str, tuple[str, int]] = {}
        self.counters: Counter = Counter()
        self._stopping = threading.Event()
        self._soon = threading.Event()  # wake(): a round now, not at the next refresh
        self._thread = threading.Thread(target=self._run, name="fw-forward-directory", daemon=True)

    def start(self) -> DirectoryThread:
        self._thread.start()
        return self

    def wake(self) -> None:
        """Read the peers now (sync hears a peer whose address we lack: it has just started)."""
        self._soon.set()

    def close(self, withdraw: bool = True, timeout: float = 3.0) -> None:
        self._stopping.set()
        self._soon.set()
        self._thread.join(timeout)
        if withdraw:
            try:
                client = self.make_client(self.url, self.mark)
                try:
                    self.directory.withdraw(client)
                finally:
                    client.close()
            except (RedisError, OSError):
                pass  # our entry expires by itself

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            client = None
            try:
                client = self.make_client(self.url, self.mark)
                while not self._stopping.is_set():
                    self._round(client)
                    backoff.reset()
                    self._soon.wait(self.refresh)
                    self._soon.clear()
            except (RedisError, OSError, ValueError) as error:
                self.counters["errors"] += 1
                log.debug("forwarding directory: %s", error)
            finally:
                if client is not None:
                    client.close()
            self._stopping.wait(backoff.next())

    def _round(self, client) -> None:
        now = time.time()
        self.directory.publish(client, self.address, now)
        peers = self.directory.fetch(client, now)
        self.counters["rounds"] += 1
        if peers != self.peers:
            self.peers = peers
            if self.on_change is not None:
                self.on_change(peers)

    def stats(self) -> dict:
        return {"peers": {node: f"{host}:{port}" for node, (host, port) in self.peers.items()},
                **dict(self.counters), "refused": dict(self.directory.refused)}
