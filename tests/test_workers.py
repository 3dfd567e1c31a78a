"""`fw run --queues 0-1`: a worker process per queue, merged views, reload to all, ICMP errors handed on.

The lab tests give the client many addresses: the kernel's `--queue-balance` hash takes the address
pair and the protocol (not the ports), so only many addresses spread flows over both workers.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fw.lab import Lab
from fw.workers import (
    FORWARD_MARK,
    NF_QUEUE,
    IcmpForwarder,
    merge_stats,
    next_queue,
    round_then_hold,
    verdict_message,
)
from tests import netns

SOURCES = [f"198.51.100.{n}" for n in range(101, 117)]
POLICY = """\
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: allow-udp, action: accept, proto: udp, src: 198.51.100.0/24, dport: [7777, 7778]}
"""
RELOADED = POLICY.replace("[7777, 7778]", "[7777, 7778, 7779]")

# Runs in the client namespace: from each source address, one datagram to PORT and wait for an echo
# (or an ICMP error: a connected UDP socket then raises ConnectionRefusedError). Prints the outcomes.
CLIENT = """
import json, socket, sys
address, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
outcomes = {}
for source in sources:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.connect((address, port))
        sock.settimeout(2.0)
        sock.send(b"hello from " + source.encode())
        try:
            outcomes[source] = "echo" if sock.recv(2048).startswith(b"hello") else "other"
        except ConnectionRefusedError:
            outcomes[source] = "refused"
        except TimeoutError:
            outcomes[source] = "timeout"
print(json.dumps(outcomes))
"""


# -- the pieces -----------------------------------------------------------------------------------


def test_verdict_message_moves_a_packet_to_another_queue():
    message = verdict_message(1, 0x1234, NF_QUEUE | 0 << 16, FORWARD_MARK | 1)
    length, kind, flags = struct.unpack_from("=IHH", message)
    assert length == len(message) == 16 + 4 + 12 + 8
    assert kind == (3 << 8) | 1 and flags == 1  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT; a request, no ack
    assert struct.unpack_from("!BBH", message, 16) == (0, 0, 1)  # nfgenmsg: queue 1
    assert struct.unpack_from("=HH", message, 20) == (12, 2)  # NFQA_VERDICT_HDR
    assert struct.unpack_from("!II", message, 24) == (3, 0x1234)  # NF_QUEUE to queue 0, packet id
    assert struct.unpack_from("=HH", message, 32) == (8, 3)  # NFQA_MARK
    assert struct.unpack_from("!I", message, 36) == (0x66770001,)
    to_queue_5 = verdict_message(4, 7, NF_QUEUE | 5 << 16)
    assert struct.unpack_from("!I", to_queue_5, 24) == (0x00050003,) and len(to_queue_5) == 32


def test_a_batch_verdict_accepts_every_packet_up_to_an_id():
    message = verdict_message(2, 0xFFFFFFF0, 1, batch=True)  # NF_ACCEPT
    assert struct.unpack_from("=IHH", message) == (32, (3 << 8) | 3, 1)  # NFQNL_MSG_VERDICT_BATCH
    assert struct.unpack_from("!BBH", message, 16) == (0, 0, 2)
    assert struct.unpack_from("=HH", message, 20) == (12, 2)
    assert struct.unpack_from("!II", message, 24) == (1, 0xFFFFFFF0)


def test_an_icmp_error_goes_round_the_queues_once():
    assert [next_queue(q, 2, 4) for q in (2, 3, 4)] == [3, 4, 2]
    first = IcmpForwarder(2, 2, 4, send=None)
    assert first.target(0) == (3, 2)  # came here first: on to 3, remembering 2
    assert IcmpForwarder(3, 2, 4, None).target(FORWARD_MARK | 2) == (4, 2)
    assert IcmpForwarder(4, 2, 4, None).target(FORWARD_MARK | 2) is None  # next would be 2: all asked
    assert first.target(0x12345678) == (3, 2)  # a mark of someone else's is not ours
    assert IcmpForwarder(0, 0, 1, None).target(0) == (1, 0)
    assert IcmpForwarder(1, 0, 1, None).target(FORWARD_MARK | 0) is None


def test_with_sync_an_icmp_error_goes_round_the_queues_before_it_may_be_held():
    calls = []

    def forwarder(packet, decision):
        calls.append(("round", decision.reason))
        return decision.reason == "invalid:no-session"  # handed on: the next queue decides

    def hold(packet, data, decision):
        calls.append(("hold", decision.reason))
        return False

    defer = round_then_hold(forwarder, hold)
    no_session = SimpleNamespace(verdict="drop", reason="invalid:no-session")
    assert defer(None, b"", no_session) is True and calls == [("round", "invalid:no-session")]
    calls.clear()
    assert defer(None, b"", SimpleNamespace(verdict="drop", reason="default")) is False
    assert calls == [("round", "default"), ("hold", "default")]
    calls.clear()
    defer(None, b"", SimpleNamespace(verdict="accept", reason="established"))
    assert calls == [("hold", "established")]  # accepted: never handed on


def test_worker_stats_are_summed():
    one = {"version": 1, "pid": 10, "mode": "fail-closed", "packets": {"total": 5, "accept": 4, "drop": 1,
           "by_verdict": {"accept": {"established": 4}, "drop": {"default": 1}}},
           "sessions": {"active": 2}, "queues": {"0": {"overflows": 0}}, "engine": {"inserts": 2}}
    two = {"version": 1, "pid": 11, "mode": "fail-closed", "packets": {"total": 7, "accept": 7, "drop": 0,
           "by_verdict": {"accept": {"established": 5, "rule:a": 2}, "drop": {}}},
           "sessions": {"active": 3}, "queues": {"1": {"overflows": 4}}, "engine": {"inserts": 3, "icmp_forwarded": 1}}
    merged = merge_stats([one, two], {"pid": 1, "workers": []})
    assert merged["packets"] == {"total": 12, "accept": 11, "drop": 1,
                                 "by_verdict": {"accept": {"established": 9, "rule:a": 2}, "drop": {"default": 1}}}
    assert merged["sessions"] == {"active": 5}
    assert merged["queues"] == {"0": {"overflows": 0}, "1": {"overflows": 4}}
    assert merged["engine"] == {"inserts": 5, "icmp_forwarded": 1}
    assert merged["pid"] == 1 and merged["workers"] == []


def test_the_workers_sync_sections_merge_as_one_nodes():
    def section(loaded, heard, held, worst):
        return {"node": "fw1", "loaded": loaded, "announced": {"new": 2}, "mode": {"hold_ms": 50, "defer": False},
                "peers": {"fw2": {"last_heard": heard, "sessions": 4, "alive": True}},
                "hold": {"held": held, "wait": {"count": held, "median_ms": 1.0, "worst_ms": worst}},
                "defer": {"deferred": 0, "wait": {"count": 0, "median_ms": 0.0, "worst_ms": 0.0}}}

    merged = merge_stats([{"sync": section(True, 0.7, 3, 2.0)}, {"sync": section(False, 0.2, 5, 9.0)}], {})["sync"]
    assert merged["node"] == "fw1" and merged["announced"] == {"new": 4} and merged["loaded"] is False
    assert merged["mode"] == {"hold_ms": 50, "defer": False}
    assert merged["peers"] == {"fw2": {"last_heard": 0.2, "sessions": 4, "alive": True}}  # not summed
    assert merged["hold"] == {"held": 8, "wait": {"count": 8, "median_ms": 1.0, "worst_ms": 9.0}}


# -- in the lab -------------------------------------------------------------------------------------


def exchange(lab: Lab, port: int) -> dict[str, str]:
    done = lab.run("client", [sys.executable, "-c", CLIENT, "203.0.113.10", port, ",".join(SOURCES)], timeout=60)
    return json.loads(done.stdout)


@pytest.fixture
def many_clients(lab: Lab) -> Lab:
    for address in SOURCES:
        lab.run("client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    return lab


@pytest.mark.netns
@pytest.mark.root
def test_two_workers_share_the_flows_and_merge_their_views(many_clients: Lab, daemon, tmp_path: Path):
    lab = many_clients
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    fw = daemon(policy, "--queues", "0-1")
    with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}

    stats = json.loads(fw.fw("stats", "--json").stdout)
    workers = stats["workers"]
    assert [w["queue"] for w in workers] == [0, 1] and all(w["pid"] and w["restarts"] == 0 for w in workers)
    assert len({w["pid"] for w in workers} | {stats["pid"]}) == 3  # two workers under a supervisor
    assert stats["sessions"]["active"] == len(SOURCES) == sum(w["sessions"] for w in workers)
    assert all(w["sessions"] > 0 for w in workers), workers  # 16 address pairs: both queues get some
    assert stats["packets"]["by_verdict"]["accept"] == {"rule:allow-udp": 16, "established": 16}
    assert stats["packets"]["total"] == 32 == sum(w["packets"] for w in workers)
    assert set(stats["queues"]) == {"0", "1"}

    sessions = json.loads(fw.fw("sessions", "--json").stdout)
    assert sessions["count"] == 16
    by_source = {s["original"]["src"]: s for s in sessions["sessions"]}
    assert set(by_source) == set(SOURCES)
    assert all(s["state"] == "REPLIED" and s["original"]["dport"] == 7777 for s in by_source.values())
    per_queue = {w["queue"]: w["sessions"] for w in workers}
    assert {q: sum(s["queue"] == q for s in sessions["sessions"]) for q in (0, 1)} == per_queue

    # The reload reaches both workers: port 7779 is then open from every address.
    policy.write_text(RELOADED)
    reloaded = fw.fw("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    with netns.udp_echo(lab, 7779, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7779) == {source: "echo" for source in SOURCES}
    stats = json.loads(fw.fw("stats", "--json").stdout)
    assert stats["policy"]["reloads"] == 1 and stats["engine"]["policy_swaps"] == 2 + 2
    assert stats["packets"]["by_verdict"]["accept"]["rule:allow-udp"] == 32
    assert stats["sessions"]["active"] == 32  # the sessions of before the reload stay

    killed = fw.fw("sessions", "kill", "dport=7777")
    assert killed.stdout.strip() == "16 sessions killed"
    assert json.loads(fw.fw("stats", "--json").stdout)["sessions"]["active"] == 16


@pytest.mark.netns
@pytest.mark.root
def test_an_icmp_error_reaches_the_worker_of_its_session(many_clients: Lab, daemon, tmp_path: Path):
    """Nothing listens on 7778: the server answers each datagram with a port unreachable. ICMP and UDP
    hash apart, so about half the errors come to the other worker, which hands them on."""
    lab = many_clients
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    fw = daemon(policy, "--queues", "0-1")
    assert exchange(lab, 7778) == {source: "refused" for source in SOURCES}
    stats = json.loads(fw.fw("stats", "--json").stdout)
    accepted, dropped = stats["packets"]["by_verdict"]["accept"], stats["packets"]["by_verdict"]["drop"]
    assert accepted == {"rule:allow-udp": 16, "related:icmp": 16}
    assert dropped.get("invalid:no-session", 0) == 0
    assert 0 < stats["forwarding"]["forwarded"] < 16  # some came to the wrong worker, and were handed on
    assert stats["forwarding"].get("unclaimed", 0) == 0


@pytest.mark.netns
@pytest.mark.root
def test_an_icmp_error_nobody_holds_is_dropped_once_round(many_clients: Lab, daemon, tmp_path: Path):
    """An error quoting a flow no worker knows goes round both queues and is then dropped."""
    lab = many_clients
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    fw = daemon(policy, "--queues", "0-1")
    script = """
import socket, struct, sys
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
quoted = bytes.fromhex("4500001c000000004011") + b"\\0\\0" + socket.inet_aton("198.51.100.10") \\
    + socket.inet_aton("203.0.113.10") + struct.pack("!HHHH", 40000 + int(sys.argv[1]), 7778, 8, 0)
icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
    sock.sendto(icmp, ("198.51.100.10", 0))
"""
    for n in range(8):
        lab.run("server", [sys.executable, "-c", script, n])
    stats = json.loads(fw.fw("stats", "--json").stdout)
    assert stats["packets"]["by_verdict"]["drop"] == {"invalid:no-session": 8}
    assert stats["forwarding"]["unclaimed"] == 8  # each judged by both workers, dropped by the second
    assert stats["forwarding"].get("forwarded", 0) == 8


@pytest.mark.netns
@pytest.mark.root
def test_a_worker_that_dies_is_started_again(many_clients: Lab, daemon, tmp_path: Path):
    lab = many_clients
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    fw = daemon(policy, "--queues", "0-1")
    before = json.loads(fw.fw("stats", "--json").stdout)["workers"]
    os.kill(before[0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        workers = json.loads(fw.fw("stats", "--json").stdout)["workers"]
        if workers[0]["pid"] not in (None, before[0]["pid"]) and workers[0]["sessions"] is not None:
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.2)
    assert workers[0]["restarts"] == 1 and workers[1] == before[1]
    with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}  # both queues served again
