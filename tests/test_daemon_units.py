"""The daemon's parts without a kernel: the verdict callback, netlink messages, the event log, effects.

The callback is fed a stand-in for netfilterqueue's Packet (its payload, interfaces and a record of
the verdict): it cannot be built with chosen bytes, and garbage bytes are what these tests need.
The engine and the policy are the real ones.
"""

from __future__ import annotations

import datetime
import json
import socket
import struct

import pytest

from fw.cli.daemon import _hooks, _queues
from fw.cli.sessions import session_line
from fw.daemon import Throttle
from fw.decision import LogEvent, RewritePacket, SendPacket, SessionOpened, SetMark
from fw.drivers.effects import Effects
from fw.drivers.eve import EveLog, to_eve
from fw.drivers.nfqueue import (
    ACCEPT_LATER,
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    PacketHandler,
    config_message,
    netlink_error,
    read_queue_counters,
    summarize,
)
from fw.engine import Engine
from fw.policy import load_policy
from tests.packets import seg, udp_pkt

POLICY = """\
version: 1
defaults: {action: drop, log: true}
rules:
  - {name: allow-web, action: accept, proto: tcp, dport: 80}
"""


class StandInPacket:
    """What PacketHandler uses of netfilterqueue.Packet."""

    def __init__(self, data: bytes, indev: int = 1, outdev: int = 0, verdict_fails: bool = False):
        self.data, self.indev, self.outdev = data, indev, outdev
        self.verdicts: list[str] = []
        self.verdict_fails = verdict_fails
        self.changes: list = []  # set_mark / set_payload calls, as the effects they came from

    def get_payload(self) -> bytes:
        return self.data

    def set_mark(self, mark: int) -> None:
        self.changes.append(SetMark(mark))

    def set_payload(self, data: bytes) -> None:
        self.changes.append(RewritePacket(data))

    def accept(self) -> None:
        self._verdict("accept")

    def drop(self) -> None:
        self._verdict("drop")

    def _verdict(self, verdict: str) -> None:
        if self.verdict_fails:
            raise RuntimeError("Verdict already given for this packet")
        self.verdicts.append(verdict)


class FailingEngine(Engine):
    def process(self, data, now, iif=None, oif=None):
        if b"fail" in data:
            raise ZeroDivisionError("engine bug")
        return super().process(data, now, iif, oif)


@pytest.fixture
def engine_policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(path)


def handler_for(engine, fail_open=False, on_effects=None):
    errors, effects = [], []
    def on_error(where, exc, data):
        errors.append((where, type(exc).__name__, summarize(data)))

    handler = PacketHandler(engine, fail_open, on_effects or effects.append, on_error, clock=lambda: 1000.0)
    return handler, errors, effects


def test_a_packet_gets_the_engines_verdict_and_the_interfaces_by_name(engine_policy):
    engine = Engine(engine_policy)
    handler, errors, effects = handler_for(engine)
    syn = StandInPacket(seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1), indev=1)
    handler(syn)
    other = StandInPacket(seg("198.51.100.10:40001", "203.0.113.10:81", "S", seq=1))
    handler(other)
    assert (syn.verdicts, other.verdicts) == (["accept"], ["drop"])
    assert handler.ifname(1) == "lo" and handler.ifname(0) is None
    assert handler.verdicts.accepted == {"rule:allow-web": 1} and handler.verdicts.dropped == {"default": 1}
    # the session opened is told; the default drop is logged
    assert [type(e) for batch in effects for e in batch] == [SessionOpened, LogEvent]
    assert errors == []


def test_accepts_are_left_to_the_queue_unless_a_hold_may_keep_packets(engine_policy):
    handler, errors, _ = handler_for(Engine(engine_policy))
    handler.accept_later = True
    syn = StandInPacket(seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1))
    refused = StandInPacket(seg("198.51.100.10:40001", "203.0.113.10:81", "S", seq=1))
    assert handler(syn) is ACCEPT_LATER and syn.verdicts == []  # the queue's batch accepts it
    assert handler(refused) is None and refused.verdicts == ["drop"]  # drops go at once
    kept_packet = StandInPacket(seg("198.51.100.10:40002", "203.0.113.10:80", "S", seq=1))
    kept = []

    def hold(packet, data, decision) -> bool:  # as fw.sync's hold: keeps one packet, passes the rest
        if packet is kept_packet:
            kept.append(packet)
            return True
        return False

    handler.defer = hold
    passed = StandInPacket(seg("198.51.100.10:40003", "203.0.113.10:80", "S", seq=1))
    assert handler(kept_packet) is None and kept == [kept_packet] and kept_packet.verdicts == []
    # With a hold, a batch ("everything up to id N") would accept what it keeps: each verdict alone.
    assert handler(passed) is None and passed.verdicts == ["accept"]
    assert errors == []


def test_the_observe_hook_sees_every_decision_and_may_change_between_packets(engine_policy):
    """`fw run`'s per-rule counters (a RuleCounters' count: called directly when compiled), then
    another hook in its place, then none: each packet goes to the hook set when it arrives."""
    from fw.rule_counters import RuleCounters

    handler, errors, _ = handler_for(Engine(engine_policy))
    counters, other = RuleCounters(), RuleCounters()
    seen = []
    syn = seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1)
    handler.observe = counters.count
    handler(StandInPacket(syn))
    handler.handle(StandInPacket(syn), syn)  # what fw.drivers.nfqueue_socket calls: the payload in hand
    handler.observe = other.count
    handler(StandInPacket(syn))
    handler.observe = seen.append
    handler(StandInPacket(syn))
    handler.observe = None
    handler(StandInPacket(syn))
    assert counters.totals() == {"allow-web": (2, 2 * len(syn), 1)}
    assert other.totals() == {"allow-web": (1, len(syn), 0)}
    assert [(d.verdict, d.reason) for d in seen] == [("accept", "established")]
    assert handler.verdicts.accepted == {"rule:allow-web": 1, "established": 4} and errors == []


def test_each_packet_reaches_the_engine_with_its_own_interface_names(engine_policy):
    """judge keeps the last packet's names: a packet of other interfaces, or after
    forget_interfaces (an ifindex reused), is looked up again."""
    class Recording(Engine):
        def process(self, data, now, iif=None, oif=None):
            seen.append((iif, oif))
            return super().process(data, now, iif, oif)

    seen = []
    handler, errors, _ = handler_for(Recording(engine_policy))
    syn = seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1)
    for indev, outdev in [(1, 0), (1, 0), (0, 1), (1, 1), (1, 1)]:
        handler(StandInPacket(syn, indev=indev, outdev=outdev))
    handler._ifnames[1] = "renamed"  # as if the ifindex now named another interface
    handler(StandInPacket(syn, indev=1, outdev=1))
    handler.forget_interfaces()
    handler._ifnames[1] = "renamed"
    handler(StandInPacket(syn, indev=1, outdev=1))
    assert seen == [("lo", None), ("lo", None), (None, "lo"), ("lo", "lo"), ("lo", "lo"), ("lo", "lo"),
                    ("renamed", "renamed")]
    assert errors == []


TRUNCATED_SYN = seg("198.51.100.10:40000", "203.0.113.10:80", "S")[:30]  # TCP header cut short


@pytest.mark.parametrize("garbage", [b"", b"\x45", b"\x60" + b"\0" * 10, b"\xff" * 64, TRUNCATED_SYN])
def test_malformed_bytes_are_dropped_as_malformed_never_an_error(engine_policy, garbage):
    engine = Engine(engine_policy)
    handler, errors, _ = handler_for(engine, fail_open=True)
    packet = StandInPacket(garbage)
    handler(packet)
    assert packet.verdicts == ["drop"]
    assert handler.verdicts.dropped == {"malformed": 1} and errors == []


@pytest.mark.parametrize(("fail_open", "verdict"), [(False, "drop"), (True, "accept")])
def test_an_engine_exception_gives_the_fail_verdict_and_is_reported_with_the_packet(
        engine_policy, fail_open, verdict):
    handler, errors, _ = handler_for(FailingEngine(engine_policy), fail_open)
    packet = StandInPacket(udp_pkt("198.51.100.10:5000", "203.0.113.10:53", b"fail"))
    handler(packet)
    assert packet.verdicts == [verdict]
    assert errors == [("engine", "ZeroDivisionError", "udp 198.51.100.10:5000 -> 203.0.113.10:53 (32 bytes)")]
    assert handler.errors["engine"] == 1
    counted = handler.verdicts.accepted if verdict == "accept" else handler.verdicts.dropped
    assert dict(counted) == {"error": 1}
    after = StandInPacket(seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1))
    handler(after)
    assert after.verdicts == ["accept"]  # and the next packet is judged as usual


def test_failing_effects_or_verdicts_are_counted_not_raised(engine_policy):
    def broken_effects(_effects):
        raise OSError("no route")

    handler, errors, _ = handler_for(Engine(engine_policy), on_effects=broken_effects)
    dropped = StandInPacket(seg("198.51.100.10:40001", "203.0.113.10:81", "S", seq=1))
    handler(dropped)
    assert dropped.verdicts == ["drop"]  # the verdict went first
    handler(StandInPacket(seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1), verdict_fails=True))
    # the refusal's event, then the verdict of the SYN and its SessionOpened: each failure counted
    assert dict(handler.errors) == {"effects": 2, "verdict": 1}
    assert [e[0] for e in errors] == ["effects", "verdict", "effects"]


def test_summaries_name_the_flow_or_show_the_bytes():
    assert summarize(seg("[2001:db8:1::10]:40000", "[2001:db8:2::10]:80", "S")) == (
        "tcp [2001:db8:1::10]:40000 -> [2001:db8:2::10]:80 (60 bytes)")
    assert summarize(b"\x99\x01\x02") == "3 bytes: 990102"
    assert summarize(b"") == "0 bytes: "


# -- netlink -------------------------------------------------------------------------------------------


def test_the_queue_configuration_message_carries_range_length_and_flags():
    flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    message = config_message(7, 42, flags=flags, copy_range=0xFFFF, maxlen=4096)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq, pid) == (len(message), 0x0302, 0x1 | 0x4, 42, 0)
    assert struct.unpack_from("!BBH", message, 16) == (socket.AF_UNSPEC, 0, 7)
    attrs, offset = {}, 20
    while offset < len(message):
        size, kind = struct.unpack_from("=HH", message, offset)
        attrs[kind] = message[offset + 4:offset + size]
        offset += (size + 3) & ~3
    assert attrs == {2: struct.pack("!IB", 0xFFFF, 2), 3: struct.pack("!I", 4096),
                     5: struct.pack("!I", 0x5), 4: struct.pack("!I", 0x5)}


def test_acks_and_errors_are_told_from_packets():
    request = struct.pack("=IHHII", 40, 0x302, 5, 42, 0)
    ack = struct.pack("=IHHII", 36, 2, 0, 9, 0) + struct.pack("=i", 0) + request
    refused = ack[:16] + struct.pack("=i", -95) + ack[20:]
    assert netlink_error(ack) == (0, 42)
    assert netlink_error(refused) == (95, 42)
    assert netlink_error(struct.pack("=IHHII", 16, 0x0300, 0, 0, 0)) is None  # a queued packet


def test_the_kernels_queue_counters_are_read_by_queue(tmp_path):
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text("    0  13577     3 2 65531  1904     7 4099  1\n"
                    "    5  13580     0 2 65531     0     0    0  1\n")
    counters = read_queue_counters(str(proc))
    assert counters[0] == {"queue": 0, "peer_portid": 13577, "queue_total": 3, "copy_mode": 2,
                           "copy_range": 65531, "queue_dropped": 1904, "user_dropped": 7, "id_sequence": 4099}
    assert counters[5]["queue_dropped"] == 0
    assert read_queue_counters(str(tmp_path / "absent")) == {}


# -- the event log and effects ---------------------------------------------------------------------


def test_engine_times_become_eve_timestamps_and_the_event_is_not_changed():
    event = {"time": 100.0, "event_type": "flow", "src_ip": "198.51.100.10",
             "flow": {"start": 90.5, "end": 100.0}, "fw": {"reason": "timeout"}}
    wall = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
    record = to_eve(event, lambda t: wall + (t - 100.0))
    assert list(record)[:2] == ["timestamp", "event_type"]
    assert datetime.datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() == wall
    start = datetime.datetime.strptime(record["flow"]["start"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert start == wall - 9.5
    assert record["fw"] == {"reason": "timeout", "version": 1}
    assert event["flow"]["start"] == 90.5 and "version" not in event["fw"] and "time" in event


def test_the_log_follows_a_rotation_on_reopen(tmp_path):
    path = tmp_path / "eve.json"
    log = EveLog(str(path))
    log.write({"event_type": "drop", "time": 1.0})
    log.flush()
    path.rename(tmp_path / "eve.json.1")
    log.reopen()
    log.write({"event_type": "flow", "time": 2.0})
    log.close()
    assert json.loads((tmp_path / "eve.json.1").read_text())["event_type"] == "drop"
    assert json.loads(path.read_text())["event_type"] == "flow"


def test_effects_are_counted_by_what_became_of_them(tmp_path):
    log = EveLog(str(tmp_path / "eve.json"))
    effects = Effects(None, log)
    effects((LogEvent({"event_type": "drop"}), SendPacket(4, b"\x45" + b"\0" * 19), object()))
    assert dict(effects.counters) == {"events_logged": 1, "send_errors": 1, "unsupported:object": 1}
    unlogged = Effects(None, None)
    unlogged((LogEvent({"event_type": "drop"}),))
    assert unlogged.counters["events_unlogged"] == 1


def test_reports_of_one_kind_are_throttled_per_minute():
    throttle = Throttle(limit=2)
    assert [throttle.allow("engine", 10.0) for _ in range(3)] == [True, True, False]
    assert throttle.allow("effects", 10.0)
    assert throttle.allow("engine", 71.0)  # a new minute


# -- the command line's small parts ------------------------------------------------------------------


def test_queue_and_hook_options():
    assert _queues(None, None) == (0, 0) and _queues(3, None) == (3, 3) and _queues(None, "2-5") == (2, 5)
    assert _hooks("output, FORWARD") == ("FORWARD", "OUTPUT")
    for bad in ("5-2", "a-b", "7"):
        with pytest.raises(Exception, match="not a range"):
            _queues(None, bad)
    with pytest.raises(Exception, match="comma-separated list"):
        _hooks("prerouting")


def test_a_session_line_reads_like_conntrack():
    session = {"proto": "udp", "timeout": 29, "state": "UNREPLIED", "flags": [], "rule": "allow-dns",
               "alg": None,
               "original": {"src": "198.51.100.10", "dst": "203.0.113.10", "sport": 5353, "dport": 53,
                            "packets": 1, "bytes": 60},
               "reply": {"src": "203.0.113.10", "dst": "198.51.100.10", "sport": 53, "dport": 5353,
                         "packets": 0, "bytes": 0}}
    assert session_line(session) == (
        "udp      17  29 UNREPLIED src=198.51.100.10 dst=203.0.113.10 sport=5353 dport=53 packets=1 bytes=60 "
        "src=203.0.113.10 dst=198.51.100.10 sport=53 dport=5353 packets=0 bytes=0 rule=allow-dns")


def test_the_daemon_binds_with_the_cheaper_binding_of_its_build():
    """auto: our own netlink binding when it is compiled (make install), netfilterqueue in a pure run
    (FW_PURE=1: make test-pure runs this test there too); a binding by name whatever the build."""
    from fw import compiled_modules  # noqa: PLC0415
    from fw.daemon import queue_class_for  # noqa: PLC0415
    from fw.drivers.nfqueue import Queue  # noqa: PLC0415
    from fw.drivers.nfqueue_socket import SocketQueue  # noqa: PLC0415

    compiled = "fw.drivers.nfqueue_socket" in compiled_modules()
    assert queue_class_for("auto") is (SocketQueue if compiled else Queue)
    assert queue_class_for("socket") is SocketQueue
    assert queue_class_for("netfilterqueue") is Queue
