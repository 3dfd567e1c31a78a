"""Sync messages on the wire: canonical JSON, authenticated with HMAC-SHA256, refused when in doubt.

How it works. A message is one JSON object: `v` (FORMAT_VERSION), `cluster`, `node` (the sender),
`seq` (the sender's counter, rising by one per message; it starts at the sender's wall clock in
microseconds, so a restarted node goes on above its old numbers), `ts` (wall clock, seconds),
`type` (session | remove | request | hello) and `body`, and, from a worker of `fw run --queues`, `w`
(its queue: each worker is a sender of its own, with its own sequence), plus `mac`: HMAC-SHA256
with the cluster's shared key over the canonical JSON (sorted keys, no spaces, ASCII) of every
other field. The receiver parses, re-serialises canonically and compares MACs in constant time,
so whitespace or key order cannot matter and a duplicated key cannot smuggle anything past the MAC.

`Codec.open` checks, in this order, each failure a `Refused` with its reason (the counters' names):
`oversize` (more than MAX_MESSAGE bytes), `malformed` (not JSON, not an object, a field missing or
of the wrong type, NaN/Infinity), `version`, `cluster`, `mac`. `ReplayGuard.check` then refuses
`stale` (a timestamp outside the window around our clock: live messages +-REPLAY_WINDOW, snapshot
entries up to SNAPSHOT_MAX_AGE old) and `replay` (a live message whose seq is not above the last
one seen from its sender: a node, or one worker of a node). Pure: no I/O; clocks are arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass

FORMAT_VERSION = 1
MAX_MESSAGE = 256 * 1024  # bytes on the wire
REPLAY_WINDOW = 30.0  # seconds either side of our clock for live messages
SNAPSHOT_MAX_AGE = 900.0  # seconds: older snapshot entries are refused (nodes rewrite theirs every 300 s)
MIN_KEY_BYTES = 16
TYPES = frozenset(("session", "remove", "request", "hello"))
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # node and cluster names
FIELDS = {"v": int, "cluster": str, "node": str, "seq": int, "ts": (int, float), "type": str, "body": dict,
          "mac": str}  # fmt: skip
WORKER_FIELD = "w"  # optional: the queue of the sending worker (fw run --queues)


class Refused(Exception):
    """A message we do not act on; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    node: str
    seq: int
    ts: float
    type: str
    body: dict
    worker: int | None = None  # the sending worker's queue, None from a single-queue node

    @property
    def sender(self) -> tuple[str, int | None]:
        """Whose sequence the message follows: the node, or one of its workers."""
        return (self.node, self.worker)


def canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()  # fmt: skip


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number here")


def load_key(data: bytes) -> bytes:
    """The shared key from a key file's bytes (surrounding whitespace dropped); ValueError if short."""
    key = data.strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the sync key must be at least {MIN_KEY_BYTES} bytes (it has {len(key)})")
    return key


class Codec:
    """Seals our messages and opens (authenticates) everyone's, for one cluster and one key."""

    def __init__(self, key: bytes, cluster: str, node: str, first_seq: int, worker: int | None = None):
        if not NAME.fullmatch(cluster) or not NAME.fullmatch(node):
            raise ValueError("cluster and node names are 1-64 of A-Z a-z 0-9 _ . : -")
        self.key = key
        self.cluster = cluster
        self.node = node
        self.worker = worker
        self.seq = first_seq

    def _mac(self, fields: dict) -> str:
        return hmac.new(self.key, canonical(fields), hashlib.sha256).hexdigest()

    def seal(self, kind: str, body: dict, now_wall: float) -> bytes:
        """One message of ours, ready for the wire (each call takes the next sequence number)."""
        self.seq += 1
        fields = {"v": FORMAT_VERSION, "cluster": self.cluster, "node": self.node, "seq": self.seq,
                  "ts": round(now_wall, 6), "type": kind, "body": body}  # fmt: skip
        if self.worker is not None:
            fields[WORKER_FIELD] = self.worker
        text = canonical(fields)
        mac = hmac.new(self.key, text, hashlib.sha256).hexdigest()
        return text[:-1] + b',"mac":"' + mac.encode() + b'"}'  # the receiver re-serialises anyway

    def open(self, raw: bytes) -> Message:
        """Parse and authenticate one message; Refused with the reason if anything is wrong."""
        if len(raw) > MAX_MESSAGE:
            raise Refused("oversize", f"{len(raw)} bytes")
        try:
            fields = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise Refused("malformed", f"not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise Refused("malformed", "not an object")
        for name, kind in FIELDS.items():
            value = fields.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise Refused("malformed", f"field {name!r} missing or not {getattr(kind, '__name__', 'a number')}")
        worker = fields.get(WORKER_FIELD)
        if worker is not None and (type(worker) is not int or not 0 <= worker <= 65535):
            raise Refused("malformed", "field 'w' is not a queue number")
        expected_fields = len(FIELDS) + (worker is not None)
        if len(fields) != expected_fields or not math.isfinite(fields["ts"]) or fields["type"] not in TYPES:
            raise Refused("malformed", "unknown fields, a bad timestamp or an unknown type")
        if fields["v"] != FORMAT_VERSION:
            raise Refused("version", f"format {fields['v']}, we speak {FORMAT_VERSION}")
        if fields["cluster"] != self.cluster:
            raise Refused("cluster", f"cluster {fields['cluster']!r}, we are {self.cluster!r}")
        mac = fields.pop("mac")
        try:
            expected = self._mac(fields)
        except ValueError:  # a float json.dumps refuses (1e999 parsed as inf)
            raise Refused("malformed", "a number out of range") from None
        if not hmac.compare_digest(mac, expected):
            raise Refused("mac", f"from {fields['node']!r}")
        return Message(fields["node"], fields["seq"], float(fields["ts"]), fields["type"], fields["body"], worker)


class ReplayGuard:
    """Refuses stale and replayed messages: per sender (a node, or a worker of one), the highest seq
    seen so far."""

    def __init__(self, window: float = REPLAY_WINDOW, snapshot_age: float = SNAPSHOT_MAX_AGE):
        self.window = window
        self.snapshot_age = snapshot_age
        self.last: dict[tuple[str, int | None], int] = {}

    def check(self, message: Message, now_wall: float, snapshot: bool = False) -> None:
        """Live messages: fresh and in sequence. Snapshot entries (read back from the cluster's
        hash, possibly minutes old): younger than snapshot_age, sequence not checked."""
        age = now_wall - message.ts
        if snapshot:
            if not -self.window <= age <= self.snapshot_age:
                raise Refused("stale", f"snapshot entry {age:.0f} s old")
            return
        if abs(age) > self.window:
            raise Refused("stale", f"{age:.1f} s off our clock")
        sender = message.sender
        last = self.last.get(sender)
        if last is not None and message.seq <= last:
            raise Refused("replay", f"seq {message.seq} from {message.node!r}, already at {last}")
        self.last[sender] = message.seq
