"""Offline NAT micro-benchmarks: the cost per packet of the pieces in fw/nat, no kernel, one core.

How it works: packets are built once with fw.packet.build; each figure is the best of five timed
loops (perf_counter) of `parse`, of `rewrite` (addresses and ports, incremental checksum, and
with the partial-checksum mode's full recompute), of `SeqAdj.adjust`, and of `Pool.allocate` on a
pool filled to 90% (each allocation released again, so the fill stays). `translate` is the
established path (a session's compiled `Translation`; `translate_partial` with a partial checksum
computed whole), `rewrite` the general one. Run:
`python -m bench.nat_bench` (add `--json` for machine-readable output). Not part of the tests.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time

from fw.nat.ports import Pool
from fw.nat.rewrite import Manip, Translation, rewrite
from fw.nat.seqadj import SeqAdj
from fw.packet import build, parse

CLIENT, SERVER, NAT = "198.51.100.10", "203.0.113.10", "192.0.2.1"
ACK_PSH = 0x18
ROUNDS = 5


def best_per_call(loop, count: int) -> float:
    """Seconds per call: the best of ROUNDS timed runs of `loop(count)`."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        loop(count)
        best = min(best, time.perf_counter() - start)
    return best / count


def packet_figures(size: int, count: int) -> dict[str, float]:
    data = build.tcp(CLIENT, SERVER, 40000, 80, 1000, 2000, ACK_PSH, 65535,
                     build.tcp_options(ts=(1, 2)), b"x" * size)
    packet = parse(data)
    manip = Manip(src=ipaddress.ip_address(NAT).packed, sport=20001)
    translation = Translation(4, 6, (packet.src, packet.dst, packet.sport, packet.dport),
                              (manip.src, packet.dst, manip.sport, packet.dport))
    adj = SeqAdj()
    adj.record(0, 500, 5)

    def parse_loop(n):
        for _ in range(n):
            parse(data)

    def rewrite_loop(n):
        for _ in range(n):
            rewrite(data, packet, manip)

    def translate_loop(n):
        for _ in range(n):
            translation.apply(data, packet)

    def translate_partial_loop(n):
        for _ in range(n):
            translation.apply(data, packet, True)

    def partial_loop(n):
        for _ in range(n):
            rewrite(data, packet, manip, partial=True)

    def seqadj_loop(n):
        for _ in range(n):
            adj.adjust(data, packet, 0)

    return {name: best_per_call(loop, count) * 1e6 for name, loop in (
        ("parse_us", parse_loop), ("translate_us", translate_loop),
        ("translate_partial_us", translate_partial_loop), ("rewrite_us", rewrite_loop),
        ("rewrite_partial_us", partial_loop), ("seqadj_us", seqadj_loop))}


def allocation_figure(fill: float = 0.9, count: int = 20000, spread: bool = True) -> float:
    """Microseconds per allocation (and release) with `fill` of a one-address pool's ports handed
    out, spread evenly over the range or (spread=False) in one block from its start, while new
    sessions ask for ports anywhere in the range."""
    nat = ipaddress.ip_address(NAT).packed
    client = ipaddress.ip_address(CLIENT).packed
    pool = Pool(4, nat)
    lo, hi = pool.port_range(6)
    size = hi - lo + 1
    used = int(size * fill)
    taken: set = set()
    for i in range(used):
        port = lo + (i * size // used if spread else i)
        pool.claim(6, nat, port)
        taken.add((nat, port))

    def allocate_loop(n):
        for i in range(n):
            got = pool.allocate(6, client, lo + (i * 7919) % size, taken)
            pool.release(6, *got)

    return best_per_call(allocate_loop, count) * 1e6


def main(argv: list[str]) -> None:
    figures = {"64B": packet_figures(64, 50000), "1448B": packet_figures(1448, 50000),
               "64KiB": packet_figures(65000, 500),
               "pool": {"allocate_90pct_spread_us": allocation_figure(),
                        "allocate_90pct_block_us": allocation_figure(spread=False)}}
    if "--json" in argv:
        print(json.dumps(figures, indent=2))
        return
    for name, values in figures.items():
        print(name + ": " + ", ".join(f"{key} {value:.2f}" for key, value in values.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
