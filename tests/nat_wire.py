"""Lab helpers for the kernel NAT differential test: send exact packets, capture exact packets.

Run inside a lab namespace as a script:
- `python tests/nat_wire.py send HEX...`: each HEX is a whole IPv4/IPv6 packet, sent as is through a
  raw IPPROTO_RAW socket (the kernel adds no header and computes no L4 checksum, so what leaves is
  what we built: a complete checksum, as the kernel NAT expects of a CHECKSUM_NONE packet);
- `python tests/nat_wire.py capture --count N --lifetime S`: an AF_PACKET socket on eth0 records
  the IP packets of TCP, UDP, ICMP and ICMPv6 errors and echoes (no neighbour discovery), prints
  "ready" once bound, then, after N packets or S seconds, one JSON list of [outgoing, hex].
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ICMPV6_KEPT = frozenset((1, 2, 3, 4, 128, 129))


def interesting(data: bytes) -> bool:
    if not data or data[0] >> 4 not in (4, 6):
        return False
    if data[0] >> 4 == 4:
        return data[9] in (1, 6, 17)
    return data[6] in (6, 17) or (data[6] == 58 and len(data) > 40 and data[40] in ICMPV6_KEPT)


def capture(count: int, lifetime: float) -> list:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    print("ready", flush=True)
    seen: list = []
    deadline = time.monotonic() + lifetime
    while len(seen) < count and (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        data, address = sock.recvfrom(70000)
        if interesting(data):
            seen.append([address[2] == PACKET_OUTGOING, data.hex()])
    return seen


def send(packets: list[str]) -> None:
    for text in packets:
        data = bytes.fromhex(text)
        v6 = data[0] >> 4 == 6
        family = socket.AF_INET6 if v6 else socket.AF_INET
        destination = socket.inet_ntop(family, data[24:40] if v6 else data[16:20])
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            sock.sendto(data, (destination, 0))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("capture")
    sub.add_argument("--count", type=int, required=True)
    sub.add_argument("--lifetime", type=float, default=10.0)
    sub = commands.add_parser("send")
    sub.add_argument("packets", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "capture":
        print(json.dumps(capture(args.count, args.lifetime)), flush=True)
    else:
        send(args.packets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
