"""The engine's side of the kernel's NAT bindings (fw/engine_nat_passes.py `_ask_kernel`,
`Nat.kernel_translates`, `Nat.kernel_lost`): the KernelNat effect once a bare session is ready, and
from the driver's answer on, accepts without a rewrite and without a mark for the packets whose
kernel entry holds the binding (`Nat.kernel_packet`), the others rewritten as before; the
binding's flag is not in snapshots; after a restart the kernel's kept entries give it back
(`KernelBindings.adopt`). The driver with `--offload` (fw.drivers.nat_kernel's `offload`, a fake
ctnetlink socket): the entry is made offloaded too, and deleted on close; an HA peer's copy that
replaces the session takes the entry over; an entry a restart adopted with the offload bit is
offloaded again."""

from __future__ import annotations

import struct

from fw.conntrack import serial
from fw.conntrack.table import OFFLOADED
from fw.decision import KernelNat, RewritePacket, SessionClosed, SetMark
from fw.drivers import offload
from fw.drivers.nat_kernel import KERNEL_NAT_MARK, KernelBindings
from fw.drivers.offload import OffloadService
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


class AckingConntrack:
    """fw.drivers.offload.Conntrack without the kernel: the messages sent, an acknowledgement (0)
    for each request that asks for one, and the mark updates."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.marks: list[tuple] = []
        self.seq = 0
        self.sock = self
        self._answers: list[bytes] = []
        self.errors: dict = {}

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        _length, _kind, flags, seq = struct.unpack_from("=IHHI", data)
        if flags & offload.NLM_F_ACK:
            self._answers.append(struct.pack("=IHHII", 20, offload.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", 0))

    def recv(self, _size: int, _flags: int = 0) -> bytes:
        if not self._answers:
            raise BlockingIOError
        return self._answers.pop(0)

    def drain(self) -> None:
        self._answers.clear()

    def set_mark(self, session, mark: int, mask: int) -> None:
        self.marks.append((session.key, mark, mask))


def created_mark(message: bytes) -> int:
    """The CTA_MARK of an IPCTNL_MSG_CT_NEW message."""
    top = offload.attributes(message[16:], 4)
    return struct.unpack("!I", top[offload.CTA_MARK])[0]


def test_with_offload_the_kernels_entry_is_made_offloaded_and_deleted_on_close(tmp_path):
    """--offload (fw.drivers.nat_kernel `offload`): the entry holding the binding is created with the
    offload bit too, the session is offloaded (liberal, read back by the offload service), and its
    close deletes the entry (no mark update on an entry that is going)."""
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    bindings = KernelBindings(engine, conntrack=AckingConntrack())
    service = OffloadService(engine, conntrack=AckingConntrack())
    bindings.offload = service
    *_, ack = handshake(engine)
    session = ack.session
    bindings.on_ready(KernelNat(session))
    [create] = [m for m in bindings.conntrack.sent if struct.unpack_from("=IHH", m)[2] & offload.NLM_F_ACK]
    assert created_mark(create) & (KERNEL_NAT_MARK | offload.OFFLOAD_MARK) == KERNEL_NAT_MARK | offload.OFFLOAD_MARK
    assert session.nat.kernel == KERNEL_HELD and session.flags & OFFLOADED and session.liberal
    assert service.offloaded == {session.key: session} and service.stats()["offloaded_translated"] == 1
    sent = len(bindings.conntrack.sent)
    service.on_closed(SessionClosed(session, "expired"))
    bindings.on_closed(SessionClosed(session, "expired"))
    assert service.offloaded == {} and service.conntrack.marks == []  # the entry is deleted, not unmarked
    assert len(bindings.conntrack.sent) == sent + 1 and bindings.active == {}


def test_without_offload_or_with_exact_resets_the_entry_is_not_offloaded(tmp_path):
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    bindings = KernelBindings(engine, conntrack=AckingConntrack())
    *_, ack = handshake(engine)
    bindings.on_ready(KernelNat(ack.session))
    [create] = [m for m in bindings.conntrack.sent if struct.unpack_from("=IHH", m)[2] & offload.NLM_F_ACK]
    assert not created_mark(create) & offload.OFFLOAD_MARK and not ack.session.flags & OFFLOADED
    other = make_engine(tmp_path)
    other.nat.kernel_bindings = True
    bindings = KernelBindings(other, conntrack=AckingConntrack())
    bindings.offload = OffloadService(other, conntrack=AckingConntrack())
    *_, ack = handshake(other)
    ack.session.rst_on_timeout = True  # its RST needs sequence numbers the kernel does not give back
    bindings.on_ready(KernelNat(ack.session))
    assert ack.session.nat.kernel == KERNEL_HELD and not ack.session.flags & OFFLOADED
    assert bindings.offload.offloaded == {}


def test_a_peers_copy_that_replaces_the_session_takes_its_entry_over(tmp_path):
    """HA sync: a peer's news replaces the session (Engine.adopt, SessionClosed 'replaced'); the copy
    has the same binding, so it takes the kernel entry over (offloaded still): nothing deleted, the
    packets in flight keep passing. A copy with another binding does not."""
    engine = make_engine(tmp_path)
    engine.nat.kernel_bindings = True
    bindings = KernelBindings(engine, conntrack=AckingConntrack())
    bindings.offload = service = OffloadService(engine, conntrack=AckingConntrack())
    *_, ack = handshake(engine)
    old = ack.session
    bindings.on_ready(KernelNat(old))
    sent = len(bindings.conntrack.sent)

    def replace(session):
        copy = serial.session_from_dict(serial.session_to_dict(session, 0.0), 0.0)
        for effect in engine.adopt(copy, 101.0):
            if type(effect) is SessionClosed:
                bindings.on_closed(effect)
                service.on_closed(effect)
        return copy

    new = replace(old)
    assert len(bindings.conntrack.sent) == sent and service.conntrack.marks == []  # the entry stays as it is
    assert new.nat.kernel == KERNEL_HELD and bindings.active == {new.key: new}
    assert service.offloaded == {new.key: new} and new.flags & OFFLOADED and new.liberal
    assert bindings.stats()["kernel_bindings_carried"] == 1 and bindings.stats()["kernel_bindings_made"] == 1
    engine.nat.kernel_packet = True
    out = engine.process(seg(C, S, "PA", seq=101, ack=301, payload=b"x"), 102.0, None, "wan", hook=ONE_PASS)
    assert out.verdict == "accept" and RewritePacket not in kinds(out)  # the kernel translates it
    other = serial.session_to_dict(new, 0.0)
    other["nat"]["reply"][3] += 1  # (another translated port: not the entry's binding)
    for effect in engine.adopt(serial.session_from_dict(other, 0.0), 103.0):
        if type(effect) is SessionClosed:
            bindings.on_closed(effect)
    assert len(bindings.conntrack.sent) == sent + 1 and bindings.active == {}  # deleted


def test_an_entry_a_restart_adopted_offloaded_is_the_offload_services_again(tmp_path):
    """The run before offloaded the session (its entry has both bits) and stopped for a restart: the
    next one adopts the entry (before the offload service exists) and `use_offload` gives the session
    to the service, so that its deadline follows the kernel's (else its expiry would end a flow the
    kernel still passes)."""
    old = make_engine(tmp_path)
    old.nat.kernel_bindings = True
    *_, ack = handshake(old)
    old.nat.kernel_translates(ack.session)
    engine = make_engine(tmp_path)
    engine.restore(old.snapshot(0.0), 100.5, 0.0)
    engine.nat.kernel_bindings = True
    [session] = list(engine.sessions)
    kept = entry(session.nat.orig)
    kept.mark |= offload.OFFLOAD_MARK
    bindings = KernelBindings(engine, FakeConntrack([kept]))
    assert bindings.adopt() == 1
    service = OffloadService(engine, conntrack=AckingConntrack())
    bindings.use_offload(service)
    assert service.offloaded == {session.key: session} and session.flags & OFFLOADED and session.liberal
