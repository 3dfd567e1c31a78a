"""NAT port slices for active/active HA: the slice index from the node id, the pools of two
nodes (fw.nat.ports) never handing out the same port, and two engines (EngineConfig.nat_slice)
translating to one address."""

from __future__ import annotations

import pytest

from fw.conntrack import serial
from fw.decision import RewritePacket
from fw.engine import Engine, EngineConfig
from fw.engine_nat import Nat
from fw.nat.ports import node_slice
from fw.packet import parse
from fw.policy import load_policy
from fw.sync.slices import slice_index
from tests.packets import seg


def test_the_index_comes_from_the_node_ids_trailing_number():
    assert [slice_index(node, 8) for node in ("fw1", "fw2", "edge-07", "a.b:8")] == [0, 1, 6, 7]


@pytest.mark.parametrize("node, count", [("fw", 2), ("fw3", 2), ("fw0", 2), ("fw1a", 2)])
def test_node_ids_that_give_no_slice_are_refused(node, count):
    with pytest.raises(ValueError, match="node id"):
        slice_index(node, count)


def test_two_nodes_take_disjoint_halves_of_the_range():
    fw1, fw2 = (node_slice((1024, 65535), slice_index(node, 2), 2) for node in ("fw1", "fw2"))
    assert fw1 == (1024, 33279) and fw2 == (33280, 65535)


SLICED_POLICY = """
version: 1
defaults: {action: drop}
rules:
  - {name: out, action: accept, src: 198.51.100.0/24}
nat:
  - {name: outbound, type: snat, src: 198.51.100.0/24, to: 203.0.113.1, ports: "20000-20019"}
"""


def sliced_engine(tmp_path, node: str, nodes: int = 2):
    path = tmp_path / f"{node}.yaml"
    path.write_text(SLICED_POLICY)
    return Engine(load_policy(path), EngineConfig(events=False, nat_slice=(slice_index(node, nodes), nodes)))


def test_two_engines_translating_to_one_address_never_hand_out_the_same_port(tmp_path):
    """Active/active NAT: fw1 and fw2 both translate to 203.0.113.1:20000-20019. Each draws from
    its own half (fw1 20000-20009, fw2 20010-20019), the client's own port included when it lies in
    the other half; a session synced from the peer keeps its port and takes none of ours; each is
    exhausted after its own ten ports."""
    fw1, fw2 = sliced_engine(tmp_path, "fw1"), sliced_engine(tmp_path, "fw2")
    ports = {}
    for name, engine in (("fw1", fw1), ("fw2", fw2)):
        got = []
        for n in range(11):
            client = f"198.51.100.{10 + n}:{20000 + n}"  # ports in both halves: kept only in one's own
            decision = engine.process(seg(client, "192.0.2.80:80", "S"), 1.0 + n)
            if n == 10:
                assert (decision.verdict, decision.reason) == ("drop", "nat:exhausted")
                continue
            left = parse(next(e.data for e in decision.effects if type(e) is RewritePacket))
            assert left.src == bytes([203, 0, 113, 1])
            got.append(left.sport)
        ports[name] = got
    assert sorted(ports["fw1"]) == list(range(20000, 20010))
    assert sorted(ports["fw2"]) == list(range(20010, 20020))
    assert not set(ports["fw1"]) & set(ports["fw2"])
    # fw1's session, synced to a third engine in fw2's slice: it keeps its port, fw2's pool keeps its own
    fw2b = sliced_engine(tmp_path, "fw2")
    session = next(iter(fw1.table.values()))
    record = serial.session_to_dict(session, 0.0)
    fw2b.adopt(serial.session_from_dict(record, 0.0), 2.0)
    decision = fw2b.process(seg("198.51.100.99:20000", "192.0.2.80:80", "S"), 3.0)
    left = parse(next(e.data for e in decision.effects if type(e) is RewritePacket))
    assert 20010 <= left.sport <= 20019


def test_a_node_outside_the_slices_is_refused_by_the_engine():
    with pytest.raises(ValueError, match="not among"):
        Nat(2, 2)


def test_fw_run_takes_the_slice_from_the_node_id_with_sync():
    """fw run's choice (fw.cli.daemon.nat_slice_of): no sync, the whole range; with sync, the node
    id's slice of 2 (or --nat-slices); an id without a number only matters when NAT does."""
    import click

    from fw.cli.daemon import nat_slice_of
    from fw.sync import SyncConfig

    def config(node):
        return SyncConfig("redis://192.0.2.100:6379/0", node, b"k" * 16)

    assert nat_slice_of(None, None, True) == (0, 1)
    assert nat_slice_of(config("fw2"), None, True) == (1, 2)
    assert nat_slice_of(config("edge-3"), 4, False) == (2, 4)
    assert nat_slice_of(config("alpha"), None, False) == (0, 1)  # no NAT: any node id will do
    for node, slices, translates in (("alpha", None, True), ("fw3", None, True), ("alpha", 2, False)):
        with pytest.raises(click.UsageError, match="--node-id"):
            nat_slice_of(config(node), slices, translates)


SYNCED_NAT_POLICY = """
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: ftp-out, action: accept, proto: tcp, src: 198.51.100.0/24, dport: 21, alg: ftp}
nat:
  - {name: outbound, type: snat, src: 198.51.100.0/24, to: 203.0.113.1, ports: "20000-20019"}
"""


def test_a_synced_translation_goes_on_at_the_peer_with_its_shift_and_data_port(tmp_path):
    """HA sync through the tracker (fw.sync.tracker, as Redis would carry it): fw1 opens and
    translates an FTP control session and rewrites a PORT (two bytes shorter); fw2 learns it and
    translates it both ways (the reply tuple's key, the shift, the data connection to the
    announced port), holds its port, and gives it back when the session is removed."""
    from fw.conntrack.table import flow_key
    from tests.test_sync_tracker import Side

    nodes = [Side(name, tmp_path, policy=SYNCED_NAT_POLICY, nat_slice=(slice_index(name, 2), 2))
             for name in ("fw1", "fw2")]
    fw1, fw2 = nodes
    client, server, seen = "198.51.100.10:40000", "192.0.2.21:21", "203.0.113.1:20000"

    def left(decision):
        assert decision.verdict == "accept", decision
        return parse(next(e.data for e in decision.effects if type(e) is RewritePacket))

    assert left(fw1.packet(seg(client, server, "S", seq=1000), 1.0)).sport == 20000  # fw1's slice
    fw1.deliver(fw2, 1.0)
    synack = left(fw2.packet(seg(server, seen, "SA", seq=5000, ack=1001), 1.1))  # found by its reply key
    assert (synack.dst, synack.dport) == (bytes([198, 51, 100, 10]), 40000)
    fw2.deliver(fw1, 1.1)
    left(fw1.packet(seg(client, server, "A", seq=1001, ack=5001), 1.2))
    line = b"PORT 198,51,100,10,156,64\r\n"
    assert left(fw1.packet(seg(client, server, "PA", seq=1001, ack=5001, payload=line), 2.0)).payload == \
        b"PORT 203,0,113,1,156,64\r\n"
    fw1.deliver(fw2, 2.0)
    fw1.packet(seg(client, server, "PA", seq=1001, ack=5001, payload=line), 2.1)
    fw1.deliver(fw2, 2.1)  # news again: fw2 replaces its copy
    # fw1 fails: fw2 carries on, in the numbers each end sees
    answer = left(fw2.packet(seg(server, seen, "PA", seq=5001, ack=1026, payload=b"200 ok\r\n"), 3.0))
    assert (answer.dport, answer.ack) == (40000, 1028)
    later = left(fw2.packet(seg(client, server, "PA", seq=1028, ack=5009, payload=b"RETR f\r\n"), 3.1))
    assert (later.src, later.sport, later.seq) == (bytes([203, 0, 113, 1]), 20000, 1026)
    data = fw2.packet(seg("192.0.2.21:20", "203.0.113.1:40000", "S", seq=77), 3.2)
    assert data.reason == "related:ftp"
    assert (left(data).dst, left(data).dport) == (bytes([198, 51, 100, 10]), 40000)
    # fw2's own new sessions take its own slice beside the synced one
    other = left(fw2.packet(seg("198.51.100.11:20000", server, "S", seq=1), 3.3))
    assert 20010 <= other.sport <= 20019
    assert len(fw2.engine.table) == 3 and len(fw2.engine.table.sessions) == 6  # each under two keys
    # removed at fw1 (killed): gone at fw2 too, under both keys
    control = fw1.engine.table.sessions[flow_key(6, bytes([198, 51, 100, 10]), bytes([192, 0, 2, 21]), 40000, 21)]
    fw1.effects(fw1.engine.kill(control, 4.0))
    fw1.deliver(fw2, 4.0)
    assert len(fw2.engine.table) == 2 and len(fw2.engine.table.sessions) == 4
    assert fw2.packet(seg(server, seen, "A", seq=5009, ack=1034), 4.2).reason == "invalid:no-session"
