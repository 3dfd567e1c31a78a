"""What the copy range costs: one TCP stream through a SocketQueue that copies N bytes of each packet.

How it works: a lab of its own (prefix `fwc<pid>-`, torn down at the end; root), an NFQUEUE rule
for the client's TCP stream in the firewall namespace, and tests/socket_queue_tool.py bound to the
queue (batched accepts, GSO on) with copy range N; the client sends a fixed number of bytes to the
server (the receiver checks the hash); the tool reports its own CPU time (user and system, from
getrusage), the packets it judged and the bytes copied to it. Each copy range is run `--runs` times,
alternating. CPU time is the process's own, which other load on the machine moves much less than
wall-clock time, but it does move: compare runs of one sitting.

    python -m bench.copy_range --bytes 200000000 --runs 3 128 65535
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fw.lab import Lab
from tests import netns
from tests.test_nfqueue_socket import QUEUE, Tool, iptables


def one_run(lab: Lab, copy_range: int, nbytes: int) -> dict:
    tool = Tool(lab, "--copy-range", str(copy_range))
    try:
        with netns.tcp_sink(lab, 9000, lifetime=120) as sink:
            sent = netns.tcp_send(lab, "203.0.113.10", 9000, nbytes, seed=1, timeout=100)
            received = sink.json()
        seen = tool.finish()
    finally:
        tool.kill()
    if received != sent:
        raise SystemExit(f"copy range {copy_range}: the stream arrived damaged: {received} != {sent}")
    cpu = seen["user_seconds"] + seen["system_seconds"]
    return {"copy_range": copy_range, "packets": seen["packets"], "bytes_copied": seen["bytes_copied"],
            "gso_packets": seen["gso"], "user_s": round(seen["user_seconds"], 3),
            "system_s": round(seen["system_seconds"], 3),
            "us_per_packet": round(cpu / seen["packets"] * 1e6, 2), "ms_per_mb": round(cpu / nbytes * 1e9, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_range", description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=200_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("ranges", type=int, nargs="+")
    args = parser.parse_args()
    lab = Lab(f"fwc{os.getpid()}-")
    try:
        lab.up()
        iptables(lab, "-A", "FORWARD", "-p", "tcp", "--dport", "9000", "-j", "NFQUEUE", "--queue-num", str(QUEUE))
        for _ in range(args.runs):
            for copy_range in args.ranges:
                print(json.dumps(one_run(lab, copy_range, args.bytes)), flush=True)
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
