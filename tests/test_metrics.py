"""Metrics: per-rule counters from real engine decisions, and the Prometheus endpoint scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fw.decision import Verdicts
from fw.engine import Engine
from fw.metrics import Metrics, RuleCounters, parse_listen, rule_lines
from fw.policy import load_policy
from tests.packets import seg, udp_pkt

POLICY = """\
version: 1
defaults: {action: drop}
options: {max_sessions: 1000}
rules:
  - {name: allow-web, action: accept, proto: tcp, dport: 80}
  - {name: block-telnet, action: drop, proto: tcp, dport: 23}
  - {name: allow-dns, action: accept, proto: udp, dport: 53}
"""
CLIENT, SERVER = "198.51.100.10:40000", "203.0.113.10:80"


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return Engine(load_policy(path))


def run(engine: Engine, counters: RuleCounters, packets, verdicts: Verdicts | None = None) -> None:
    for packet in packets:
        decision = engine.process(packet, 1.0)
        counters.count(decision)
        if verdicts is not None:  # as the packet handler counts the verdicts it gives
            verdicts.count(decision.verdict, decision.reason)


def handshake_and_data(client: str = CLIENT) -> list[bytes]:
    return [seg(client, SERVER, "S", seq=1000), seg(SERVER, client, "SA", seq=5000, ack=1001),
            seg(client, SERVER, "PA", seq=1001, ack=5001, payload=b"x" * 100)]


def test_rule_counters_count_the_packets_of_the_sessions_a_rule_opened(engine):
    counters = RuleCounters()
    run(engine, counters, handshake_and_data() + handshake_and_data("198.51.100.11:40000"))
    run(engine, counters, [seg("198.51.100.10:40001", "203.0.113.10:23", "S")] * 2)  # refused: packets only
    run(engine, counters, [seg("198.51.100.10:40002", "203.0.113.10:9999", "S")])  # default: no rule
    run(engine, counters, [udp_pkt("198.51.100.10:5353", "203.0.113.10:53", b"q" * 12)])
    assert counters.totals() == {
        "allow-web": (6, 2 * (40 + 40 + 140), 2),  # SYN 40, SYN-ACK 40, data 140 bytes, per session
        "block-telnet": (2, 80, 0),
        "allow-dns": (1, 40, 1),
    }
    assert counters.as_dict()["allow-dns"] == {"packets": 1, "bytes": 40, "sessions": 1}


def test_deltas_are_what_was_counted_since_the_last_call(engine):
    counters = RuleCounters()
    run(engine, counters, handshake_and_data())
    assert counters.deltas() == {"allow-web": (3, 220, 1)}
    assert counters.deltas() == {}
    run(engine, counters, [seg(CLIENT, SERVER, "PA", seq=1101, ack=5001, payload=b"y" * 10)])
    assert counters.deltas() == {"allow-web": (1, 50, 0)}


def scrape(address) -> dict:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        body = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_endpoint_serves_what_the_last_tick_saw(engine):
    counters, daemon_counters, verdicts = RuleCounters(), Counter(reloads=2, reload_failures=1), Verdicts()
    metrics = Metrics(engine, rules=counters, daemon_counters=daemon_counters, verdicts=verdicts)
    address = metrics.serve("127.0.0.1", 0)
    try:
        assert scrape(address)[("fw_sessions", ())] == 0
        run(engine, counters, handshake_and_data() + [seg("198.51.100.10:40001", "203.0.113.10:23", "S")], verdicts)
        assert scrape(address)[("fw_sessions", ())] == 0  # not yet: the loop's tick copies the numbers
        metrics.tick(2.0)
        samples = scrape(address)
    finally:
        metrics.close()
    assert samples[("fw_sessions", ())] == 1
    assert samples[("fw_sessions_limit", ())] == 1000
    assert samples[("fw_expectations", ())] == 0
    assert samples[("fw_packets_total", (("reason", "rule:allow-web"), ("verdict", "accept")))] == 1
    assert samples[("fw_packets_total", (("reason", "established"), ("verdict", "accept")))] == 2
    assert samples[("fw_packets_total", (("reason", "rule:block-telnet"), ("verdict", "drop")))] == 1
    assert samples[("fw_rule_packets_total", (("rule", "allow-web"),))] == 3
    assert samples[("fw_rule_bytes_total", (("rule", "allow-web"),))] == 220
    assert samples[("fw_rule_sessions_total", (("rule", "allow-web"),))] == 1
    assert samples[("fw_rule_packets_total", (("rule", "block-telnet"),))] == 1
    assert samples[("fw_session_events_total", (("event", "inserts"),))] == 1
    assert samples[("fw_reloads_total", (("result", "ok"),))] == 2
    assert samples[("fw_reloads_total", (("result", "failed"),))] == 1
    assert samples[("fw_policy_info", (("revision", engine.policy.revision),))] == 1


class BrokenEngine(Engine):
    def process(self, data, now, iif=None, oif=None):
        raise ZeroDivisionError("engine bug")


class QueuedPacket:
    """What the daemon's PacketHandler uses of a netfilterqueue packet."""

    indev = outdev = 0

    def __init__(self, data: bytes):
        self.data, self.verdicts = data, []

    def get_payload(self) -> bytes:
        return self.data

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def test_error_verdicts_and_the_writers_counts_are_in_the_metrics(engine, tmp_path):
    from fw.drivers.nfqueue import PacketHandler
    from fw.store import EventWriter, Store

    broken = BrokenEngine(engine.policy)
    handler = PacketHandler(broken, False, lambda effects: None, lambda where, exc, data: None)
    for _ in range(3):
        handler(QueuedPacket(seg(CLIENT, SERVER, "S")))
    writer = EventWriter(Store(f"sqlite:///{tmp_path / 'fw.db'}"), queue_size=2)
    for port in range(5):  # not started: 2 queued, 3 lost
        writer.submit({"event_type": "flow", "src_port": port})
    writer.start()
    writer.close()
    snapshot = Metrics(broken, verdicts=handler.verdicts, writer=writer).read()
    assert snapshot["packets"] == {("drop", "error"): 3}
    assert (snapshot["events_written"], snapshot["events_lost"]) == (2, 3)


def test_a_taken_port_is_an_os_error(engine):
    first = Metrics(engine)
    address = first.serve("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            Metrics(engine).serve(*address)
    finally:
        first.close()


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)), (":9100", ("0.0.0.0", 9100)),
    ("localhost:9100", ("localhost", 9100)),
])
def test_listen_addresses(text, address):
    assert parse_listen(text) == address


@pytest.mark.parametrize(("text", "message"), [
    ("9100", "is not HOST:PORT"), ("127.0.0.1:", "is not HOST:PORT"), ("127.0.0.1:70000", "is not HOST:PORT"),
    ("example.com:9100", "is not an IP address"),
])
def test_bad_listen_addresses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_rule_lines_for_fw_stats(engine):
    counters = RuleCounters()
    run(engine, counters, handshake_and_data() + [seg("198.51.100.10:40001", "203.0.113.10:23", "S")])
    assert rule_lines(counters.as_dict()) == ["  allow-web: 3 packets, 220 bytes, 1 sessions",
                                              "  block-telnet: 1 packets, 40 bytes, 0 sessions"]


def test_an_icmp_error_about_a_session_counts_as_its_packet_not_a_new_session(engine):
    from tests.packets import icmp_error_pkt

    counters = RuleCounters()
    run(engine, counters, handshake_and_data())
    error = icmp_error_pkt("203.0.113.1", "198.51.100.10", 3, 4, seg(CLIENT, SERVER, "PA", seq=1101, ack=5001))
    decision = engine.process(error, 1.0)
    assert decision.reason == "related:icmp"
    counters.count(decision)
    assert counters.totals()["allow-web"] == (4, 220 + decision.packet.ip_len, 1)


def test_a_supervisor_serves_its_workers_summed_stats(engine):
    from fw.metrics import snapshot_of_stats

    counters, verdicts = RuleCounters(), Verdicts()
    run(engine, counters, handshake_and_data() + [seg("198.51.100.10:40001", "203.0.113.10:23", "S")], verdicts)
    one = Metrics(engine, rules=counters, daemon_counters=Counter(reloads=1), verdicts=verdicts)
    stats = {  # the shape of `fw stats --json`, as Daemon.stats gives it, plus what the store adds
        "sessions": {"active": 1, "limit": 1000, "expectations": 0},
        "packets": {"by_verdict": {"accept": dict(verdicts.accepted), "drop": dict(verdicts.dropped)}},
        "rules": counters.as_dict(), "engine": dict(engine.counters),
        "policy": {"summary": engine.policy.summary(), "reloads": 1, "reload_failures": 0},
        "store": {"written": 0, "lost": 0},
    }
    assert snapshot_of_stats(stats) == one.read()
    supervisor = Metrics.from_stats(lambda: stats)
    address = supervisor.serve("127.0.0.1", 0)
    try:
        samples = scrape(address)
    finally:
        supervisor.close()
    assert samples[("fw_rule_bytes_total", (("rule", "allow-web"),))] == 220
    assert samples[("fw_policy_info", (("revision", engine.policy.revision),))] == 1
    assert ("fw_sessions_limit", ()) not in scrape_of(Metrics.from_stats(lambda: {}))


def scrape_of(metrics: Metrics) -> dict:
    address = metrics.serve("127.0.0.1", 0)
    try:
        return scrape(address)
    finally:
        metrics.close()


def test_a_services_families_are_served_from_the_last_tick(engine):
    """Owner forwarding's `forward` section as fw_forward_* families (Metrics.add_source)."""
    from fw.sync.forwarding.report import metric_families  # noqa: PLC0415

    section = {"sent": {"sent": 7, "bytes": 900, "failed:ENOBUFS": 2}, "handed": {"owner": 5, "only-peer": 2},
               "received": {"by_sender": {"fw2": 4}, "refused": {"forged": 1, "replayed": 3}},
               "decided": {"accept": {"established": 3}, "drop": {"invalid:no-session": 1}}, "sent_on": 3,
               "decide_at": ["fw2"]}  # fmt: skip
    metrics = Metrics(engine)
    metrics.add_source(lambda: metric_families(section))
    address = metrics.serve("127.0.0.1", 0)
    try:
        metrics.tick(1.0)
        samples = scrape(address)
    finally:
        metrics.close()
    assert samples[("fw_forward_sent_total", ())] == 7 and samples[("fw_forward_sent_bytes_total", ())] == 900
    assert samples[("fw_forward_send_failed_total", (("errno", "ENOBUFS"),))] == 2
    assert samples[("fw_forward_handed_total", (("route", "only-peer"),))] == 2
    assert samples[("fw_forward_received_total", (("peer", "fw2"),))] == 4
    assert samples[("fw_forward_refused_total", (("reason", "replayed"),))] == 3
    assert samples[("fw_forward_decided_total", (("reason", "invalid:no-session"), ("verdict", "drop")))] == 1
    assert samples[("fw_forward_sent_on_total", ())] == 3 and samples[("fw_forward_peers", ())] == 1
