"""The delay proxy of the HA tests (tests/delay_proxy.py): it really delays, by the time asked and
not much more (measured, bounded), each direction, and passes data intact, Redis included."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from fw.sync.link import client_for
from tests.delay_proxy import DelayProxy
from tests.test_sync_helpers import RedisServer, need_redis

SLACK = 0.15  # what a loaded two-core machine may add to a delay (asyncio timers, scheduling)


class EchoServer:
    """Echoes every connection on loopback; records when each connection's first byte arrived."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.first_byte: list[float] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            first = True
            while data := conn.recv(65536):
                if first:
                    self.first_byte.append(time.monotonic())
                    first = False
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def round_trips(address, count: int) -> list[float]:
    times = []
    with socket.create_connection(address, timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(count):
            message = f"ping {index}\n".encode()
            started = time.monotonic()
            conn.sendall(message)
            received = b""
            while len(received) < len(message):
                received += conn.recv(100)
            times.append(time.monotonic() - started)
            assert received == message
    return times


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_a_round_trip_takes_twice_the_delay_and_not_much_more(echo, delay):
    with DelayProxy(("127.0.0.1", 0), echo.address, delay) as proxy:
        times = round_trips(proxy.address, 5)
    assert min(times) >= 2 * delay  # never early: each direction waits its delay
    assert statistics.median(times) <= 2 * delay + SLACK


def test_the_delay_is_one_way_each_direction(echo):
    there, back = [], []
    with DelayProxy(("127.0.0.1", 0), echo.address, 0.1) as proxy:
        for _ in range(5):
            with socket.create_connection(proxy.address, timeout=10) as conn:
                sent = time.monotonic()
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
                there.append(echo.first_byte[-1] - sent)
                back.append(time.monotonic() - echo.first_byte[-1])
    assert min(there) >= 0.1 and min(back) >= 0.1
    assert statistics.median(there) <= 0.1 + SLACK and statistics.median(back) <= 0.1 + SLACK


def test_data_passes_intact_both_ways_with_a_half_close(echo):
    data = os.urandom(3 << 20)
    with DelayProxy(("127.0.0.1", 0), echo.address, 0.02) as proxy:
        with socket.create_connection(proxy.address, timeout=20) as conn:
            writer = threading.Thread(target=lambda: (conn.sendall(data), conn.shutdown(socket.SHUT_WR)))
            writer.start()
            received = bytearray()
            while chunk := conn.recv(1 << 16):  # EOF: the echo server saw our half-close, after the delay
                received += chunk
            writer.join()
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert proxy.counters["bytes:up"] == proxy.counters["bytes:down"] == len(data)


def test_many_connections_at_once(echo):
    with DelayProxy(("127.0.0.1", 0), echo.address, 0.05) as proxy:
        results: list[list[float]] = []
        threads = [threading.Thread(target=lambda: results.append(round_trips(proxy.address, 3))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(results) == 8 and min(min(times) for times in results) >= 0.1
        assert proxy.counters["connections"] == 8


def test_an_upstream_that_is_not_there_closes_the_connection():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", closed_port), 0.05) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as conn:
            assert conn.recv(1) == b""  # closed, not hung
        assert proxy.counters["failed"] == 1


@need_redis
def test_redis_through_the_proxy_is_slow_and_correct():
    server = RedisServer(tcp=True).start()
    try:
        with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", server.port), 0.1) as proxy:
            slow = client_for(f"redis://{proxy.address[0]}:{proxy.address[1]}/0")
            fast = client_for(server.url)
            try:
                slow.ping()  # connected (its handshake is delayed too)
                started = time.monotonic()
                assert slow.set("fw:lab:x", b"\x00\xffvalue")
                assert time.monotonic() - started >= 0.2
                assert fast.get("fw:lab:x") == b"\x00\xffvalue"
                pubsub = fast.pubsub()
                pubsub.subscribe("fw:lab:sync:fw1")
                assert pubsub.get_message(timeout=5)["type"] == "subscribe"
                publisher = threading.Thread(target=slow.publish, args=("fw:lab:sync:fw1", b"announcement"))
                started = time.monotonic()
                publisher.start()  # its reply comes back two delays later; the message is out after one
                message = pubsub.get_message(timeout=5)
                arrived = time.monotonic() - started
                publisher.join(5)
                assert message["data"] == b"announcement" and 0.1 <= arrived <= 0.1 + SLACK
                pubsub.close()
            finally:
                slow.close()
                fast.close()
    finally:
        server.close()


def test_the_script_runs_on_its_own(echo):
    argv = [sys.executable, "tests/delay_proxy.py", "--listen", "127.0.0.1:0", "--upstream",
            f"{echo.address[0]}:{echo.address[1]}", "--delay-ms", "30", "--lifetime", "20"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        host, port = json.loads(process.stdout.readline())["listening"]
        assert min(round_trips((host, port), 3)) >= 0.06
        process.terminate()
        counters = json.loads(process.stdout.readline())
        assert process.wait(10) == 0 and counters["connections"] == 1 and counters["bytes:up"] > 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
