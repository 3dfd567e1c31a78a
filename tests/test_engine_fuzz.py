"""Hypothesis: whatever bytes arrive, the engine answers with a Decision and never raises."""

from __future__ import annotations

import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, seg, udp_pkt

VALID = [
    seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1, wscale=7, mss=1460, sack_perm=True, ts=(1, 0)),
    seg("203.0.113.10:80", "198.51.100.10:40000", "SA", seq=9, ack=2),
    seg("198.51.100.10:40000", "203.0.113.10:80", "PA", seq=2, ack=10, payload=b"GET / HTTP/1.0\r\n"),
    seg("[2001:db8:1::10]:40000", "[2001:db8:2::10]:21", "PA", seq=2, ack=10, payload=b"PORT 1,2,3,4,5,6\r\n"),
    udp_pkt("198.51.100.10:5000", "203.0.113.10:53", b"x"),
    icmp_echo_pkt("198.51.100.10", "203.0.113.10", 1, 1),
]


def make_engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(textwrap.dedent("""
        version: 1
        defaults: {action: reject, log: true}
        rules:
          - {name: any, action: accept, proto: tcp, dport: [21, 80], alg: ftp}
          - {name: dns, action: accept, proto: udp}
          - {name: ping, action: accept, proto: icmp}
        """))
    return Engine(load_policy(path), EngineConfig(events=True))


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_arbitrary_bytes_get_a_decision(tmp_path_factory, packets):
    engine = make_engine(tmp_path_factory)
    for number, data in enumerate(packets):
        decision = engine.process(data, float(number))
        assert decision.verdict in ("accept", "drop")
    engine.expire(1e6)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(VALID))), st.integers(0, 200), st.integers(0, 255)),
                max_size=12))
def test_mutated_valid_packets_get_a_decision(tmp_path_factory, mutations):
    engine = make_engine(tmp_path_factory)
    for number, (which, position, value) in enumerate(mutations):
        data = bytearray(VALID[which])
        if position < len(data):
            data[position] = value
        else:
            data = data[: position % max(len(data), 1)]
        decision = engine.process(bytes(data), number * 0.5)
        assert decision.verdict in ("accept", "drop")
        assert isinstance(decision.reason, str)
    engine.expire(1e6)
