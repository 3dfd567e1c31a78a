"""Offline engine benchmarks: packets already in memory, one core, no kernel.

How it works: packets are built once with fw.packet.build (struct, no scapy), then fed to
`Engine.process` in a tight loop timed with perf_counter; each figure is the best of a few runs.
Memory per session is tracemalloc's growth while N established TCP sessions are opened, divided by N.
`bench_nat_established` runs the established loop with and without a source translation in the
same process, alternately, twice each (the machine is shared): the NAT case's replies go to the
translated address and every packet leaves through a RewritePacket. It counts the process's CPU
time (process_time), less disturbed by the other loads of a shared machine than the wall clock.
"""

from __future__ import annotations

import gc
import ipaddress
import tempfile
import time
import tracemalloc
from pathlib import Path

from fw.decision import ACCEPT, Verdicts
from fw.engine import Engine, EngineConfig
from fw.packet import build
from fw.policy import load_policy

SYN, ACK, PSH = 2, 16, 8
CLIENT_NET = ipaddress.ip_network("198.51.100.0/24")
SERVER = "203.0.113.10"
NAT_ADDRESS = "192.0.2.1"
NAT_ENTRY = "nat:\n  - {name: out, type: snat, src: 198.51.100.0/24, to: 192.0.2.1}\n"


def policy_with_rules(count: int, folder: Path, extra: str = "") -> Path:
    """`count` rules of varied protocols, ports and sources; the web rule the benchmark hits is last."""
    lines = ["version: 1", "defaults: {action: drop, log: false}", "rules:"]
    for i in range(count - 1):
        proto = "udp" if i % 10 == 0 else "tcp"
        source = f"192.0.2.{i % 250 + 1}"
        lines.append(
            f"  - {{name: r{i}, action: accept, proto: {proto}, src: {source}, dport: {1024 + i % 60000}}}"
        )
    lines.append("  - {name: web, action: accept, proto: tcp, src: 198.51.100.0/24, dport: [80, 443]}")
    path = folder / f"rules-{count}.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def client_address(i: int) -> str:
    return str(CLIENT_NET.network_address + 2 + i % 250)


def handshake(client: str, sport: int, isn: int = 1000, server_isn: int = 5000, seen: str | None = None,
              ) -> list[bytes]:
    """A handshake; `seen`: the client's address as the server sees it (NAT), else the client's."""
    return [
        build.tcp(client, SERVER, sport, 80, isn, 0, SYN),
        build.tcp(SERVER, seen or client, 80, sport, server_isn, isn + 1, SYN | ACK),
        build.tcp(client, SERVER, sport, 80, isn + 1, server_isn + 1, ACK),
    ]


def established_stream(flows: int, rounds: int, seen: str | None = None, payload: bytes = b"x" * 100,
                       ) -> tuple[list[bytes], list[bytes]]:
    """Handshakes for `flows` flows, then `rounds` data/ack exchanges on each, interleaved
    (`seen`: the clients' translated address, to which the server replies)."""
    setup, traffic = [], []
    for f in range(flows):
        setup += handshake(client_address(f), 10000 + f, seen=seen)
    for r in range(rounds):
        for f in range(flows):
            client, sport = client_address(f), 10000 + f
            seq = 1001 + r * len(payload)
            traffic.append(build.tcp(client, SERVER, sport, 80, seq, 5001, ACK | PSH, payload=payload))
            traffic.append(build.tcp(SERVER, seen or client, 80, sport, 5001, seq + len(payload), ACK))
    return setup, traffic


def timed(engine: Engine, packets: list[bytes], now: float = 1000.0, verdicts: Verdicts | None = None,
          clock=time.perf_counter) -> float:
    """Seconds to run the packets through the engine, counting the verdicts as the packet handler
    does (the engine counts none: the driver gives the final verdict)."""
    verdicts = verdicts if verdicts is not None else Verdicts()
    process, accepted, dropped = engine.process, verdicts.accepted, verdicts.dropped
    start = clock()
    for data in packets:
        decision = process(data, now)
        if decision.verdict == ACCEPT:
            accepted[decision.reason] += 1
        else:
            dropped[decision.reason] += 1
    return clock() - start


def bench_established(repeat: int = 3) -> dict:
    policy = load_policy(policy_with_rules(10, Path(tempfile.mkdtemp())))
    setup, traffic = established_stream(flows=1000, rounds=100)
    best = None
    for _ in range(repeat):
        engine = Engine(policy, EngineConfig(events=False))
        timed(engine, setup)
        verdicts = Verdicts()
        elapsed = timed(engine, traffic, verdicts=verdicts)
        assert verdicts.accepted["established"] >= len(traffic), "benchmark traffic was not all accepted"
        best = elapsed if best is None else min(best, elapsed)
    return _rate("established", len(traffic), best)


def bench_nat_established(rounds: int = 2) -> dict:
    """Established packets/s with and without a translated session, alternately in one process."""
    folder = Path(tempfile.mkdtemp())
    cases = {
        "established": (load_policy(policy_with_rules(10, folder)), established_stream(1000, 100)),
        "established, snat": (load_policy(policy_with_rules(10, Path(tempfile.mkdtemp()), NAT_ENTRY)),
                              established_stream(1000, 100, seen=NAT_ADDRESS)),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (policy, (setup, traffic)) in cases.items():
            engine = Engine(policy, EngineConfig(events=False))
            timed(engine, setup)
            verdicts = Verdicts()
            elapsed = timed(engine, traffic, verdicts=verdicts, clock=time.process_time)
            assert verdicts.accepted["established"] == len(traffic), f"{name}: traffic not all accepted"
            best[name] = min(best.get(name, elapsed), elapsed)
    plain, nat = (_rate(name, len(cases[name][1][1]), best[name]) for name in cases)
    return {"plain": plain, "nat": nat,
            "ratio": round(nat["packets_per_second"] / plain["packets_per_second"], 3)}


def bench_new_sessions(rule_count: int, sessions: int = 50000, repeat: int = 3) -> dict:
    policy = load_policy(policy_with_rules(rule_count, Path(tempfile.mkdtemp())))
    syns = [
        build.tcp(client_address(i), SERVER, 1024 + i % 60000, 80 if i % 2 else 443, 1000, 0, SYN)
        for i in range(sessions)
    ]
    best = None
    for _ in range(repeat):
        engine = Engine(policy, EngineConfig(events=False))
        verdicts = Verdicts()
        elapsed = timed(engine, syns, verdicts=verdicts)
        assert verdicts.accepted["rule:web"] == sessions, "benchmark SYNs were not all accepted by rule web"
        best = elapsed if best is None else min(best, elapsed)
    return _rate(f"new sessions, {rule_count} rules", sessions, best)


def bench_memory(sessions: int) -> dict:
    policy = load_policy(policy_with_rules(10, Path(tempfile.mkdtemp())))
    engine = Engine(policy, EngineConfig(events=False))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(sessions):
        for data in handshake(client_address(i), 1024 + i // 250):
            engine.process(data, 1000.0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    open_sessions = len(engine.table)
    return {
        "name": f"memory per session, {open_sessions} sessions",
        "sessions": open_sessions,
        "bytes_per_session": round((after - before) / max(open_sessions, 1)),
    }


def _rate(name: str, packets: int, seconds: float) -> dict:
    return {
        "name": name,
        "packets": packets,
        "seconds": round(seconds, 4),
        "packets_per_second": round(packets / seconds),
        "us_per_packet": round(seconds / packets * 1e6, 3),
    }
