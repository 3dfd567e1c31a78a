"""The Redis side of sync: two threads, so that the packet loop never waits on Redis.

How it works. Keys, per cluster C: the channels `fw:C:sync:NODE` carry every message of node NODE
(pub/sub: the lowest latency; a node that was away catches up from the snapshot instead; one
channel per node, so that a node skips its own messages by the channel's name, unparsed; with
`--queues`, one per worker, `fw:C:sync:NODE/qN`, and a worker skips its node's other workers'
channels too: their sessions' packets never reach it), the hash
`fw:C:sessions` holds one signed session message per flow (field: the flow key as text), the
snapshot a joining or returning node loads.

- `submit` (in the loop's thread) seals a message (fw.sync.codec: sequence, timestamp, MAC) and
  queues it. The writer thread owns one connection; it sends whatever is waiting in one pipeline:
  PUBLISH, and HSET (a session) or HDEL (a removal) on the hash. After the pipeline succeeded it
  reports the tickets it carried (`--sync-defer` releases their packets). While Redis is away,
  `submit` refuses at once (the loop counts it; a new epoch re-announces everything later).
- The reader thread owns another. It subscribes (PSUBSCRIBE fw:C:sync:*), then reads the hash (HSCAN) as the
  snapshot, then delivers live messages. Every message is authenticated and checked for replay
  here (a refusal is counted by reason); our own live messages are skipped.
- The threads' Python work holds the GIL, which the packet loop then waits for (up to a switch
  interval, 5 ms, or two with both threads busy): so they do little of it. Sealing is in the
  loop's thread (its cost is known and small), and a node's own messages are never parsed.
- Both reconnect with exponential backoff (BACKOFF_FIRST doubling to BACKOFF_MAX, with jitter)
  and report `up`/`down`. Commands time out after COMMAND_TIMEOUT, so a hung Redis is a down one.

What the threads find goes to `deliver(event)` (the service: a deque and a wake-up byte for the
loop). Connections are marked with SO_MARK (the daemon's mark) before they connect, so that sync
traffic through hooked INPUT/OUTPUT chains is never queued to ourselves. URLs: redis://, rediss://
(TLS), unix://, with a user and password if Redis wants them.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError
from redis.retry import Retry

from fw.sync.codec import Codec, Refused, ReplayGuard

log = logging.getLogger("fw.sync")

SO_MARK = getattr(socket, "SO_MARK", 36)
COMMAND_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
QUEUE_LIMIT = 20000  # messages waiting for the writer
PIPELINE_BATCH = 500
SCAN_BATCH = 500


def redacted(url: str) -> str:
    """The URL without its password, for logs and `fw stats`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def channel_of(cluster: str, node: str, worker: int | None = None) -> str:
    """The pub/sub channel of a node (`fw:C:sync:NODE`), or of one of its workers (`...:NODE/qN`,
    a name no node id can take: `/` is not allowed in one)."""
    return f"fw:{cluster}:sync:{node}" + (f"/q{worker}" if worker is not None else "")


class MarkedConnection(Connection):
    """A TCP connection whose socket carries SO_MARK before it connects."""

    def __init__(self, *args, mark: int = 0, **kwargs):
        self.mark = mark
        super().__init__(*args, **kwargs)

    def _connect(self):
        error = None
        for family, kind, proto, _name, address in socket.getaddrinfo(self.host, self.port, self.socket_type,
                                                                      socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                if self.mark:
                    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(address)
                sock.settimeout(self.socket_timeout)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"no address for {self.host}")


class MarkedSSLConnection(SSLConnection, MarkedConnection):
    """rediss://: TLS over a marked socket (SSLConnection wraps what MarkedConnection connects)."""


def client_for(url: str, mark: int = 0) -> redis.Redis:
    """A client for `url` that never retries on its own (the threads do, with backoff)."""
    scheme = urlsplit(url).scheme
    options = {"socket_timeout": COMMAND_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
               "retry": Retry(NoBackoff(), 0), "health_check_interval": 5}  # fmt: skip
    if scheme == "redis":
        options.update(connection_class=MarkedConnection, mark=mark)
    elif scheme == "rediss":
        options.update(connection_class=MarkedSSLConnection, mark=mark)
    elif scheme == "unix":
        options.update(connection_class=UnixDomainSocketConnection)
        del options["socket_connect_timeout"]
    else:
        raise ValueError(f"{scheme or 'no'} scheme: expected redis://, rediss:// or unix://")
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **options))


class Backoff:
    def __init__(self, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX):
        self.first, self.most, self.delay = first, most, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = self.first


class RedisLink:
    """The writer and reader threads of one node; `deliver(event)` is called from them:
    ("up"|"down", "writer"|"reader", detail), ("acked", [tickets]), ("snapshot", [messages]),
    ("loaded", count), ("message", Message)."""

    def __init__(self, url: str, cluster: str, codec: Codec, deliver: Callable[[tuple], None], mark: int = 0,
                 acks: bool = False, make_client: Callable[[str, int], redis.Redis] = client_for):
        self.url = url
        self.acks = acks  # report the tickets of what was written (--sync-defer)
        self.cluster = cluster
        self.channel = channel_of(cluster, codec.node, codec.worker)
        self.pattern = f"fw:{cluster}:sync:*"
        self.hash = f"fw:{cluster}:sessions"
        self.codec = codec
        self.guard = ReplayGuard()
        self.deliver = deliver
        self.mark = mark
        self.make_client = make_client
        self.outbox: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self.writer_up = False
        self.reader_up = False
        self.counters: Counter = Counter()  # written by the threads, read by the loop
        self.refused: Counter = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._writer, name="fw-sync-writer", daemon=True),
                         threading.Thread(target=self._reader, name="fw-sync-reader", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def submit(self, item) -> bool:
        """Seal a message and hand it to the writer without waiting; False if Redis is away or the
        queue is full."""
        if not self.writer_up:
            return False
        try:
            self.outbox.put_nowait((item, self.codec.seal(item.kind, item.body, time.time())))
            return True
        except queue.Full:
            self._count("queue_full")
            return False

    def stats(self) -> dict:
        with self._lock:
            return {"writer": "up" if self.writer_up else "down", "reader": "up" if self.reader_up else "down",
                    "waiting": self.outbox.qsize(), **dict(self.counters), "refused": dict(self.refused)}

    def _count(self, name: str, n: int = 1, refused: bool = False) -> None:
        with self._lock:
            (self.refused if refused else self.counters)[name] += n

    # -- the writer -----------------------------------------------------------------------------

    def _writer(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            client = None
            try:
                client = self.make_client(self.url, self.mark)
                client.ping()
                self.writer_up = True
                self._count("connects:writer")
                self.deliver(("up", "writer", ""))
                backoff.reset()
                while not self._stopping.is_set():
                    self._write_batch(client)
            except (RedisError, OSError, ValueError) as error:
                self._went_down("writer", error)
            finally:
                self.writer_up = False
                if client is not None:
                    client.close()
            self._drop_waiting()
            self._stopping.wait(backoff.next())

    def _write_batch(self, client: redis.Redis) -> None:
        try:
            batch = [self.outbox.get(timeout=0.5)]
        except queue.Empty:
            return
        while len(batch) < PIPELINE_BATCH:
            try:
                batch.append(self.outbox.get_nowait())
            except queue.Empty:
                break
        pipe = client.pipeline(transaction=False)
        tickets = []
        for item, blob in batch:
            if item.publish:
                pipe.publish(self.channel, blob)
            if item.kind == "session":
                pipe.hset(self.hash, item.field, blob)
            elif item.kind == "remove":
                pipe.hdel(self.hash, item.field)
            if item.ticket and self.acks:
                tickets.append(item.ticket)
        try:
            pipe.execute()
        except (RedisError, OSError):
            self._count("lost", len(batch))
            raise
        self._count("sent", len(batch))
        if tickets:
            self.deliver(("acked", tickets))

    def _drop_waiting(self) -> None:
        dropped = 0
        while True:
            try:
                self.outbox.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        if dropped:
            self._count("lost", dropped)

    def _went_down(self, which: str, error: BaseException) -> None:
        self._count("errors:" + which)
        self.deliver(("down", which, str(error) or type(error).__name__))

    # -- the reader -----------------------------------------------------------------------------

    def _reader(self) -> None:
        backoff = Backoff()
        node_channel = channel_of(self.cluster, self.codec.node).encode()
        own, workers = node_channel, node_channel + b"/"
        while not self._stopping.is_set():
            client = pubsub = None
            try:
                client = self.make_client(self.url, self.mark)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self.pattern)
                self.reader_up = True
                self._count("connects:reader")
                self.deliver(("up", "reader", ""))
                self._load_snapshot(client)
                backoff.reset()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "pmessage":
                        channel = message["channel"]
                        if channel == own or channel.startswith(workers):
                            self._count("own")
                        else:
                            self._received(message["data"])
            except (RedisError, OSError, ValueError) as error:
                self._went_down("reader", error)
            finally:
                self.reader_up = False
                if pubsub is not None:
                    pubsub.close()
                if client is not None:
                    client.close()
            self._stopping.wait(backoff.next())

    def _load_snapshot(self, client: redis.Redis) -> None:
        """Read the hash; entries we authenticate but that are too old to load (their sessions
        ended without a word, or their nodes are gone) are deleted, so the hash does not grow."""
        cursor, loaded, dead = 0, 0, []
        while True:
            cursor, entries = client.hscan(self.hash, cursor, count=SCAN_BATCH)
            batch = []
            for field, blob in entries.items():
                message = self._check(blob, snapshot=True)
                if message is not None and message.type == "session":
                    batch.append(message)
                elif message is None and self._too_old(blob):
                    dead.append(field)
            if batch:
                loaded += len(batch)
                self.deliver(("snapshot", batch))
            if cursor == 0:
                break
        for start in range(0, len(dead), SCAN_BATCH):
            client.hdel(self.hash, *dead[start:start + SCAN_BATCH])
        self._count("snapshot_loads")
        self._count("snapshot_deleted", len(dead))
        self.deliver(("loaded", loaded))

    def _too_old(self, blob: bytes) -> bool:
        try:
            message = self.codec.open(blob)
        except Refused:
            return False  # not ours to judge (another key, say): left alone
        return time.time() - message.ts > self.guard.snapshot_age

    def _received(self, blob: bytes) -> None:
        message = self._check(blob, snapshot=False)
        if message is not None:
            self._count("received")
            self.deliver(("message", message))

    def _check(self, blob: bytes, snapshot: bool):
        try:
            message = self.codec.open(blob)
            if not snapshot and message.node == self.codec.node:
                self._count("own")  # ours, through another node's channel: not for us
                return None
            self.guard.check(message, time.time(), snapshot=snapshot)
            return message
        except Refused as refusal:
            self._count(refusal.reason, refused=True)
            return None
