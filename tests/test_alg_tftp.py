"""The TFTP ALG (`alg: tftp`), as nf_conntrack_tftp: a read or write request on a UDP rule's session
admits the server's answer from a new port to the client's port as `related:tftp`, for
`tftp_expectation` seconds. Engine playbooks, the registry, snapshots, the NAT hook, and a replay
of a capture through `fw replay --json`. The live transfer is in tests/test_lab_tftp.py."""

from __future__ import annotations

import ipaddress
import json
import struct
import textwrap

from click.testing import CliRunner

from fw.alg import ALGS, Peers, TftpAlg
from fw.cli import main
from fw.engine import Engine, EngineConfig
from fw.policy import PolicyError, load_policy
from tests.packets import udp_pkt

CLIENT, SERVER = "198.51.100.10:40000", "203.0.113.10:69"
DATA_FROM = "203.0.113.10:51000"  # the server's new port
RRQ = b"\x00\x01hello.txt\x00octet\x00"
WRQ = b"\x00\x02upload.bin\x00octet\x00"
DATA = b"\x00\x03\x00\x01" + b"x" * 512
ACK = b"\x00\x04\x00\x01"
POLICY = """
version: 1
defaults: {action: drop, log: false}
timeouts: {tftp_expectation: 20}
rules:
  - {name: tftp, action: accept, proto: udp, dport: 69, alg: tftp}
  - {name: plain-tftp, action: accept, proto: udp, dport: 6969}
"""


def engine_for(tmp_path, policy: str = POLICY) -> Engine:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(policy))
    return Engine(load_policy(path), EngineConfig(events=True))


def judged(engine: Engine, steps, start: float = 100.0) -> list[tuple]:
    out = []
    for number, (src, dst, payload) in enumerate(steps):
        decision = engine.process(udp_pkt(src, dst, payload), start + number * 0.01)
        out.append((decision.verdict, decision.reason, decision.state))
    return out


def test_the_registry_names_protocol_ports_timeout_reason_and_event_type():
    spec = ALGS["tftp"]
    assert (spec.proto, spec.ports, spec.timeout_key, spec.default_timeout, spec.reason, spec.event_type) == (
        17, (69,), "tftp_expectation", 300, "related:tftp", "tftp")
    assert spec.cls is TftpAlg and TftpAlg.SPEC is spec


def test_a_read_request_admits_the_servers_answer_from_a_new_port(tmp_path):
    engine = engine_for(tmp_path)
    assert judged(engine, [(CLIENT, SERVER, RRQ), (DATA_FROM, CLIENT, DATA), (CLIENT, DATA_FROM, ACK),
                           (DATA_FROM, CLIENT, DATA)]) == [
        ("accept", "rule:tftp", "UNREPLIED"),
        ("accept", "related:tftp", "UNREPLIED"),  # from the server's new port to the client's port
        ("accept", "established", "REPLIED"),
        ("accept", "established", "REPLIED"),
    ]
    control = engine.table.get(next(k for k in engine.table.sessions if 69 in k[3:]))
    data = next(s for s in engine.table if s is not control)
    assert data.parent is control and data.rule == "tftp" and data.flags & 4  # RELATED
    assert not engine.expectations  # used once
    assert judged(engine, [("203.0.113.10:51001", CLIENT, DATA)], 101.0) == [("drop", "default", None)]


def test_a_write_request_too_and_only_from_the_client(tmp_path):
    engine = engine_for(tmp_path)
    assert judged(engine, [(CLIENT, SERVER, WRQ), (DATA_FROM, CLIENT, ACK)])[1] == ("accept", "related:tftp",
                                                                                  "UNREPLIED")
    other = engine_for(tmp_path)
    judged(other, [(CLIENT, SERVER, b"\x00\x05\x00\x01oops\x00")])  # an ERROR opens nothing
    assert not other.expectations
    assert judged(other, [(DATA_FROM, CLIENT, ACK)], 101.0) == [("drop", "default", None)]


def test_without_the_alg_the_answer_is_refused(tmp_path):
    engine = engine_for(tmp_path)
    client, server = "198.51.100.10:40000", "203.0.113.10:6969"
    assert judged(engine, [(client, server, RRQ), (DATA_FROM, client, DATA)]) == [
        ("accept", "rule:plain-tftp", "UNREPLIED"), ("drop", "default", None)]


def test_the_expectation_lives_tftp_expectation_seconds_and_dies_with_its_control_session(tmp_path):
    engine = engine_for(tmp_path)
    judged(engine, [(CLIENT, SERVER, RRQ)])
    assert judged(engine, [(DATA_FROM, CLIENT, DATA)], 100.0 + 21) == [("drop", "default", None)]  # 20 s
    engine = engine_for(tmp_path, POLICY.replace("timeouts: {tftp_expectation: 20}\n", ""))
    judged(engine, [(CLIENT, SERVER, RRQ)])
    (entry,) = engine.expectations.values()
    assert entry.deadline == 100.0 + 300 and entry.expectation.command == "RRQ"  # the default
    engine.kill(entry.parent, 100.5)
    assert not engine.expectations


def test_a_datagram_too_short_for_an_opcode_is_refused_and_logged(tmp_path):
    engine = engine_for(tmp_path)
    decision = engine.process(udp_pkt(CLIENT, SERVER, b"\x00"), 100.0)
    assert decision.verdict == "accept" and engine.counters["alg_refused:malformed"] == 1
    (event,) = [e.event for e in decision.effects if type(e).__name__ == "LogEvent" and e.event["event_type"] == "tftp"]
    assert event["tftp"]["refused"] == "malformed"


def test_snapshots_carry_the_alg_and_its_expectations(tmp_path):
    engine = engine_for(tmp_path)
    judged(engine, [(CLIENT, SERVER, RRQ)])
    snapshot = json.loads(json.dumps(engine.snapshot(clock_offset=1e9)))
    fresh = engine_for(tmp_path)
    assert fresh.restore(snapshot, 100.5, clock_offset=1e9) == 1
    (control,) = fresh.table
    assert isinstance(control.alg, TftpAlg) and control.alg.peers.client_port == 40000
    assert judged(fresh, [(DATA_FROM, CLIENT, DATA)], 101.0) == [("accept", "related:tftp", "UNREPLIED")]


def test_the_alg_sees_the_translated_ends_nat_gives_it():
    """NAT (next) sets peers.translated; the expectation then names the ends as the server sees them."""
    ip = lambda text: ipaddress.ip_address(text).packed  # noqa: E731
    peers = Peers(4, ip("198.51.100.10"), ip("203.0.113.10"), 40000, 69)
    alg = ALGS["tftp"].create(peers)
    (plain,) = alg.feed(True, None, RRQ)
    assert (plain.src, plain.dst, plain.dport, plain.proto) == (ip("203.0.113.10"), ip("198.51.100.10"), 40000, 17)
    peers.translated = Peers(4, ip("203.0.113.1"), ip("203.0.113.10"), 61000, 69)  # masqueraded
    (natted,) = alg.feed(True, None, RRQ)
    assert (natted.dst, natted.dport) == (ip("203.0.113.1"), 61000)


def test_alg_tftp_needs_a_udp_rule(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules:\n  - {name: t, action: accept, proto: tcp, dport: 69, alg: tftp}\n")
    try:
        load_policy(path)
    except PolicyError as error:
        assert "alg 'tftp' needs proto udp" in error.diagnostics[0].format()
    else:
        raise AssertionError("a tcp rule with alg: tftp loaded")


def test_a_capture_replays_with_the_transfer_related(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    capture = tmp_path / "tftp.pcap"
    frames = [udp_pkt(CLIENT, SERVER, RRQ), udp_pkt(DATA_FROM, CLIENT, DATA), udp_pkt(CLIENT, DATA_FROM, ACK),
              udp_pkt(DATA_FROM, CLIENT, b"\x00\x03\x00\x02end"), udp_pkt(CLIENT, DATA_FROM, b"\x00\x04\x00\x02")]
    records = b"".join(struct.pack("<IIII", 1_700_000_000, n * 1000, len(f), len(f)) + f for n, f in enumerate(frames))
    capture.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101) + records)  # raw IP
    result = CliRunner().invoke(main, ["replay", str(capture), "--policy", str(policy), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["verdict"], r["reason"]) for r in rows] == [
        ("accept", "rule:tftp"), ("accept", "related:tftp"), ("accept", "established"),
        ("accept", "established"), ("accept", "established")]
    assert rows[1]["flow"] == "udp 203.0.113.10:51000 -> 198.51.100.10:40000"
