"""Lab helpers for the kernel NAT differential test: send exact packets, capture exact packets.

Run inside a lab namespace as a script:
- `python tests/nat_wire.py send HEX...`: each HEX is a whole IPv4/IPv6 packet, sent as is through a
  raw IPPROTO_RAW socket (the kernel adds no header and computes no L4 checksum, so what leaves is
  what we built: a complete checksum, as the kernel NAT expects of a CHECKSUM_NONE packet);
- `python tests/nat_wire.py capture --count N --lifetime S [--port P]`: an AF_PACKET socket on
  eth0 records the IP packets of TCP, UDP, ICMP and ICMPv6 errors and echoes (no neighbour
  discovery; with --port only TCP to or from port P), prints "ready" once bound, then, after N
  packets, S seconds or SIGTERM, one JSON list of [outgoing, hex];
- `ftp-server --port P LINE...` / `ftp-client --address A --port P LINE...`: a scripted control
  channel. The server sends its first line, then one line for each line it receives; the client
  reads a line, then sends each of its lines, reading one after each. Both print one JSON object
  with the bytes they received (hex). Lines are given in hex.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
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


def on_port(data: bytes, port: int) -> bool:
    offset = (data[0] & 15) * 4 if data[0] >> 4 == 4 else 40
    proto = data[9] if data[0] >> 4 == 4 else data[6]
    return proto == 6 and port in struct.unpack_from("!HH", data, offset)


class Stop(Exception):
    pass


def capture(count: int, lifetime: float, port: int | None) -> list:
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # `timeout` may pass the signal on twice
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    print("ready", flush=True)
    seen: list = []
    deadline = time.monotonic() + lifetime
    try:
        while len(seen) < count and (remaining := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], remaining)[0]:
                break
            data, address = sock.recvfrom(70000)
            if interesting(data) and (port is None or on_port(data, port)):
                seen.append([address[2] == PACKET_OUTGOING, data.hex()])
    except Stop:
        pass
    return seen


def ftp_server(port: int, lines: list[bytes]) -> dict:
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True) as server:
        server.settimeout(10)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            reader = conn.makefile("rb")
            conn.sendall(lines[0])
            received = b""
            for line in lines[1:]:
                got = reader.readline()
                received += got
                conn.sendall(line)
            received += reader.read()            # to the client's close
    return {"received": received.hex()}


def ftp_client(address: str, port: int, lines: list[bytes]) -> dict:
    with socket.create_connection((address, port), timeout=5) as conn:
        reader = conn.makefile("rb")
        received = reader.readline()
        for line in lines:
            conn.sendall(line)
            received += reader.readline()
    return {"received": received.hex()}


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
    sub.add_argument("--port", type=int)
    sub = commands.add_parser("send")
    sub.add_argument("packets", nargs="+")
    for name in ("ftp-server", "ftp-client"):
        sub = commands.add_parser(name)
        sub.add_argument("--address", default="")
        sub.add_argument("--port", type=int, default=21)
        sub.add_argument("lines", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "capture":
        print(json.dumps(capture(args.count, args.lifetime, args.port)), flush=True)
    elif args.command == "send":
        send(args.packets)
    else:
        lines = [bytes.fromhex(line) for line in args.lines]
        result = (ftp_server(args.port, lines) if args.command == "ftp-server"
                  else ftp_client(args.address, args.port, lines))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
