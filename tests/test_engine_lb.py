"""Virtual servers in the engine (fw/engine_lb.py through NAT's destination decision), playbook style.

New sessions to a virtual server are counted per real server from the translation the engine makes
(binding names `lb:<name>:<addr:port>`, SPEC's replay field), over 10,000 flows from a fixed seed:
the counting schedulers (wrr, wlc with every session open) follow weights at ten servers to within
5% (relative); the hashing ones (sh, maglev) where a sample of 10,000 holds 5% by more than two
standard deviations (tests/test_lb_schedulers.py says why). Then: a session stays on its real
server for life; persistence; drain; all down (reject and drop); full_nat; UDP and IPv6; two
engines agree (maglev, sh); Maglev's disruption when a server leaves; counts; replay's fields.
"""

from __future__ import annotations

import random
import textwrap
from collections import Counter

import pytest

from fw.decision import RewritePacket, SendPacket
from fw.drivers.replay import PcapWriter, replay
from fw.engine import Engine, EngineConfig
from fw.packet import flow_text, parse
from fw.policy import PolicyError, load_policy, load_policy_sources
from tests.packets import seg, udp_pkt

SEED = 15
FLOWS = 10_000
VIP = "203.0.113.100"


def servers_yaml(weights, port=8080, prefix="203.0.113.") -> str:
    return "\n".join(f"      - {{address: {prefix}{21 + i}, port: {port}, weight: {w}}}"
                     for i, w in enumerate(weights))


def policy_text(weights=(1, 2), scheduler="maglev", extra="", vip=VIP, proto="tcp", port=80,
                prefix="203.0.113.") -> str:
    return textwrap.dedent(f"""\
        version: 1
        defaults: {{action: accept}}
        virtual_servers:
          - name: web
            address: "{vip}"
            proto: {proto}
            port: {port}
            scheduler: {scheduler}
        """) + "".join(f"    {line}\n" for line in extra.splitlines() if line) + \
        "    real_servers:\n" + servers_yaml(weights, prefix=prefix) + "\n"


def engine_for(text: str, events: bool = False) -> Engine:
    return Engine(load_policy_sources([("lb.yaml", text)]), EngineConfig(events=events))


def client_flows(count: int = FLOWS, seed: int = SEED) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(f"198.51.100.{rng.randrange(1, 255)}", rng.randrange(1024, 65536)) for _ in range(count)]


def opened_on(decision) -> str:
    """The real server a new session went to (its binding's name), checked against the bytes it leaves with."""
    assert decision.verdict == "accept", decision
    names = decision.session.nat.names
    assert names.startswith("lb:web:")
    [rewrite] = [e for e in decision.effects if isinstance(e, RewritePacket)]
    server = names[len("lb:web:"):]
    assert flow_text(parse(rewrite.data)).split(" -> ")[1] == server
    return server


def syn(engine, src: str, sport: int, now: float = 1.0, vip: str = VIP, port: int = 80):
    return engine.process(seg(f"{src}:{sport}", f"{vip}:{port}", "S", seq=1000), now)


def shares(engine, flows) -> Counter:
    return Counter(opened_on(syn(engine, src, sport)) for src, sport in flows)


def worst_relative_error(counts: Counter, weights) -> float:
    total, total_weight = sum(counts.values()), sum(weights)
    return max(abs(counts[f"203.0.113.{21 + i}:8080"] / total - w / total_weight) / (w / total_weight)
               for i, w in enumerate(weights))


# --- shares -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["wrr", "wlc"])
def test_counting_schedulers_follow_weights_at_ten_servers(scheduler):
    weights = tuple(range(1, 11))
    counts = shares(engine_for(policy_text(weights, scheduler)), client_flows())
    assert sum(counts.values()) == FLOWS
    assert worst_relative_error(counts, weights) < 0.05, counts


@pytest.mark.parametrize("scheduler", ["rr", "lc"])
def test_unweighted_schedulers_share_evenly(scheduler):
    weights = (1,) * 10
    counts = shares(engine_for(policy_text(weights, scheduler)), client_flows())
    assert worst_relative_error(counts, weights) < 0.05, counts


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
@pytest.mark.parametrize("weights", [(1, 1, 2), (2, 3, 3)], ids=str)
def test_hashing_schedulers_follow_weights(scheduler, weights):
    rng = random.Random(SEED)  # sh hashes the source only: every flow from its own client
    flows = [(f"198.51.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))
             for _ in range(FLOWS)]
    counts = shares(engine_for(policy_text(weights, scheduler)), flows)
    assert worst_relative_error(counts, weights) < 0.05, counts


# --- a session's life -------------------------------------------------------------------------

def test_a_session_keeps_its_real_server_both_ways_for_life_even_drained():
    engine = engine_for(policy_text((1, 1), "rr"))
    first = syn(engine, "198.51.100.10", 40000)
    server = opened_on(first)
    address, port = server.split(":")
    engine.nat.lb.drain("web", server)
    reply = engine.process(seg(f"{server}", "198.51.100.10:40000", "SA", seq=5000, ack=1001), 1.1)
    [back] = [e.data for e in reply.effects if isinstance(e, RewritePacket)]
    assert reply.verdict == "accept" and flow_text(parse(back)) == f"tcp {VIP}:80 -> 198.51.100.10:40000"
    ack = engine.process(seg("198.51.100.10:40000", f"{VIP}:80", "A", seq=1001, ack=5001), 1.2)
    assert ack.reason == "established" and ack.session.state_name == "ESTABLISHED"
    [forward] = [e.data for e in ack.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(forward)).endswith(f"-> {address}:{port}")
    for sport in range(41000, 41020):  # new sessions avoid the drained server
        assert opened_on(syn(engine, "198.51.100.10", sport)) != server
    rows = {s["server"]: s for s in engine.nat.lb.status()[0]["real_servers"]}
    assert rows[server]["health"] == "drained" and rows[server]["active"] == 1


def test_persistence_keeps_a_client_on_its_server_until_it_expires():
    engine = engine_for(policy_text((1, 1, 1), "rr", "persistence: 60"))
    chosen = {opened_on(syn(engine, "198.51.100.10", sport, now=1.0 + sport / 1e5)) for sport in range(40000, 40030)}
    assert len(chosen) == 1
    others = {opened_on(syn(engine, f"198.51.100.{20 + i}", 40000)) for i in range(3)}
    assert len(others | chosen) == 3  # other clients still go round
    engine.expire(100.0)
    assert len(engine.nat.lb.services.balancers["web"].affinity) == 0


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("action", ["reject", "drop"])
def test_all_down_is_refused_as_when_all_down_says(proto, action):
    engine = engine_for(policy_text((1, 0), "wlc", f"when_all_down: {action}", proto=proto))
    engine.nat.lb.drain("web", "203.0.113.21:8080")
    if proto == "tcp":
        decision = syn(engine, "198.51.100.10", 40000)
    else:
        decision = engine.process(udp_pkt("198.51.100.10:40000", f"{VIP}:80", b"q"), 1.0)
    assert (decision.verdict, decision.reason, decision.session) == ("drop", "lb:all-down", None)
    sent = [e for e in decision.effects if isinstance(e, SendPacket)]
    assert len(sent) == (1 if action == "reject" else 0)
    if sent:
        answer = parse(sent[0].data)
        assert (answer.proto == 6 and answer.flags & 4) or answer.proto == 1
    assert len(engine.table) == 0 and engine.counters["lb_all_down"] == 1
    engine.nat.lb.enable("web", "203.0.113.21:8080")
    assert syn(engine, "198.51.100.10", 40001).verdict == "accept"


def test_health_down_servers_get_no_new_sessions():
    """... while the sessions they have are kept (they may recover), translated and counted."""
    from fw.lb.health import HealthChange

    engine = engine_for(policy_text((1, 1, 1), "maglev"))
    down = "203.0.113.22:8080"
    sport = next(p for p in range(40000, 41000) if opened_on(syn(engine, "198.51.100.10", p)) == down)
    assert engine.nat.lb.apply(HealthChange(("web", down), "up", "down", "connection refused"))
    while not engine.nat.lb.work():
        pass
    counts = shares(engine, client_flows(3000))
    assert down not in counts and len(counts) == 2
    reply = engine.process(seg(down, f"198.51.100.10:{sport}", "SA", seq=5000, ack=1001), 1.1)
    [back] = [e.data for e in reply.effects if isinstance(e, RewritePacket)]
    assert reply.verdict == "accept" and flow_text(parse(back)) == f"tcp {VIP}:80 -> 198.51.100.10:{sport}"
    row = {s["server"]: s for s in engine.nat.lb.status()[0]["real_servers"]}[down]
    assert (row["health"], row["active"]) == ("down", 1)


def test_full_nat_sources_become_the_virtual_address_and_replies_come_back():
    engine = engine_for(policy_text((1,), "rr", "full_nat: true"))
    decision = syn(engine, "198.51.100.10", 40000)
    [data] = [e.data for e in decision.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(data)) == f"tcp {VIP}:1024 -> 203.0.113.21:8080"  # below the ephemeral ports
    assert decision.session.nat.names == "lb:web:203.0.113.21:8080"
    reply = engine.process(seg("203.0.113.21:8080", f"{VIP}:1024", "SA", seq=5000, ack=1001), 1.1)
    [back] = [e.data for e in reply.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(back)) == f"tcp {VIP}:80 -> 198.51.100.10:40000"
    second = syn(engine, "198.51.100.11", 40000)  # the same source port from another client: the next one
    [data] = [e.data for e in second.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(data)) == f"tcp {VIP}:1025 -> 203.0.113.21:8080"
    third = syn(engine, "198.51.100.12", 20000)  # a port in the range is kept
    [data] = [e.data for e in third.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(data)) == f"tcp {VIP}:20000 -> 203.0.113.21:8080"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_udp_and_ipv6_virtual_servers(proto):
    engine = engine_for(policy_text((1, 1), "maglev", vip="2001:db8:2::100", proto=proto, port=53,
                                    prefix="2001:db8:2::"))
    client, vip = "[2001:db8:1::10]:5353", "[2001:db8:2::100]:53"
    first = udp_pkt(client, vip, b"query") if proto == "udp" else seg(client, vip, "S", seq=1000)
    decision = engine.process(first, 1.0)
    assert decision.verdict == "accept"
    names = decision.session.nat.names
    assert names in ("lb:web:[2001:db8:2::21]:8080", "lb:web:[2001:db8:2::22]:8080")
    server = names[len("lb:web:"):]
    [out] = [e.data for e in decision.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(out)) == f"{proto} {client} -> {server}"
    reply = udp_pkt(server, client, b"answer") if proto == "udp" else seg(server, client, "SA", seq=5000, ack=1001)
    answer = engine.process(reply, 1.1)
    [back] = [e.data for e in answer.effects if isinstance(e, RewritePacket)]
    assert answer.reason == "established"
    assert flow_text(parse(back)) == f"{proto} {vip} -> {client}"


def test_counts_per_real_server_opened_active_and_bytes():
    engine = engine_for(policy_text((1,), "rr"))
    decision = syn(engine, "198.51.100.10", 40000)
    engine.process(seg("203.0.113.21:8080", "198.51.100.10:40000", "SA", seq=5000, ack=1001), 1.1)
    [row] = engine.nat.lb.status()[0]["real_servers"]
    assert (row["opened"], row["active"], row["bytes"]) == (1, 1, 0)
    engine.kill(decision.session, 2.0)
    [row] = engine.nat.lb.status()[0]["real_servers"]
    assert (row["opened"], row["active"], row["bytes"]) == (1, 0, 80)  # two 40-byte segments


def test_a_reload_keeps_counts_sessions_and_clients_and_resets_drain():
    text = policy_text((1, 1), "rr", "persistence: 60")
    engine = engine_for(text)
    server = opened_on(syn(engine, "198.51.100.10", 40000))
    engine.nat.lb.drain("web", server)
    engine.swap_policy(load_policy_sources([("lb.yaml", text)]))
    rows = {s["server"]: s for s in engine.nat.lb.status()[0]["real_servers"]}
    assert rows[server]["active"] == 1 and rows[server]["health"] == "up"
    assert engine.process(seg("198.51.100.10:40000", f"{VIP}:80", "A", seq=1001, ack=1), 1.5).session is not None
    assert opened_on(syn(engine, "198.51.100.10", 40001)) == server  # persistence survived the reload


def test_a_synced_session_stays_on_its_real_server_on_the_peer():
    """HA sync sends a session as serial.session_to_dict (the snapshot's record, the binding's
    `lb` key with it): the peer adopts it on the same real server, counts it, translates its
    packets both ways, and its own new sessions are balanced as before."""
    from fw.conntrack import serial

    ours, peer = engine_for(policy_text((1, 1), "rr")), engine_for(policy_text((1, 1), "rr"))
    decision = syn(ours, "198.51.100.10", 40000)
    server = opened_on(decision)
    peer.adopt(serial.session_from_dict(serial.session_to_dict(decision.session, 0.0), 0.0), 1.05)
    assert {s["server"]: s for s in peer.nat.lb.status()[0]["real_servers"]}[server]["active"] == 1
    reply = peer.process(seg(server, "198.51.100.10:40000", "SA", seq=5000, ack=1001), 1.1)
    [back] = [e.data for e in reply.effects if isinstance(e, RewritePacket)]
    assert reply.reason == "established" and flow_text(parse(back)) == f"tcp {VIP}:80 -> 198.51.100.10:40000"
    ack = peer.process(seg("198.51.100.10:40000", f"{VIP}:80", "A", seq=1001, ack=5001), 1.2)
    [forward] = [e.data for e in ack.effects if isinstance(e, RewritePacket)]
    assert flow_text(parse(forward)) == f"tcp 198.51.100.10:40000 -> {server}"
    assert {opened_on(syn(peer, "198.51.100.11", p)) for p in (1, 2)} == {"203.0.113.21:8080", "203.0.113.22:8080"}


def test_snapshots_keep_the_real_server_and_count_it():
    engine = engine_for(policy_text((1, 1), "rr"))
    server = opened_on(syn(engine, "198.51.100.10", 40000))
    data = engine.snapshot(0.0)
    again = engine_for(policy_text((1, 1), "rr"))
    assert again.restore(data, 1.5, 0.0) == 1
    rows = {s["server"]: s for s in again.nat.lb.status()[0]["real_servers"]}
    assert rows[server]["active"] == 1
    [session] = list(again.sessions)
    again.kill(session, 2.0)
    assert {s["server"]: s for s in again.nat.lb.status()[0]["real_servers"]}[server]["active"] == 0


# --- scale-out: two engines, and Maglev's disruption ------------------------------------------

@pytest.mark.parametrize("scheduler", ["maglev", "sh"])
def test_two_engines_pick_the_same_real_server(scheduler):
    flows = client_flows(2000, seed=SEED + 3)
    text = policy_text((1, 2, 3, 1), scheduler)
    first, second = engine_for(text), engine_for(text)
    picks = [(opened_on(syn(first, s, p)), opened_on(syn(second, s, p))) for s, p in flows]
    assert all(a == b for a, b in picks)
    assert len({a for a, _ in picks}) == 4


@pytest.mark.parametrize("count", [10])
def test_maglev_moves_at_most_one_nth_of_the_other_flows_when_a_server_leaves(count):
    flows = client_flows(FLOWS, seed=SEED + 4)
    before = engine_for(policy_text((1,) * count, "maglev"))
    after = engine_for(policy_text((1,) * count, "maglev"))
    leaving = "203.0.113.26:8080"
    after.nat.lb.services.balancers["web"].set_weight(leaving, 0)
    while not after.nat.lb.work():
        pass
    old = [opened_on(syn(before, s, p)) for s, p in flows]
    new = [opened_on(syn(after, s, p)) for s, p in flows]
    others = [(a, b) for a, b in zip(old, new, strict=True) if a != leaving]
    moved = sum(a != b for a, b in others) / len(others)
    print(f"maglev through the engine, {count} servers, one leaves: {moved:.4f} of the other flows "
          f"change server (bound 1/N = {1 / count:.4f})")
    assert moved <= 1 / count
    assert leaving not in new


# --- the policy and replay --------------------------------------------------------------------

def test_a_virtual_server_on_a_dnat_entrys_address_is_a_located_error():
    text = policy_text((1,), "rr") + textwrap.dedent("""\
        nat:
          - {name: fwd, type: dnat, proto: tcp, dst: 203.0.113.0/24, dport: 80, to: "203.0.113.50:80"}
        """)
    with pytest.raises(PolicyError) as caught:
        load_policy_sources([("lb.yaml", text)])
    [error] = [d.format() for d in caught.value.diagnostics]
    assert error.startswith("lb.yaml:5:14: error: virtual server 'web' has the address, proto and port of "
                            "dnat entry 'fwd' (line 12): tcp 203.0.113.100 port 80"), error


def test_replay_names_the_real_server_on_the_first_packet(tmp_path):
    policy = tmp_path / "lb.yaml"
    policy.write_text(policy_text((1, 1), "rr"))
    capture = tmp_path / "in.pcap"
    writer = PcapWriter(str(capture))
    writer.write(1.0, seg("198.51.100.10:40000", f"{VIP}:80", "S", seq=1000))
    writer.write(1.1, seg("203.0.113.21:8080", "198.51.100.10:40000", "SA", seq=5000, ack=1001))
    writer.write(1.2, seg("198.51.100.11:40000", f"{VIP}:80", "S", seq=1000))
    writer.close()
    rows = [r.to_json() for r in replay(str(capture), Engine(load_policy(policy)))]
    assert rows[0]["translation"] == "lb:web:203.0.113.21:8080"
    assert rows[0]["nat"] == "tcp 198.51.100.10:40000 -> 203.0.113.21:8080"
    assert "translation" not in rows[1] and rows[1]["nat"] == f"tcp {VIP}:80 -> 198.51.100.10:40000"
    assert rows[2]["translation"] == "lb:web:203.0.113.22:8080"


def test_a_reload_answers_from_the_old_maglev_table_while_the_new_one_is_built():
    """No table is built at once at a reload (a pause in the packet loop): the old one answers, by
    server name, and a server gone from the policy is passed over; the new one comes in slices."""
    flows = client_flows(2000, seed=SEED + 5)
    engine = engine_for(policy_text((1, 1, 1, 1), "maglev"))
    before = [opened_on(syn(engine, s, p)) for s, p in flows]
    engine.swap_policy(load_policy_sources([("lb.yaml", policy_text((1, 1, 1), "maglev"))]))  # .24 leaves
    scheduler = engine.nat.lb.services.balancers["web"].scheduler
    assert scheduler.builder is not None and not scheduler.builder.done  # pending, not built at once
    during = [scheduler.pick(parse(seg(f"{s}:{p}", f"{VIP}:80", "S")).src, p).name for s, p in flows]
    gone = "203.0.113.24:8080"
    assert gone not in during
    assert all(a == b for a, b in zip(before, during, strict=True) if a != gone)
    while not engine.nat.lb.work():
        pass
    assert scheduler.builder is None and gone not in scheduler.table.counts()


def test_full_nat_does_not_hand_a_released_port_straight_back():
    """A full_nat session reset and expired (CLOSE: 10 s) leaves fw's table long before the real
    server's TIME_WAIT of an earlier connection on that tuple may end (60 s on Linux): the next
    client gets the following port, not the one just released; the range is reused in turn."""
    engine = engine_for(policy_text((1,), "rr", "full_nat: true"))
    server = "203.0.113.21:8080"
    first = syn(engine, "198.51.100.10", 40000)
    assert first.session.nat.reply[3] == 1024
    assert engine.process(seg(server, f"{VIP}:1024", "SA", seq=5000, ack=1001), 1.1).verdict == "accept"
    assert engine.process(seg("198.51.100.10:40000", f"{VIP}:80", "R", seq=1001), 1.2).verdict == "accept"
    engine.expire(30.0)
    assert len(engine.table) == 0  # port 1024 released
    second = syn(engine, "198.51.100.10", 40002, now=31.0)
    assert second.verdict == "accept" and second.session.nat.reply[3] == 1025
    third = syn(engine, "198.51.100.10", 40004, now=31.1)
    assert third.session.nat.reply[3] == 1026


def test_a_syn_takes_the_real_server_tuple_of_a_finished_session_as_conntrack_reopens():
    """A client reuses its port toward another virtual address of the same real server while our
    session of that tuple (real server -> client) is in TIME_WAIT: the SYN is not `nat:exhausted`,
    the finished session gives way (SessionClosed "reopen"), as a kernel entry in TIME_WAIT does."""
    from fw.decision import SessionClosed

    text = policy_text((1,), "rr") + textwrap.indent(textwrap.dedent("""\
          - name: alt
            address: "203.0.113.101"
            proto: tcp
            port: 8088
            scheduler: rr
            real_servers:
              - {address: 203.0.113.21, port: 8080}
        """), "  ")
    engine = engine_for(text)
    client, server = "198.51.100.10:40000", "203.0.113.21:8080"
    assert opened_on(syn(engine, "198.51.100.10", 40000)) == server
    steps = [(client, f"{VIP}:80", "A", 1001, 5001), (client, f"{VIP}:80", "FA", 1001, 5001),
             (server, client, "FA", 5001, 1002), (client, f"{VIP}:80", "A", 1002, 5002)]
    engine.process(seg(server, client, "SA", seq=5000, ack=1001), 1.1)
    for at, (src, dst, flags, seq, ack) in enumerate(steps):
        engine.process(seg(src, dst, flags, seq=seq, ack=ack), 1.2 + at / 10)
    [old] = list({id(s): s for s in engine.table.sessions.values() if s.nat is not None}.values())
    assert old.state_name == "TIME_WAIT"
    again = syn(engine, "198.51.100.10", 40000, now=2.0, vip="203.0.113.101", port=8088)
    assert again.verdict == "accept" and again.session is not old
    assert again.session.nat.names == f"lb:alt:{server}"
    assert [e.why for e in again.effects if isinstance(e, SessionClosed)] == ["reopen"]
    reply = engine.process(seg(server, client, "SA", seq=9000, ack=1001), 2.1)
    [back] = [e.data for e in reply.effects if isinstance(e, RewritePacket)]
    assert reply.session is again.session and flow_text(parse(back)).startswith("tcp 203.0.113.101:8088 ->")
