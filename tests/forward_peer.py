"""A forwarding peer for lab tests, run inside a namespace (`python tests/forward_peer.py receive ...`).

`own` is the owner's side (without the daemon): it receives like `receive`, runs each admitted
packet through an engine with `--policy` and the datagram's interfaces, and sends what the engine
accepts on out of a raw socket, one hop later (fw.packet.ttl); it prints the decisions it made.
`receive` listens like a node's --forward-listen (fw.sync.forwarding.endpoint.Receiver and its Gate)
until it has seen `--datagrams` datagrams or `--lifetime` seconds passed, then prints one JSON line:
admitted count, sha256 of the admitted packets in arrival order, sources, refusals by reason.
`send` sends a scenario from node `--node`: `--count` genuine packets of `--size` bytes, then
(`--attacks`) a forged one, replays of the first three, an oversized one, one from an unknown node
and a malformed one; prints the sha256 of the genuine packets. Both take the cluster's sync key in
hex (`--key`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fw.drivers.effects import RawSender  # noqa: E402
from fw.engine import Engine, EngineConfig  # noqa: E402
from fw.packet import build  # noqa: E402
from fw.packet.ttl import hop  # noqa: E402
from fw.policy import load_policy  # noqa: E402
from fw.sync.forwarding.endpoint import SO_MARK, Receiver, Sender, parse_address  # noqa: E402
from fw.sync.forwarding.gate import Gate, Limits  # noqa: E402
from fw.sync.forwarding.wire import HOOKS, Sealer, forwarding_key  # noqa: E402

ATTACKS = 7  # datagrams `send --attacks` adds after the genuine ones


def packet(index: int, size: int, udp: str | None = None) -> bytes:
    payload = bytes((index + i) & 0xFF for i in range(max(0, size - 40)))
    if udp:  # "198.51.100.10:5000>203.0.113.10:9999"
        (src, sport), (dst, dport) = (parse_address(end) for end in udp.split(">"))
        return build.udp(src, dst, sport, dport, f"packet {index}".encode())
    return build.tcp("198.51.100.10", "203.0.113.10", 40000, 80, 1 + index * len(payload), 1, 0x18, 502, b"", payload)


def receive(args) -> dict:
    key = forwarding_key(bytes.fromhex(args.key), args.cluster)
    limits = Limits(packets_per_second=args.rate, burst_seconds=args.burst)
    receiver = Receiver(Gate(key, args.node, set(args.peers).__contains__, limits), parse_address(args.listen),
                        mark=args.mark)  # fmt: skip
    digest, sources, admitted, deadline = hashlib.sha256(), set(), 0, time.monotonic() + args.lifetime
    print("listening", flush=True, file=sys.stderr)
    while receiver.counters["datagrams"] < args.datagrams and time.monotonic() < deadline:
        readable, _, _ = select.select([receiver], [], [], 0.2)
        if readable:
            for datagram, source in receiver.receive():
                digest.update(datagram.packet)
                sources.add(source[0])
                admitted += 1
    stats = receiver.stats()
    receiver.close()
    return {"admitted": admitted, "sha256": digest.hexdigest(), "sources": sorted(sources),
            "datagrams": stats["datagrams"], "refused": stats["refused"]}


def own(args) -> dict:
    key = forwarding_key(bytes.fromhex(args.key), args.cluster)
    receiver = Receiver(Gate(key, args.node, set(args.peers).__contains__), parse_address(args.listen), mark=args.mark)
    engine, raw = Engine(load_policy(args.policy), EngineConfig(events=False)), RawSender(args.mark or 0x1)
    decided, sent, deadline = Counter(), 0, time.monotonic() + args.lifetime
    while receiver.counters["datagrams"] < args.datagrams and time.monotonic() < deadline:
        if not select.select([receiver], [], [], 0.2)[0]:
            continue
        for datagram, _ in receiver.receive():
            decision = engine.process(datagram.packet, time.monotonic(), datagram.iif, datagram.oif)
            decided[f"{decision.verdict} {decision.reason}"] += 1
            onward = hop(datagram.packet) if decision.verdict == "accept" else None
            if onward is not None:
                raw.send(onward[0] >> 4, onward)
                sent += 1
    stats = receiver.stats()
    receiver.close()
    raw.close()
    return {"decided": dict(decided), "sent_on": sent, "refused": stats["refused"]}


def send(args) -> dict:
    sync_key = bytes.fromhex(args.key)
    key, target = forwarding_key(sync_key, args.cluster), parse_address(args.to)
    sender = Sender(Sealer(key, args.node, int(time.time() * 1e6)), mark=args.mark)
    digest, sent, kept = hashlib.sha256(), 0, []
    with _plain_socket(target, args.mark) as plain:
        for index in range(args.count):
            data = packet(index, args.size, args.udp)
            if args.attacks and index < 3:  # sealed by the same sender, kept to be replayed later
                kept.append(sender.sealer.seal(data, time.time(), HOOKS["FORWARD"], "lan", "wan"))
                plain.sendto(kept[-1], target)
            else:
                while not sender.send(target, data, HOOKS["FORWARD"], "lan", "wan"):
                    time.sleep(0.001)  # the socket buffer is full: the receiver catches up
            digest.update(data)
            sent += 1
        if args.attacks:
            _attack(args, sync_key, key, target, kept, plain)
    sender.close()
    return {"sent": sent, "sha256": digest.hexdigest(), "stats": sender.stats()}


def _plain_socket(target: tuple[str, int], mark: int) -> socket.socket:
    plain = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM)
    if mark:
        plain.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    return plain


def _attack(args, sync_key: bytes, key: bytes, target: tuple[str, int], kept: list[bytes], plain) -> None:
    """A forged datagram, three replays, an oversized one, one from an unknown node, a malformed one."""
    now, high = time.time(), 10**17
    attacks = [Sealer(forwarding_key(sync_key, "another-cluster"), args.node, high).seal(packet(0, 100), now),
               *kept, Sealer(key, args.node, high).seal(packet(0, 12000), now),
               Sealer(key, "intruder", high).seal(packet(0, 100), now), b"FW" + bytes(80)]  # fmt: skip
    assert len(attacks) == ATTACKS
    for blob in attacks:
        plain.sendto(blob, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("receive", "send", "own"))
    parser.add_argument("--key", required=True)
    parser.add_argument("--cluster", default="lab")
    parser.add_argument("--node", required=True)
    parser.add_argument("--mark", type=lambda text: int(text, 0), default=0)
    parser.add_argument("--listen")
    parser.add_argument("--peers", nargs="*", default=[])
    parser.add_argument("--datagrams", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20000.0)
    parser.add_argument("--burst", type=float, default=0.2)
    parser.add_argument("--lifetime", type=float, default=20.0)
    parser.add_argument("--to")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--attacks", action="store_true")
    parser.add_argument("--policy")
    parser.add_argument("--udp", help="send UDP packets SRC:PORT>DST:PORT instead of TCP ones")
    args = parser.parse_args()
    print(json.dumps({"receive": receive, "send": send, "own": own}[args.mode](args)))


if __name__ == "__main__":
    main()
