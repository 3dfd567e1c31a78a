"""Programs the live benchmark runs inside lab namespaces: `python bench/live_tools.py COMMAND ...`.

- `ping`: ICMP echo with a raw socket, one every `interval`; prints the round-trip times in ms.
- `bare-loop`: the bare NFQUEUE loop (accept everything) on one queue, with or without the GSO flag,
  through fw.drivers.nfqueue.Queue (the daemon's reader and NFQNL_MSG_CONFIG), until SIGTERM.
Each prints one JSON line when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time


def ping(args) -> dict:
    ident = os.getpid() & 0xFFFF
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(args.count):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"fw-bench" * 4
            header = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
            start = time.perf_counter()
            sock.sendto(header, (args.address, 0))
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data = sock.recv(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                kind, _, _, their_ident, their_seq = struct.unpack_from("!BBHHH", icmp)
                if (kind, their_ident, their_seq) == (0, ident, seq):
                    rtts.append(round((time.perf_counter() - start) * 1000, 4))
                    break
            time.sleep(args.interval)
    return {"sent": args.count, "rtts_ms": rtts}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def bare_loop(args) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fw.drivers.nfqueue import Queue, QueueOptions  # noqa: PLC0415

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    counted = [0]

    def accept(packet) -> None:
        packet.accept()
        counted[0] += 1

    queue = Queue(args.queue, accept, QueueOptions(gso=bool(args.gso)))  # copy range 0xffff, as the daemon
    poller = select.poll()
    poller.register(queue.fileno(), select.POLLIN)
    print(json.dumps({"ready": True}), flush=True)
    while not stop:
        if poller.poll(200):
            queue.drain()
    queue.close()
    return {"packets": counted[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("ping")
    sub.add_argument("--address", required=True)
    sub.add_argument("--count", type=int, default=100)
    sub.add_argument("--interval", type=float, default=0.01)
    sub.set_defaults(function=ping)
    sub = commands.add_parser("bare-loop")
    sub.add_argument("--queue", type=int, default=0)
    sub.add_argument("--gso", type=int, default=1)
    sub.set_defaults(function=bare_loop)
    args = parser.parse_args(argv)
    print(json.dumps(args.function(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
