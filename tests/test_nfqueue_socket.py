"""fw.drivers.nfqueue_socket against the kernel: a SocketQueue bound in a lab's firewall namespace.

Real traffic from the client to the server is queued by iptables rules of the test's own (the lab
is torn down with them): accepted, dropped, accepted with a mark that a later iptables rule counts,
and rewritten (the server echoes what it got). A bulk TCP transfer with a copy range of 128 bytes
arrives whole (its hash) although the queue saw only headers. Offline: packet messages built as
the kernel builds them, sent to the queue's socket, give every attribute back, and the verdicts of
one drain leave in one datagram.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

TOOL = Path(__file__).with_name("socket_queue_tool.py")
QUEUE = 3


def iptables(lab, *args: str) -> str:
    return lab.run("fw", ["iptables", "-w", *args]).stdout


class Tool:
    """tests/socket_queue_tool.py in the firewall namespace."""

    def __init__(self, lab, *args: str):
        self.process = lab.popen("fw", [sys.executable, str(TOOL), "--queue", QUEUE, *args],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not select.select([self.process.stdout], [], [], 15)[0]:
            self.process.kill()
            raise AssertionError("the queue tool did not start")
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise AssertionError(f"the queue tool failed: {line} {self.process.stderr.read()}")

    def finish(self) -> dict:
        out, err = self.process.communicate("", timeout=20)
        assert self.process.returncode == 0, err
        return json.loads(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


def counted(lab, table: str, chain: str, match: str) -> int:
    """Packets counted by the rule of `chain` whose listing contains `match`."""
    for line in iptables(lab, "-t", table, "-L", chain, "-v", "-x", "-n").splitlines():
        if match in line:
            return int(line.split()[0])
    raise AssertionError(f"no rule with {match!r} in {table} {chain}")


def test_real_packets_pass_drop_carry_a_mark_and_leave_rewritten(lab):
    iptables(lab, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "6666", "-j", "MARK", "--set-mark", "7")
    iptables(lab, "-A", "FORWARD", "-p", "udp", "--dport", "6666", "-j", "NFQUEUE", "--queue-num", str(QUEUE))
    iptables(lab, "-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", "6666", "-m", "mark", "--mark", "0x42")
    tool = Tool(lab)
    try:
        with netns.udp_echo(lab, 6666, count=10, lifetime=20):
            replies = netns.udp_exchange(lab, "203.0.113.10", 6666,
                                         [b"pass", b"drop", b"mark", b"rewrite", b"again"], timeout=1.0)
        seen = tool.finish()
    finally:
        tool.kill()
    assert replies == [b"pass", None, b"mark", b"REWRITE", b"again"]
    assert counted(lab, "mangle", "POSTROUTING", "mark match 0x42") == 1  # the verdict's mark, seen by iptables
    assert seen["packets"] == 5
    assert seen["verdicts"] == {"later": 2, "drop": 1, "mark": 1, "rewrite": 1}
    assert seen["marks"] == [7]  # the mark the packets came with (NFQA_MARK)
    assert seen["netlink_errors"] == {} and seen["enobufs"] == 0


def test_headers_only_copy_range_passes_a_bulk_transfer_whole(lab):
    iptables(lab, "-A", "FORWARD", "-p", "tcp", "--dport", "9000", "-j", "NFQUEUE", "--queue-num", str(QUEUE))
    tool = Tool(lab, "--copy-range", "128")
    try:
        with netns.tcp_sink(lab, 9000, lifetime=30) as sink:
            sent = netns.tcp_send(lab, "203.0.113.10", 9000, 4_000_000, seed=19)
            received = sink.json()
        seen = tool.finish()
    finally:
        tool.kill()
    assert received == sent  # every byte arrived although the queue saw 128 bytes of each packet
    assert seen["truncated"] > 0
    assert seen["bytes_copied"] <= 128 * seen["packets"]
    assert seen["largest"] > 1500  # GSO packets, whole in the kernel (NFQA_CAP_LEN)
    assert seen["gso"] > 0  # NFQA_SKB_INFO
    assert seen["netlink_errors"] == {} and seen["enobufs"] == 0


OFFLINE = r"""
import json, socket, sys
from fw.drivers.nfqueue import ACCEPT_LATER, QueueError, NETLINK_NETFILTER
from fw.drivers.nfqueue_socket import SocketQueue, packet_message, NFQA_SKB_GSO, NFQA_SKB_CSUMNOTREADY

got = []
def judge(packet):
    got.append(dict(id=packet.id, hw=packet.hw_protocol, hook=packet.hook, mark=packet.get_mark(),
                    indev=packet.indev, outdev=packet.outdev, skb_info=packet.skb_info, cap_len=packet.cap_len,
                    truncated=packet.truncated, gso=packet.gso, payload=packet.get_payload().hex()))
    if packet.id == 2:
        packet.drop()
        try:
            packet.accept()
        except RuntimeError as exc:
            got.append(str(exc))
        return None
    return ACCEPT_LATER

queue = SocketQueue(5, judge)
try:
    SocketQueue(5, judge)
except QueueError as exc:
    got.append(str(exc))
sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sender.bind((0, 0))
port = queue._sock.getsockname()[0]
sender.sendto(packet_message(5, 1, b"\x45abc", indev=3, outdev=4, mark=0x99), (port, 0))
sender.sendto(packet_message(5, 2, b"\x60" * 128, hw_protocol=0x86DD, skb_info=NFQA_SKB_GSO | NFQA_SKB_CSUMNOTREADY,
                             cap_len=60000), (port, 0))
sender.sendto(packet_message(5, 3, b"x"), (port, 0))
handled = queue.drain()
queue.close()

# A PacketHandler is called through its `handle` (the payload in hand), unless a subclass has its own __call__.
from fw.drivers.nfqueue import PacketHandler
class Own(PacketHandler):
    def __call__(self, packet):
        return super().__call__(packet)
handlers = {}
for name, callback in [("plain", PacketHandler(None, False, print, print)), ("own", Own(None, False, print, print)),
                       ("function", judge)]:
    other = SocketQueue(6, callback)
    handlers[name] = other._handler is callback
    other.close()
print(json.dumps(dict(got=got, handled=handled, sends=queue.sends, batches=queue.batches,
                      errors=dict(queue.netlink_errors), handlers=handlers)))
"""


def test_every_attribute_is_read_and_a_drains_verdicts_leave_in_one_datagram(lab):
    done = lab.run("fw", [sys.executable, "-c", OFFLINE])
    result = json.loads(done.stdout)
    got = result["got"]
    assert got[0] == "cannot bind NFQUEUE 5: another process is bound to it"
    assert got[1] == dict(id=1, hw=0x0800, hook=2, mark=0x99, indev=3, outdev=4, skb_info=0, cap_len=None,
                          truncated=False, gso=False, payload=b"\x45abc".hex())
    assert got[2] == dict(id=2, hw=0x86DD, hook=2, mark=0, indev=0, outdev=0, skb_info=3, cap_len=60000,
                          truncated=True, gso=True, payload=(b"\x60" * 128).hex())
    assert got[3] == "packet 2 already has a verdict"
    assert got[4]["id"] == 3
    assert result["handled"] == 3
    assert result["sends"] == 1 and result["batches"] == 1  # the drop and the batch accept, one datagram
    # The kernel has no such packets: it answers the drop and the batch with ENOENT, read by the next drain.
    assert set(result["errors"]) <= {"ENOENT"}
    assert result["handlers"] == {"plain": True, "own": False, "function": False}
