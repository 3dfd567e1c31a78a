"""Programs the live benchmark runs inside lab namespaces: `python bench/live_tools.py COMMAND ...`.

- `ping`: ICMP echo with a raw socket, one every `interval`; prints the round-trip times in ms.
- `bare-loop`: the bare NFQUEUE loop (accept everything) on one queue, with or without the GSO flag,
  through fw.drivers.nfqueue.Queue (the daemon's reader and NFQNL_MSG_CONFIG), until SIGTERM.
- `udp-flood`: small UDP datagrams at a paced rate, one connected socket per source address,
  handed to the kernel SEND_BATCH at a time by sendmmsg(2) (through ctypes: the standard library
  has no sendmmsg), so that the sender costs little beside the kernel's own work for each datagram
  (8 iperf3 senders took most of both cores here and left the firewall little to measure);
  `--cpu` keeps it on one CPU, as a tester of its own would be.
Each prints one JSON line when it ends.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
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


SEND_BATCH = 32
MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def udp_flood(args) -> dict:
    """Send `rate` datagrams a second for `seconds`, round robin over one socket per source (each
    connected to its port of `ports`): {"sent": datagrams the kernel took, "seconds": how long}."""
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    sendmmsg = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sendmmsg
    payload = ctypes.create_string_buffer(args.size)
    vector = _IoVec(ctypes.cast(payload, ctypes.c_void_p), args.size)
    messages = (_MMsgHdr * SEND_BATCH)()
    for message in messages:
        message.msg_hdr.msg_iov, message.msg_hdr.msg_iovlen = ctypes.pointer(vector), 1
    first, _, last = args.ports.partition("-")
    ports = range(int(first), int(last or first) + 1)
    sockets = []
    for n, source in enumerate(args.sources.split(",")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.connect((args.address, ports[n % len(ports)]))
        sockets.append(sock)
    descriptors = [sock.fileno() for sock in sockets]
    sent, turn = 0, 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < args.seconds:
        due = int(elapsed * args.rate) - sent
        if due < SEND_BATCH:
            time.sleep((SEND_BATCH - due) / args.rate)
            continue
        taken = sendmmsg(descriptors[turn], messages, SEND_BATCH, MSG_DONTWAIT)
        sent += max(0, taken)  # a full socket buffer (-1, EAGAIN) sends nothing: counted as lost later
        turn = (turn + 1) % len(descriptors)
    seconds = time.monotonic() - start
    for sock in sockets:
        sock.close()
    return {"sent": sent, "seconds": round(seconds, 3)}


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
    sub = commands.add_parser("udp-flood")
    sub.add_argument("--sources", required=True, help="comma-separated client addresses, one socket each")
    sub.add_argument("--address", required=True)
    sub.add_argument("--ports", required=True, help="PORT or FIRST-LAST, given to the sockets in turn")
    sub.add_argument("--rate", type=int, required=True, help="datagrams per second, all sockets together")
    sub.add_argument("--seconds", type=float, default=3.0)
    sub.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    sub.add_argument("--cpu", type=int, help="run on this CPU only")
    sub.set_defaults(function=udp_flood)
    args = parser.parse_args(argv)
    print(json.dumps(args.function(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
