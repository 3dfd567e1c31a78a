"""Replay packets through an NFQUEUE driver without traffic: its user-space cost per packet.

How it works: a queue is bound (root, best in a private network namespace: `unshare -n`) with one
of the two drivers, a PacketHandler and the given engine, as the daemon does (accepts left to the
queue's batches). A second netlink socket sends REPLAY packet messages, built as the kernel builds
them, straight to the queue's socket (a root socket may unicast to another netlink socket); then
the queue is drained until `count` packets were handled. The batch verdicts go to the kernel, which
finds no such packets and answers ENOENT (counted by the driver, as a real error would be): the
same extra message per batch for both drivers.
"""

from __future__ import annotations

import socket

from fw.decision import ACCEPT, Decision
from fw.drivers.nfqueue import ACCEPT_LATER, NETLINK_NETFILTER, PacketHandler, Queue, QueueOptions
from fw.drivers.nfqueue_socket import SocketQueue, packet_message

QUEUE = 7
REPLAY = 5_000  # messages sent whatever `count` (the set-up stays the same)


class StubEngine:
    """An engine that accepts every packet as established at once: what the handler costs without it."""

    def __init__(self):
        self.decision = Decision(ACCEPT, "established")

    def process(self, data, now, iif=None, oif=None, **_):
        return self.decision


def failed(where, exc, data):
    raise RuntimeError(f"{where}: {exc!r}")


def run(kind: str, engine, traffic: list, count: int, bare: bool = False, handler=None, observe=None) -> None:
    """Replay `count` packets through the driver `kind` and a PacketHandler on `engine` (bare: no
    handler, a callback that leaves every packet to the batch accept: the driver alone; `handler`:
    this one instead, fw.drivers.nat_queue's; observe: the handler's hook, as fw.records sets it in
    `fw run`). A packet of `traffic` is its bytes, or (bytes, the packet_message keywords the kernel
    would give it: hook, mark, skb_info...)."""
    if count > REPLAY:
        raise SystemExit(f"at most {REPLAY} packets")
    if handler is None:
        handler = PacketHandler(engine, False, lambda effects: None, failed)
    handler.accept_later = True
    handler.observe = observe
    options = QueueOptions()
    seen = []
    callback = (lambda packet: seen.append(packet.id) or ACCEPT_LATER) if bare else handler
    queue = Queue(QUEUE, callback, options) if kind == "netfilterqueue" else SocketQueue(QUEUE, callback, options)
    portid = queue._sock.getsockname()[0]
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sender.bind((0, 0))
    for number, data in enumerate(traffic[:REPLAY], 1):
        data, attributes = (data, {}) if isinstance(data, bytes) else data
        sender.sendto(packet_message(QUEUE, number, data, **{"indev": 1, "outdev": 1, **attributes}), (portid, 0))
    handled = 0
    while handled < count:
        done = queue.drain(min(options.budget, count - handled))
        if not done:
            raise RuntimeError(f"the queue ran dry after {handled} packets")
        handled += done
    accepted = len(seen) if bare else sum(handler.verdicts.accepted.values())  # the verdicts given
    dropped = {} if bare else dict(handler.verdicts.dropped)
    queue.close()
    sender.close()
    if handler.errors:
        raise RuntimeError(f"handler errors: {dict(handler.errors)}")
    assert accepted >= count and not dropped, f"{accepted} accepted, dropped: {dropped}"
