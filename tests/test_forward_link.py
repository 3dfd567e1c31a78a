"""The forwarding link's UDP sockets, for real: on loopback in this process, and between two lab
namespaces (through a router), where genuine packets arrive intact and forged, replayed, oversized,
unknown and flooding ones are refused and counted."""

from __future__ import annotations

import hashlib
import json
import select
import socket
import sys
import time

import pytest

from fw.lab import Lab
from fw.packet import build, parse
from fw.sync.forwarding.endpoint import SO_MARK, Receiver, Sender, parse_address
from fw.sync.forwarding.gate import Gate, Limits
from fw.sync.forwarding.report import anomaly, stats_line
from fw.sync.forwarding.wire import HOOKS, Sealer, forwarding_key
from tests import forward_peer, netns
from tests.packets import seg
from tests.test_sync_helpers import POLICY

SYNC_KEY = b"test-key-of-the-cluster-0123456789"
KEY = forwarding_key(SYNC_KEY, "lab")
PEER_SCRIPT = [sys.executable, forward_peer.__file__]


def receiver(host: str = "127.0.0.1", peers=("fw1",), mark: int = 0, **limits) -> Receiver:
    return Receiver(Gate(KEY, "fw2", set(peers).__contains__, Limits(**limits)), (host, 0), mark=mark)


def sender(node: str = "fw1", **options) -> Sender:
    return Sender(Sealer(KEY, node, int(time.time() * 1e6)), **options)


def drain(rx: Receiver, datagrams: int, timeout: float = 5.0) -> list:
    """Poll the receiver as the daemon's loop would until it has read `datagrams` datagrams."""
    admitted, deadline = [], time.monotonic() + timeout
    while rx.counters["datagrams"] < datagrams and time.monotonic() < deadline:
        if select.select([rx], [], [], 0.1)[0]:
            admitted += rx.receive()
    return admitted


def packets(count: int, size: int = 600) -> list[bytes]:
    return [seg("198.51.100.10:40000", "203.0.113.10:80", "PA", seq=1 + i * size, ack=1,
                payload=bytes([i & 0xFF]) * size) for i in range(count)]  # fmt: skip


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_packets_go_through_the_sockets_intact_in_order(host):
    rx, tx = receiver(host), sender()
    try:
        sent = packets(200)
        for data in sent:
            assert tx.send(rx.address, data, HOOKS["FORWARD"], "lan", "wan", mark=3)
        admitted = drain(rx, 200)
        assert [datagram.packet for datagram, _ in admitted] == sent
        assert {(d.node, d.iif, d.oif, d.hook, d.mark) for d, _ in admitted} == {("fw1", "lan", "wan", 2, 3)}
        assert tx.stats() == {"sent": 200, "bytes": sum(map(len, sent))}
        assert rx.stats()["accepted"] == 200 and sum(rx.stats()["refused"].values()) == 0
    finally:
        rx.close()
        tx.close()


def test_a_sender_sharing_the_listening_socket_sends_from_the_published_address():
    fw1_rx, fw2_rx = receiver(peers=("fw2",)), receiver()
    tx = Sender(Sealer(KEY, "fw1", 1), sock=fw1_rx.sock)
    try:
        assert tx.send(fw2_rx.address, packets(1)[0], HOOKS["FORWARD"], "lan", "wan")
        [(_, source)] = drain(fw2_rx, 1)
        assert source == fw1_rx.address
    finally:
        for closing in (fw1_rx, fw2_rx, tx):
            closing.close()


def test_the_sockets_are_marked_and_do_not_block():
    rx, tx = receiver(mark=0x2A), sender(mark=0x2A)
    try:
        assert rx.sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x2A and not rx.sock.getblocking()
        assert rx.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 << 20
        tx.send(rx.address, packets(1)[0], HOOKS["FORWARD"], None, None)
        [own] = tx.own.values()
        assert own.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x2A and not own.getblocking()
        assert len(drain(rx, 1)) == 1
        started = time.monotonic()
        assert rx.receive() == []  # nothing waiting: returns at once
        assert time.monotonic() - started < 1.0
    finally:
        rx.close()
        tx.close()


def test_refusals_on_the_socket_are_counted_by_reason_and_nothing_else_passes():
    rx, tx = receiver(peers=("fw1",), max_packet=1500), sender()
    kept = []
    try:
        for data in packets(5):
            tx.send(rx.address, data, HOOKS["FORWARD"], "lan", "wan")
        first = drain(rx, 5)
        assert len(first) == 5
        now = time.time()
        kept.append(tx.sealer.seal(packets(1)[0], now))  # a genuine datagram, sent twice below
        attacks = [kept[0], kept[0],
                   Sealer(forwarding_key(SYNC_KEY, "other"), "fw1", 10**17).seal(packets(1)[0], now),
                   Sealer(KEY, "fw9", 1).seal(packets(1)[0], now),
                   Sealer(KEY, "fw1", 10**17).seal(packets(1, size=3000)[0], now),
                   b"junk that is not a datagram at all" * 3]  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for blob in attacks:
                raw.sendto(blob, rx.address)
        admitted = drain(rx, 5 + len(attacks))
        assert len(admitted) == 1  # the first copy of the genuine one
        assert rx.stats()["refused"] == {"too-large": 1, "malformed": 1, "unknown-node": 1, "replayed": 1,
                                         "forged": 1, "stale": 0, "rate": 0}  # fmt: skip
    finally:
        rx.close()
        tx.close()


def test_a_flood_is_cut_to_the_senders_rate():
    rx, tx = receiver(packets_per_second=500, burst_seconds=0.1), sender()
    try:
        started = time.monotonic()
        for index, data in enumerate(packets(1000, size=100)):
            assert tx.send(rx.address, data, HOOKS["FORWARD"], "lan", "wan")
            if index % 50 == 49:
                rx.receive()  # as the daemon's loop between two packets
        drain(rx, 1000)
        elapsed = time.monotonic() - started
        stats = rx.stats()
        assert stats["datagrams"] == 1000
        assert 50 <= stats["accepted"] <= 50 + 500 * elapsed + 1  # the burst, then 500 a second at most
        assert stats["refused"]["rate"] == 1000 - stats["accepted"] and stats["refused"]["rate"] > 0
    finally:
        rx.close()
        tx.close()


def test_a_receive_call_reads_one_batch_at_most():
    rx, tx = receiver(), sender()
    try:
        for data in packets(40, size=50):  # on loopback, each is in the receiver's queue when send returns
            tx.send(rx.address, data, HOOKS["FORWARD"], "lan", "wan")
        assert len(rx.receive(batch=16)) == 16
        assert len(drain(rx, 40)) == 24
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1:6380", ("192.0.2.1", 6380)), ("192.0.2.1", ("192.0.2.1", 6380)),
    ("[2001:db8::1]:7000", ("2001:db8::1", 7000)), ("2001:db8::1", ("2001:db8::1", 6380)),
    ("[2001:db8::1]", ("2001:db8::1", 6380)),
])  # fmt: skip
def test_listen_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["192.0.2.1:0", "192.0.2.1:65536", "host.example:6380", "[2001:db8::1]x", "1.2.3:80",
                                  "192.0.2.1:port"])  # fmt: skip
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError, match="port|address|expected"):
        parse_address(text)


# -- between two namespaces -------------------------------------------------------------------------


def peer(lab: Lab, name: str, *args, lifetime: float = 30.0) -> netns.Background:
    argv = [*PEER_SCRIPT, *map(str, args), "--key", SYNC_KEY.hex(), "--lifetime", lifetime]
    return netns.Background(lab, name, argv, lifetime + 10)


@pytest.mark.netns
@pytest.mark.root
def test_between_namespaces_genuine_packets_arrive_and_attacks_are_counted(lab: Lab):
    count, size = 300, 1400
    lab.run("client", ["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "6380", "-m", "mark", "--mark", "0x2a",
                       "-j", "ACCEPT"])  # fmt: skip
    rx = peer(lab, "server", "receive", "--listen", "203.0.113.10:6380", "--node", "fw2", "--peers", "fw1",
              "--datagrams", count + forward_peer.ATTACKS)  # fmt: skip
    netns.wait_for_port(lab, "server", 6380, "udp")
    tx = lab.run("client", [*PEER_SCRIPT, "send", "--key", SYNC_KEY.hex(), "--node", "fw1", "--to",
                            "203.0.113.10:6380", "--count", count, "--size", size, "--attacks", "--mark", "0x2a"],
                 timeout=30)  # fmt: skip
    sent = json.loads(tx.stdout)
    got = rx.json(timeout=30)
    expected = hashlib.sha256(b"".join(forward_peer.packet(i, size) for i in range(count))).hexdigest()
    assert sent["sent"] == count and sent["sha256"] == expected
    assert got["admitted"] == count and got["sha256"] == expected  # intact, in order, none lost
    assert got["sources"] == ["198.51.100.10"]
    assert got["refused"] == {"too-large": 1, "malformed": 1, "unknown-node": 1, "replayed": 3, "forged": 1,
                              "stale": 0, "rate": 0}  # fmt: skip
    counted = lab.run("client", ["iptables", "-nvxL", "OUTPUT"]).stdout
    marked = next(line for line in counted.splitlines() if "0x2a" in line)
    assert int(marked.split()[0]) >= count  # every datagram left with SO_MARK (the big one in fragments)


@pytest.mark.netns
@pytest.mark.root
def test_between_namespaces_a_peer_cannot_flood_through_the_link(lab: Lab):
    count = 3000
    rx = peer(lab, "server", "receive", "--listen", "[2001:db8:2::10]:6380", "--node", "fw2", "--peers", "fw1",
              "--datagrams", count, "--rate", 200, "--burst", 0.5)  # fmt: skip
    netns.wait_for_port(lab, "server", 6380, "udp")
    started = time.monotonic()
    lab.run("client", [*PEER_SCRIPT, "send", "--key", SYNC_KEY.hex(), "--node", "fw1", "--to",
                       "[2001:db8:2::10]:6380", "--count", count, "--size", 200], timeout=30)  # fmt: skip
    got = rx.json(timeout=30)
    elapsed = time.monotonic() - started
    assert got["datagrams"] == count
    assert 100 <= got["admitted"] <= 100 + 200 * elapsed  # the burst (0.5 s of 200/s), then 200 a second
    assert got["refused"]["rate"] == count - got["admitted"]


def test_a_gso_packet_is_split_to_fit_the_link_and_arrives_as_segments():
    payload = bytes(range(256)) * 250  # 64,000 bytes: a GSO super-packet as NFQUEUE hands it up
    big = build.tcp("198.51.100.10", "203.0.113.10", 40000, 80, 5000, 1, 0x19, 502, b"", payload)
    rx, tx = receiver(), sender(mtu=1500)
    try:
        sent = tx.forward(rx.address, big, HOOKS["FORWARD"], "lan", "wan")
        admitted = drain(rx, sent)
        assert sent == len(admitted) == tx.stats()["sent"] > 40 and tx.stats()["segmented"] == 1
        assert all(d.segment and len(d.packet) + 28 + 150 <= 1500 for d, _ in admitted)  # no IP fragments on the link
        segments = [parse(d.packet) for d, _ in admitted]
        assert b"".join(bytes(p.payload) for p in segments) == payload
        assert segments[0].seq == 5000 and segments[-1].flags & 0x01 and not segments[0].flags & 0x01
        small = packets(1)[0]
        assert tx.forward(rx.address, small, HOOKS["FORWARD"], "lan", "wan") == 1
        [(datagram, _)] = drain(rx, sent + 1)
        assert datagram.packet == small and not datagram.segment
    finally:
        rx.close()
        tx.close()


def test_a_large_packet_that_cannot_be_split_goes_whole_or_not_at_all():
    rx, tx = receiver(), sender(mtu=1500)
    try:
        udp = build.udp("198.51.100.10", "203.0.113.10", 5000, 53, b"u" * 4000)  # IP-fragmented on the link
        assert tx.forward(rx.address, udp, HOOKS["FORWARD"], "lan", "wan") == 1
        assert [d.packet for d, _ in drain(rx, 1)] == [udp]
        huge = build.udp("198.51.100.10", "203.0.113.10", 5000, 53, b"u" * 20000)
        assert tx.forward(rx.address, huge, HOOKS["FORWARD"], "lan", "wan") == 0
        assert tx.stats()["too-large"] == 1 and tx.stats()["sent"] == 1
    finally:
        rx.close()
        tx.close()


@pytest.mark.netns
@pytest.mark.root
def test_the_owner_judges_forwarded_packets_with_its_policy_and_sends_on_what_passes(lab: Lab, tmp_path):
    """The owner's side without the daemon: the `fw` namespace receives packets forwarded from the
    client's namespace, runs them through its engine as if they had come in on `lan`, and sends
    the accepted ones on to the server, one hop later; the refused ones go nowhere."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)  # allows UDP to port 53 from the clients
    echo = netns.udp_echo(lab, 53, count=10)
    owner = peer(lab, "fw", "own", "--listen", "198.51.100.1:6380", "--node", "fw2", "--peers", "fw1", "--policy",
                 policy, "--datagrams", 10 + forward_peer.ATTACKS + 5)  # fmt: skip
    netns.wait_for_port(lab, "fw", 6380, "udp")
    for port, count, attacks in ((53, 10, ["--attacks"]), (54, 5, [])):
        lab.run("client", [*PEER_SCRIPT, "send", "--key", SYNC_KEY.hex(), "--node", "fw1", "--to", "198.51.100.1:6380",
                           "--count", count, "--udp", f"198.51.100.10:5000>203.0.113.10:{port}", *attacks],
                timeout=30)  # fmt: skip
    got = owner.json(timeout=30)
    assert got["decided"] == {"accept rule:allow-dns": 1, "accept established": 9, "drop default": 5}
    assert got["sent_on"] == 10
    assert sum(got["refused"].values()) == forward_peer.ATTACKS
    assert echo.json(timeout=20) == {"echoed": 10}  # the accepted packets reached the server


def test_refusals_reach_the_daemons_anomaly_events_and_the_stats_line():
    events = []
    rx = Receiver(Gate(KEY, "fw2", {"fw1"}.__contains__), ("127.0.0.1", 0),
                  on_refused=lambda refusal, source: events.append(anomaly(refusal, source)))  # fmt: skip
    tx = sender()
    try:
        tx.send(rx.address, packets(1)[0], HOOKS["FORWARD"], "lan", "wan")
        forged = Sealer(forwarding_key(SYNC_KEY, "other"), "fw1", 10**17).seal(packets(1)[0], time.time())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(forged, rx.address)
            raw.sendto(b"nonsense", rx.address)
            source_port = raw.getsockname()[1]
        drain(rx, 3)
        assert events == [
            {"type": "forward", "event": "forged", "peer": "fw1", "src_ip": "127.0.0.1", "src_port": source_port,
             "detail": "a wrong tag"},
            {"type": "forward", "event": "malformed", "peer": None, "src_ip": "127.0.0.1", "src_port": source_port,
             "detail": "8 bytes, shorter than a header and a tag"},
        ]  # fmt: skip
        line = stats_line({"sent": tx.stats(), "received": rx.stats()})
        assert line == ("forward: sent 1 (segmented 0, failed: none), received 1 of 3 datagrams, "
                        "refused: malformed 1, forged 1")
    finally:
        rx.close()
        tx.close()
