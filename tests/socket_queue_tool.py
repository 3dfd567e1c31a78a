"""A program for the lab tests of fw.drivers.nfqueue_socket: one SocketQueue judging real packets.

Run inside the firewall namespace: `python tests/socket_queue_tool.py --queue 3 [--copy-range N]`.
It prints "ready" once the queue is bound, judges packets until its stdin closes, then prints one
JSON line of what it saw and the CPU time it took since (bench/copy_range.py). Verdicts by the UDP payload's first
bytes (IPv4): `drop` is dropped, `mark` accepted with packet mark 0x42, `rewrite` leaves as `REWRITE`
(UDP checksum 0: none), anything else (and every other packet) is left to the queue's batch accept.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import sys

from fw.drivers.nfqueue import ACCEPT_LATER, QueueOptions
from fw.drivers.nfqueue_socket import SocketQueue


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--copy-range", type=int, default=0xFFFF)
    parser.add_argument("--no-gso", action="store_true")
    args = parser.parse_args()
    seen = {"packets": 0, "bytes_copied": 0, "truncated": 0, "gso": 0, "largest": 0, "marks": [],
            "verdicts": {}}  # fmt: skip

    def judge(packet):
        data = packet.get_payload()
        seen["packets"] += 1
        seen["bytes_copied"] += len(data)
        seen["truncated"] += packet.truncated
        seen["gso"] += packet.gso
        seen["largest"] = max(seen["largest"], packet.cap_len or len(data))
        if packet.get_mark() and packet.get_mark() not in seen["marks"]:
            seen["marks"].append(packet.get_mark())
        verdict = "later"
        if data[0] >> 4 == 4 and data[9] == 17:
            start = (data[0] & 15) * 4 + 8
            body = data[start:]
            if body.startswith(b"drop"):
                verdict = "drop"
                packet.drop()
            elif body.startswith(b"mark"):
                verdict = "mark"
                packet.set_mark(0x42)
                packet.accept()
            elif body.startswith(b"rewrite"):
                verdict = "rewrite"
                packet.set_payload(data[:start - 2] + b"\0\0" + body.upper())
                packet.accept()
        seen["verdicts"][verdict] = seen["verdicts"].get(verdict, 0) + 1
        return ACCEPT_LATER if verdict == "later" else None

    options = QueueOptions(copy_range=args.copy_range, gso=not args.no_gso)
    queue = SocketQueue(args.queue, judge, options)
    print("ready", flush=True)
    start = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        readable = select.select([queue, sys.stdin], [], [], 5.0)[0]
        if queue in readable:
            queue.drain()
        if sys.stdin in readable and not sys.stdin.readline():
            break
    queue.drain()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seen.update(batches=queue.batches, sends=queue.sends, enobufs=queue.enobufs,
                netlink_errors=dict(queue.netlink_errors), user_seconds=usage.ru_utime - start.ru_utime,
                system_seconds=usage.ru_stime - start.ru_stime)
    queue.close()
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
