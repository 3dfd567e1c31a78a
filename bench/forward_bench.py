"""`python -m bench.forward_bench`: the cost of owner forwarding's pieces, one core, no kernel queue.

- seal: fw.sync.forwarding.wire.Sealer.seal per packet (header, HMAC-SHA256 over it all);
- verify: the receiving gate's full admit (parse, window, tag, age, buckets) per datagram;
- loopback: sender.send + receiver.receive through real UDP sockets on 127.0.0.1, per packet;
- gso: fw.packet.gso.segment of a 64 KiB TCP packet into 1448-byte segments;
- proxy: the round trip through tests/delay_proxy.py at 0, 20 and 200 ms (median and worst of 20),
  when run from the repository's root.
Figures are the median of 5 runs, in microseconds of this process's CPU time (user and system) per
packet; the proxy's round trips are wall-clock milliseconds.
`python -m bench.forward_bench --lab` (root) runs bench.forward_lab instead: forwarding against the
hold in the HA lab, live daemons, fw1's sync delayed 0, 20 and 200 ms.
"""

from __future__ import annotations

import json
import select
import statistics
import sys
import time

from fw.packet import build
from fw.packet.gso import segment
from fw.sync.forwarding.endpoint import Receiver, Sender
from fw.sync.forwarding.gate import Gate, Limits
from fw.sync.forwarding.wire import HOOKS, Sealer, forwarding_key

KEY = forwarding_key(b"bench-key-of-the-cluster-0123456789", "bench")
SIZES = (64, 576, 1500)
N = 20000
RUNS = 5


def tcp_packet(size: int) -> bytes:
    return build.tcp("198.51.100.10", "203.0.113.10", 40000, 80, 1, 1, 0x18, 502, b"", b"x" * (size - 40))


def _median_us(run, count: int) -> float:
    """CPU time of this process (user and system) per item: on shared cores, wall-clock time
    would mostly measure the other processes."""
    times = []
    for _ in range(RUNS):
        started = time.process_time()
        run()
        times.append((time.process_time() - started) / count * 1e6)
    return round(statistics.median(times), 2)


def bench_seal(size: int) -> float:
    sealer, data, now = Sealer(KEY, "fw1", 1), tcp_packet(size), time.time()
    return _median_us(lambda: [sealer.seal(data, now, 2, "lan", "wan") for _ in range(N)], N)


def bench_verify(size: int) -> float:
    sealer, data, now = Sealer(KEY, "fw1", 1), tcp_packet(size), time.time()
    limits = Limits(packets_per_second=1e12, bytes_per_second=1e15, window=4096)
    batches = [[sealer.seal(data, now, 2, "lan", "wan") for _ in range(N)] for _ in range(RUNS)]
    gate, runs = Gate(KEY, "fw2", {"fw1"}.__contains__, limits), iter(batches)

    def run():
        for raw in next(runs):
            gate.admit(raw, now, 100.0)

    return _median_us(run, N)


def bench_loopback(size: int, count: int = 5000) -> float:
    receiver = Receiver(Gate(KEY, "fw2", {"fw1"}.__contains__, Limits(packets_per_second=1e12, bytes_per_second=1e15)),
                        ("127.0.0.1", 0))  # fmt: skip
    sender, data = Sender(Sealer(KEY, "fw1", 1)), tcp_packet(size)

    def run():
        got = 0
        for index in range(count):
            sender.send(receiver.address, data, HOOKS["FORWARD"], "lan", "wan")
            if index % 64 == 63:
                got += len(receiver.receive())
        while got < count and select.select([receiver], [], [], 1)[0]:
            got += len(receiver.receive())

    try:
        return _median_us(run, count)
    finally:
        receiver.close()
        sender.close()


def bench_gso() -> float:
    big = tcp_packet(65535)
    return _median_us(lambda: [segment(big, 1448) for _ in range(20)], 20)


def bench_proxy() -> dict:
    try:
        from tests.delay_proxy import DelayProxy  # noqa: PLC0415  (from the repository's root only)
        from tests.test_delay_proxy import EchoServer, round_trips  # noqa: PLC0415
    except ImportError:
        return {"skipped": "run from the repository's root"}
    figures, echo = {}, EchoServer()
    try:
        for delay_ms in (0, 20, 200):
            with DelayProxy(("127.0.0.1", 0), echo.address, delay_ms / 1000) as proxy:
                times = round_trips(proxy.address, 20)
            figures[f"{delay_ms} ms"] = {"median_ms": round(statistics.median(times) * 1000, 2),
                                         "worst_ms": round(max(times) * 1000, 2)}  # fmt: skip
    finally:
        echo.close()
    return figures


def main() -> None:
    if "--lab" in sys.argv[1:]:
        from bench import forward_lab  # noqa: PLC0415

        forward_lab.main()
        return
    results = {f"{size} B": {"seal_us": bench_seal(size), "verify_us": bench_verify(size),
                             "loopback_send_receive_us": bench_loopback(size)} for size in SIZES}  # fmt: skip
    results["gso_64k_to_1448_us"] = bench_gso()
    results["delay_proxy_round_trip"] = bench_proxy()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
