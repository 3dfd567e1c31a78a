"""A small traceroute for the lab (traceroute is not installed everywhere): `python trace_tool.py ADDRESS`.

UDP probes with a hop limit of 1, 2, ... to ADDRESS, port PORT + hop, from one UDP socket; the ICMP
(ICMPv6) errors are read on a raw socket. Prints one JSON list, a hop each: who answered, what
(`time-exceeded` or `unreachable`), and whether the probe it quotes is exactly the one this host
sent ("own": its source address and port and destination port, as a NAT must translate them
back), else "other". Stops at the first unreachable or after --hops.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import struct
import time

KINDS = {4: {11: "time-exceeded", 3: "unreachable"}, 6: {3: "time-exceeded", 1: "unreachable"}}


def quoted_probe(family: int, icmp: bytes) -> tuple[bytes, int, int] | None:
    """(source address, source port, destination port) of the UDP probe an error quotes."""
    inner = icmp[8:]
    if family == 4:
        if len(inner) < 28 or inner[9] != 17:
            return None
        start = (inner[0] & 0x0F) * 4
        src = inner[12:16]
    else:
        if len(inner) < 48 or inner[6] != 17:
            return None
        start, src = 40, inner[8:24]
    sport, dport = struct.unpack_from("!HH", inner, start)
    return src, sport, dport


def trace(address: str, port: int, hops: int, timeout: float) -> list[dict]:
    family = 6 if ":" in address else 4
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    raw = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if family == 6 else socket.IPPROTO_ICMP)
    udp = socket.socket(af, socket.SOCK_DGRAM)
    udp.connect((address, port))
    own_address, own_port = udp.getsockname()[:2]
    own = ipaddress.ip_address(own_address).packed
    found = []
    for hop in range(1, hops + 1):
        if family == 6:
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hop)
        else:
            udp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hop)
        udp.sendto(b"fw-lab-trace", (address, port + hop))
        deadline = time.monotonic() + timeout
        answer = None
        while answer is None and (left := deadline - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            data, sender = raw.recvfrom(65535)
            icmp = data if family == 6 else data[(data[0] & 0x0F) * 4:]
            kind = KINDS[family].get(icmp[0])
            probe = quoted_probe(family, icmp) if kind else None
            if probe is None or probe[2] != port + hop:
                continue
            answer = {"from": sender[0], "kind": kind,
                      "quoted": "own" if probe[:2] == (own, own_port) else "other"}
        found.append(answer or {"from": None, "kind": "timeout", "quoted": None})
        if answer is not None and answer["kind"] == "unreachable":
            break
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--port", type=int, default=33434)
    parser.add_argument("--hops", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(trace(args.address, args.port, args.hops, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
