"""Replay of every link type the README claims, each compared to the Ethernet result, frame by frame.

The Ethernet captures of ../shared/corpus (an FTP session over IPv4 and one over IPv6, so the ALG's
related data connections are in play) are rewritten byte by byte into Linux cooked captures (SLL,
SLL2), BSD loopback (DLT_NULL in either byte order, DLT_LOOP), raw IP (101 and its aliases), VLAN
and QinQ-tagged Ethernet, and pcapng; an ARP frame is put first where the link type can carry it.
The engine must give every frame the verdict, reason and state the Ethernet replay gave it, and
the ARP frame `not-ip`. A lab test does the same with captures tcpdump makes itself.
"""

from __future__ import annotations

import struct
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from fw.drivers.replay import read_frames, replay
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from tests import netns

HERE = Path(__file__).parent / "corpus"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SOURCES = ("zeek-ftp-ipv4.pcap", "zeek-ftp-ipv6.pcap")
ARP = bytes.fromhex("ffffffffffff02000000000a0806" "0001080006040001" "02000000000ac6336401"
                    "000000000000c633640a")  # who has 198.51.100.10? tell 198.51.100.1
AF_INET = 2
AF_INET6 = {"linux": 10, "freebsd": 28, "openbsd": 24, "darwin": 30}
ETHERTYPES = {4: 0x0800, 6: 0x86DD}


def family_of(l3: bytes) -> int:
    return l3[0] >> 4


def split_ethernet(frame: bytes) -> tuple[int, bytes]:
    return struct.unpack_from("!H", frame, 12)[0], frame[14:]


# -- link layers, built by hand ---------------------------------------------------------------------

def sll(frame: bytes) -> bytes:
    ethertype, payload = split_ethernet(frame)
    # packet type 0 (to us), ARPHRD_ETHER, 6-byte address padded to 8, protocol
    return struct.pack("!HHH8sH", 0, 1, 6, frame[6:12], ethertype) + payload


def sll2(frame: bytes) -> bytes:
    ethertype, payload = split_ethernet(frame)
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
    return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, frame[6:12]) + payload


def null_little(os_name: str):
    def build(frame: bytes) -> bytes:
        payload = split_ethernet(frame)[1]
        family = AF_INET if family_of(payload) == 4 else AF_INET6[os_name]
        return struct.pack("<I", family) + payload
    return build


def loop(frame: bytes) -> bytes:
    payload = split_ethernet(frame)[1]
    return struct.pack(">I", AF_INET if family_of(payload) == 4 else AF_INET6["openbsd"]) + payload


def raw(frame: bytes) -> bytes:
    return split_ethernet(frame)[1]


def vlan(*tags: tuple[int, int]):
    def build(frame: bytes) -> bytes:
        header = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
        return frame[:12] + header + frame[12:]
    return build


# (name, link type, frame rewriter, can carry ARP, pcapng)
LINK_TYPES = [
    ("sll", 113, sll, True, False),
    ("sll2", 276, sll2, True, False),
    ("null-linux", 0, null_little("linux"), False, False),
    ("null-freebsd", 0, null_little("freebsd"), False, False),
    ("null-darwin", 0, null_little("darwin"), False, False),
    ("null-big-endian", 0, loop, False, False),  # a capture written on a big-endian host
    ("loop", 108, loop, False, False),
    ("raw", 101, raw, False, False),
    ("raw-bsd", 12, raw, False, False),
    ("vlan", 1, vlan((0x8100, 42)), True, False),
    ("qinq", 1, vlan((0x88A8, 100), (0x8100, 42)), True, False),
    ("pcapng-ethernet", 1, lambda frame: frame, True, True),
    ("pcapng-sll2", 276, sll2, True, True),
]


def write_pcap(path: Path, linktype: int, frames: list[tuple[float, bytes]]) -> None:
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for stamp, data in frames:
        seconds, micros = int(stamp), round((stamp - int(stamp)) * 1e6)
        parts.append(struct.pack("<IIII", seconds, micros, len(data), len(data)) + data)
    path.write_bytes(b"".join(parts))


def write_pcapng(path: Path, linktype: int, frames: list[tuple[float, bytes]]) -> None:
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    parts = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
             block(1, struct.pack("<HHI", linktype, 0, 65535))]  # microseconds: the default resolution
    for stamp, data in frames:
        micros = round(stamp * 1e6)
        parts.append(block(6, struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(data), len(data))
                           + data))
    path.write_bytes(b"".join(parts))


def replayed(path: Path) -> list[tuple]:
    engine = Engine(load_policy(HERE / "policy.yaml"), EngineConfig(events=False))
    return [(r.decision.verdict, r.decision.reason, r.decision.state, r.to_json()["flow"])
            for r in replay(str(path), engine)]


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name, linktype, rewrite, carries_arp, pcapng", LINK_TYPES,
                         ids=[row[0] for row in LINK_TYPES])
def test_every_link_type_replays_as_ethernet_does(tmp_path, source, name, linktype, rewrite, carries_arp, pcapng):
    frames = [(stamp, frame) for stamp, _linktype, frame in read_frames(str(CORPUS / source))]
    ethernet = replayed(CORPUS / source)
    assert len(ethernet) == len(frames) > 50 and any(row[1] == "related:ftp" for row in ethernet)
    converted = [(stamp, rewrite(frame)) for stamp, frame in frames]
    if carries_arp:
        converted.insert(0, (frames[0][0], rewrite(ARP)))
    path = tmp_path / f"{name}.{'pcapng' if pcapng else 'pcap'}"
    (write_pcapng if pcapng else write_pcap)(path, linktype, converted)
    got = replayed(path)
    if carries_arp:
        assert got[0] == ("accept", "not-ip", None, None)
        got = got[1:]
    assert got == ethernet


def test_an_unknown_link_type_or_a_truncated_header_is_not_ip(tmp_path):
    ip = raw(next(read_frames(str(CORPUS / SOURCES[0])))[2]) if CORPUS.is_dir() else b"\x45" + b"\0" * 39
    path = tmp_path / "odd.pcap"
    write_pcap(path, 147, [(1.0, ip)])  # a user link type: nothing to strip
    assert replayed(path) == [("accept", "not-ip", None, None)]
    write_pcap(path, 113, [(1.0, b"\0" * 10)])  # shorter than an SLL header
    assert replayed(path) == [("accept", "not-ip", None, None)]


# -- captures tcpdump makes in the lab -----------------------------------------------------------------

LAB_POLICY = """
version: 1
defaults: {action: drop}
rules:
  - {name: web, action: accept, proto: tcp, dport: 8080}
"""


@pytest.mark.netns
@pytest.mark.root
def test_tcpdump_captures_of_one_exchange_replay_alike(lab, tmp_path):
    """Ethernet (-i eth0), SLL (-i any -y LINUX_SLL) and SLL2 (-i any -y LINUX_SLL2) captures of
    the same fetches, IPv4 and IPv6, in the client's namespace: the same verdict for every packet."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("captured\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(LAB_POLICY))
    kinds = {"ethernet": ["-i", "eth0"], "sll": ["-i", "any", "-y", "LINUX_SLL"],
             "sll2": ["-i", "any", "-y", "LINUX_SLL2"]}
    captures = {kind: tmp_path / f"{kind}.pcap" for kind in kinds}
    tcpdump = ["timeout", "30", "tcpdump", "-Z", "root", "-n", "-U", "--immediate-mode"]
    dumps = [lab.popen("client", [*tcpdump, "-w", str(captures[kind]), *args, "tcp", "port", "8080"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for kind, args in kinds.items()]
    try:
        for dump in dumps:  # "data link type ..." may come first
            line = dump.stderr.readline()
            if line.startswith(b"tcpdump: data link type"):
                line = dump.stderr.readline()
            assert line.startswith(b"tcpdump: listening on"), line
        with netns.http_server(lab, tmp_path / "www", 8080, lifetime=30):
            for address in ("203.0.113.10", "2001:db8:2::10"):
                assert netns.curl(lab, netns.url(address, 8080, "/index.html")).stdout == "captured\n"
        deadline = time.monotonic() + 10  # until every capture holds both exchanges, each ending in FIN/ACK
        while min(frames_in(path) for path in captures.values()) < 20 or len(
                {frames_in(path) for path in captures.values()}) != 1:
            assert time.monotonic() < deadline, {kind: frames_in(path) for kind, path in captures.items()}
            time.sleep(0.05)
    finally:
        for dump in dumps:
            dump.terminate()
            dump.wait(10)
    linktypes = {kind: {lt for _s, lt, _f in read_frames(str(path))} for kind, path in captures.items()}
    assert linktypes == {"ethernet": {1}, "sll": {113}, "sll2": {276}}, linktypes
    results = {kind: replayed_with(path, policy) for kind, path in captures.items()}
    assert len(results["ethernet"]) >= 20
    assert results["sll"] == results["ethernet"] and results["sll2"] == results["ethernet"]
    assert {row[1] for row in results["ethernet"]} == {"rule:web", "established"}


def frames_in(path: Path) -> int:
    """Frames written so far to a capture tcpdump is still writing (a partial record is not counted)."""
    data = path.read_bytes() if path.exists() else b""
    count, offset = 0, 24
    while offset + 16 <= len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        if offset + 16 + length > len(data):
            break
        count, offset = count + 1, offset + 16 + length
    return count


def replayed_with(path: Path, policy: Path) -> list[tuple]:
    engine = Engine(load_policy(policy), EngineConfig(events=False))
    return [(r.decision.verdict, r.decision.reason, r.decision.state, r.to_json()["flow"])
            for r in replay(str(path), engine)]
