"""fw.drivers.nfqueue_socket's verdict buffer without a kernel: the datagram a drain's verdicts make
is the messages of `verdict_message` one after the other, whether a new payload is copied into the
buffer (short) or sent where it is, as an iovec of one sendmsg (GATHER_FROM bytes or more: NAT's
rewritten GSO packets), and a datagram never passes MAX_DATAGRAM."""

from __future__ import annotations

from fw.drivers.nfqueue import QueueOptions
from fw.drivers.nfqueue_socket import (
    GATHER_FROM,
    MAX_DATAGRAM,
    NF_ACCEPT,
    NF_DROP,
    NfPacket,
    SocketQueue,
    verdict_message,
)

QUEUE = 4


class FakeSocket:
    """The datagrams sent, each as the bytes the kernel would receive."""

    def __init__(self):
        self.datagrams: list[bytes] = []

    def send(self, data) -> int:
        self.datagrams.append(bytes(data))
        return len(data)

    def sendmsg(self, buffers) -> int:
        self.datagrams.append(b"".join(bytes(part) for part in buffers))
        return len(self.datagrams[-1])


def queue() -> SocketQueue:
    """A SocketQueue's verdict side, without binding a socket (its __init__'s templates)."""
    q = SocketQueue.__new__(SocketQueue)
    q.number, q.options, q._verdict_batch = QUEUE, QueueOptions(verdict_batch=64), 64
    q._sock, q._out, q._parts, q._gathered = FakeSocket(), bytearray(), [], 0
    q._accept_through, q._given, q._draining, q.batches, q.sends = None, 0, True, 0, 0
    q._template = bytes(verdict_message(QUEUE, 0, 0))
    q._batch_template = bytes(verdict_message(QUEUE, 0, NF_ACCEPT, batch=True))
    q._mark_template = bytes(verdict_message(QUEUE, 0, 0, 0))
    q._payload_head = bytes(verdict_message(QUEUE, 0, 0, None, b""))
    q._mark_payload_head = bytes(verdict_message(QUEUE, 0, 0, 0, b""))
    return q


def packet(q: SocketQueue, number: int, mark=None, payload=None) -> NfPacket:
    p = NfPacket()
    p.id, p.queue, p.new_mark, p.new_payload = number, q, mark, payload
    return p


def test_short_and_long_payloads_make_the_same_datagram_as_the_messages():
    q = queue()
    small, large, odd = b"\x45" * 61, bytes(range(256)) * (GATHER_FROM // 256 + 3), b"\x60" * (GATHER_FROM + 1)
    packet(q, 1, payload=small).accept()
    packet(q, 2, mark=0x20000000, payload=large).accept()
    packet(q, 3).drop()
    packet(q, 4, payload=odd).accept()  # its padding follows it in the buffer
    packet(q, 5, mark=7).accept()
    q._accept_through = 9
    q.accept_waiting()
    expected = b"".join((verdict_message(QUEUE, 1, NF_ACCEPT, payload=small),
                         verdict_message(QUEUE, 2, NF_ACCEPT, 0x20000000, large),
                         verdict_message(QUEUE, 3, NF_DROP), verdict_message(QUEUE, 4, NF_ACCEPT, payload=odd),
                         verdict_message(QUEUE, 5, NF_ACCEPT, 7),
                         verdict_message(QUEUE, 9, NF_ACCEPT, batch=True)))
    assert q._sock.datagrams == [expected] and q.sends == 1 and q.batches == 1
    assert q._parts == [] and q._gathered == 0 and q._out == bytearray()


def test_gso_payloads_are_split_across_datagrams_below_the_cap():
    q = queue()
    payloads = [bytes([n]) * 65_000 for n in range(5)]
    for number, payload in enumerate(payloads, 1):
        packet(q, number, payload=payload).accept()
    q.accept_waiting()
    sent = q._sock.datagrams
    assert all(len(datagram) <= MAX_DATAGRAM for datagram in sent) and len(sent) == 3
    assert b"".join(sent) == b"".join(verdict_message(QUEUE, n, NF_ACCEPT, payload=p)
                                      for n, p in enumerate(payloads, 1))
