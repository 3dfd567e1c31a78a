"""Offline driver: a pcap or pcapng file through the engine, with the capture's time as `now`.

How it works: scapy's raw readers (they do not dissect) give each frame's bytes, timestamp and
link type; `l3_payload` strips the link layer (Ethernet with VLAN tags, Linux cooked SLL and SLL2,
BSD loopback, raw IP) and hands the engine exactly the L3 bytes the NFQUEUE daemon would. A frame
that is not IPv4 or IPv6 is accepted with reason `not-ip`, as a layer-3 firewall passes it.
`expire(now)` runs whenever the capture's clock enters a new second.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from scapy.utils import RawPcapNgReader, RawPcapReader

from fw.decision import ACCEPT, Decision, Verdicts
from fw.packet import flow_text

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101
LINKTYPE_RAW_ALIASES = (12, 14, LINKTYPE_RAW, 228, 229)
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP = 113, 276, 108
NULL_FAMILIES_V6 = (10, 24, 28, 30)  # AF_INET6 on Linux, the BSDs, macOS


class ReplayError(Exception):
    """The file cannot be read as a capture."""


def l3_payload(linktype: int, frame: bytes) -> bytes | None:
    """The IPv4/IPv6 packet inside a captured frame, or None when the frame carries something else."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        offset = 12
        ethertype = struct.unpack_from("!H", frame, offset)[0]
        while ethertype in VLAN_TAGS and len(frame) >= offset + 6:
            offset += 4
            ethertype = struct.unpack_from("!H", frame, offset)[0]
        return _by_ethertype(ethertype, frame[offset + 2 :])
    if linktype in LINKTYPE_RAW_ALIASES:
        return frame if frame and frame[0] >> 4 in (4, 6) else None
    if linktype == LINKTYPE_LINUX_SLL:
        return _by_ethertype(struct.unpack_from("!H", frame, 14)[0], frame[16:]) if len(frame) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return _by_ethertype(struct.unpack_from("!H", frame, 0)[0], frame[20:]) if len(frame) >= 20 else None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        family = struct.unpack_from("<I", frame)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", frame)[0]
        if family == 2 or family in NULL_FAMILIES_V6:
            return frame[4:]
        return None
    return None


def _by_ethertype(ethertype: int, payload: bytes) -> bytes | None:
    return payload if ethertype in (ETH_IPV4, ETH_IPV6) else None


def read_frames(path: str) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp, link type, frame bytes) for every frame of a pcap or pcapng file.

    The file is opened at once, so a file that is no capture raises ReplayError here.
    """
    try:
        reader = RawPcapReader(path)
    except (OSError, EOFError) as error:
        raise ReplayError(f"{path}: {error}") from None
    except Exception as error:  # scapy raises Scapy_Exception for a file that is no capture
        raise ReplayError(f"{path}: not a pcap or pcapng file ({error})") from None
    return _frames(reader)


def _frames(reader) -> Iterator[tuple[float, int, bytes]]:
    with reader:
        if isinstance(reader, RawPcapNgReader):
            for frame, meta in reader:
                stamp = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                yield stamp, meta.linktype, frame
        else:
            scale = 1e-9 if getattr(reader, "nano", False) else 1e-6
            linktype = reader.linktype
            for frame, meta in reader:
                yield meta.sec + meta.usec * scale, linktype, frame


@dataclass(slots=True)
class ReplayRecord:
    index: int
    time: float
    size: int
    decision: Decision

    def to_json(self) -> dict:
        decision = self.decision
        packet = decision.packet
        return {
            "index": self.index,
            "verdict": decision.verdict,
            "reason": decision.reason,
            "state": decision.state,
            "flow": flow_text(packet) if packet is not None else None,
        }


def replay(path: str, engine, verdicts: Verdicts | None = None) -> Iterator[ReplayRecord]:
    """Each frame of the capture through the engine, in order (ReplayError at once for a bad file).
    The verdicts are counted in `verdicts` (replay gives every final verdict)."""
    return _replay(read_frames(path), engine, verdicts if verdicts is not None else Verdicts())


def _replay(frames, engine, verdicts: Verdicts) -> Iterator[ReplayRecord]:
    second = None
    count = verdicts.count
    for index, (stamp, linktype, frame) in enumerate(frames):
        if int(stamp) != second:
            second = int(stamp)
            engine.expire(stamp)
        packet = l3_payload(linktype, frame)
        decision = Decision(ACCEPT, "not-ip") if packet is None else engine.process(packet, stamp)
        count(decision.verdict, decision.reason)
        yield ReplayRecord(index, stamp, len(frame), decision)
