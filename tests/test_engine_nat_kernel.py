"""The engine's side of the kernel's NAT bindings (fw/engine_nat_passes.py `_ask_kernel`,
`Nat.kernel_translates`, `Nat.kernel_lost`): the KernelNat effect once a bare session is ready, and
from the driver's answer on, accepts without a rewrite and without a mark for the packets whose
kernel entry holds the binding (`Nat.kernel_packet`), the others rewritten as before; the
binding's flag is not in snapshots; after a restart the kernel's kept entries give it back
(`KernelBindings.adopt`)."""

from __future__ import annotations

from fw.decision import KernelNat, RewritePacket, SetMark
from fw.drivers import offload
from fw.drivers.nat_kernel import KERNEL_NAT_MARK, KernelBindings
from fw.engine_nat import KERNEL_ASKED, KERNEL_HELD, KERNEL_NO, Binding
from fw.engine_nat_passes import BEFORE_ROUTING, ONE_PASS
from tests.packets import seg, udp_pkt
from tests.test_engine_nat import PUBLIC, make_engine

C, S = "198.51.100.10:40000", "192.0.2.80:80"
REPLY_TO = f"{PUBLIC}:40000"


def first(engine, data, now=100.0):
    return engine.process(data, now, "lan", None, hook=BEFORE_ROUTING)


def kinds(decision) -> list:
    return [type(effect) for effect in decision.effects]


def handshake(engine):
    return [first(engine, seg(C, S, "S", seq=100)), first(engine, seg(S, REPLY_TO, "SA", seq=300, ack=101)),
            first(engine, seg(C, S, "A", seq=101, ack=301))]


def test_the_effect_comes_once_when_a_tcp_session_is_established(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    syn, synack, ack = handshake(engine)
    assert KernelNat not in kinds(syn) and KernelNat not in kinds(synack)
    [effect] = [e for e in ack.effects if type(e) is KernelNat]
    assert effect.session is ack.session and ack.session.nat.kernel == KERNEL_ASKED
    again = first(engine, seg(C, S, "PA", seq=101, ack=301, payload=b"x"))
    assert KernelNat not in kinds(again)  # asked once


def test_no_effect_unless_the_driver_can_take_it(tmp_path):
    engine = make_engine(tmp_path)
    *_, ack = handshake(engine)
    assert KernelNat not in kinds(ack) and ack.session.nat.kernel == KERNEL_NO


def test_once_the_kernel_holds_it_its_packets_are_accepted_as_they_are(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    *_, ack = handshake(engine)
    session = ack.session
    engine.nat.kernel_packet = True  # (the driver's per-packet input: the packet's entry holds it)
    data = seg(C, S, "PA", seq=101, ack=301, payload=b"hello")
    before = engine.process(data, 101.0, None, "wan", hook=ONE_PASS)
    assert RewritePacket in kinds(before)  # in user space until the driver says so
    assert engine.nat.kernel_translates(session)
    assert session.nat.kernel == KERNEL_HELD
    out = engine.process(seg(C, S, "PA", seq=106, ack=301, payload=b"world"), 102.0, None, "wan", hook=ONE_PASS)
    back = first(engine, seg(S, REPLY_TO, "PA", seq=301, ack=111, payload=b"ok"), 103.0)
    for decision in (out, back):
        assert decision.verdict == "accept" and decision.session is session
        assert RewritePacket not in kinds(decision) and SetMark not in kinds(decision), decision.effects
    assert session.orig_packets == 4 and session.reply_packets == 2  # tracked as always
    assert not engine.nat.kernel_translates(session)  # only once asked


def test_a_packet_whose_kernel_entry_is_another_is_still_rewritten(tmp_path):
    """Queued before the switch (or its entry went away): the kernel would not translate it."""
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    *_, ack = handshake(engine)
    engine.nat.kernel_translates(ack.session)
    engine.nat.kernel_packet = False
    out = engine.process(seg(C, S, "PA", seq=101, ack=301, payload=b"x"), 101.0, None, "wan", hook=ONE_PASS)
    back = first(engine, seg(S, REPLY_TO, "PA", seq=301, ack=102, payload=b"ok"), 102.0)
    assert RewritePacket in kinds(out) and RewritePacket in kinds(back)


def test_a_lost_kernel_entry_asks_again(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    *_, ack = handshake(engine)
    session = ack.session
    engine.nat.kernel_translates(session)
    engine.nat.kernel_lost(session)
    assert session.nat.kernel == KERNEL_NO
    out = engine.process(seg(C, S, "PA", seq=101, ack=301, payload=b"x"), 101.0, None, "wan", hook=ONE_PASS)
    assert RewritePacket in kinds(out) and KernelNat in kinds(out)  # rewritten, and asked again


def test_udp_is_asked_for_after_four_datagrams_not_for_a_query_and_its_answer(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    client = "192.0.2.7:3000"  # a port forward (dns-in): the destination translated
    query = first(engine, udp_pkt(client, f"{PUBLIC}:53", b"q"))
    answer = first(engine, udp_pkt("198.51.100.20:53", client, b"a"))
    again = first(engine, udp_pkt(client, f"{PUBLIC}:53", b"q2"))
    assert all(KernelNat not in kinds(d) for d in (query, answer, again))
    fourth = first(engine, udp_pkt("198.51.100.20:53", client, b"a2"))
    assert KernelNat in kinds(fourth)
    assert fourth.session.nat.dnat and not fourth.session.nat.snat
    one_way = [first(engine, udp_pkt("198.51.100.10:5000", "192.0.2.80:9000", b"x")) for _ in range(4)]
    assert [KernelNat in kinds(d) for d in one_way] == [False, False, False, True]  # masqueraded, no reply


def test_the_flag_is_not_in_snapshots(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    *_, ack = handshake(engine)
    engine.nat.kernel_translates(ack.session)
    binding = ack.session.nat
    restored = Binding.from_dict(binding.proto, binding.family, binding.to_dict())
    assert "kernel" not in binding.to_dict() and restored.kernel == KERNEL_NO


class FakeConntrack:
    """The kernel's entries with KERNEL_NAT_MARK as a dump gives them; what is sent is kept."""

    def __init__(self, entries):
        self.entries, self.sent = entries, []

    def dump(self, mark, mask):
        assert mark == mask == KERNEL_NAT_MARK
        return self.entries

    def send(self, data):
        self.sent.append(data)

    def next_seq(self):
        return len(self.sent)

    def drain(self):
        pass

    def close(self):
        pass


def entry(tuple4):
    found = offload.Entry()
    found.family, found.proto, found.mark = 4, 6, KERNEL_NAT_MARK
    (found.src, found.dst, found.sport, found.dport) = tuple4
    return found


def test_after_a_restart_a_restored_session_whose_kernel_entry_was_kept_is_held_again(tmp_path):
    """fw.drivers.nat_kernel `adopt`: the daemon before the restart kept its entries (`fw stop
    --keep-rules`); the next one, from the snapshot and the kernel's dump, holds the binding again:
    no new KernelNat, no rewrite, not `nat:kernel-stale`; an entry no session owns is deleted."""
    old = make_engine(tmp_path)
    old.nat.kernel_bindings = True
    *_, ack = handshake(old)
    old.nat.kernel_translates(ack.session)
    engine = make_engine(tmp_path)
    assert engine.restore(old.snapshot(0.0), 100.5, 0.0) == 1
    engine.nat.kernel_bindings = True
    [session] = list(engine.sessions)
    assert session.nat.kernel == KERNEL_NO  # (node-local: not in the snapshot)
    orphan = (bytes([198, 51, 100, 11]), bytes([192, 0, 2, 80]), 40001, 80)
    conntrack = FakeConntrack([entry(session.nat.orig), entry(orphan)])
    bindings = KernelBindings(engine, conntrack)
    assert bindings.adopt() == 1
    assert session.nat.kernel == KERNEL_HELD and bindings.active == {session.key: session}
    assert bindings.stats()["kernel_bindings_orphans"] == 1 and len(conntrack.sent) == 1  # its delete
    assert orphan[0] in conntrack.sent[0] and session.nat.orig[0] not in conntrack.sent[0]
    engine.nat.kernel_packet = True
    out = engine.process(seg(C, S, "PA", seq=101, ack=301, payload=b"x"), 101.0, None, "wan", hook=ONE_PASS)
    assert out.verdict == "accept" and out.session is session
    assert RewritePacket not in kinds(out) and KernelNat not in kinds(out)
    bindings.keep_for_restart()
    bindings.close()  # stopping for a restart again: the entry stays
    assert len(conntrack.sent) == 1
