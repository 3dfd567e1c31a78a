"""Events the engine hands to the driver, shaped as Suricata EVE records.

How it works: each builder returns a plain dict with EVE's field names (event_type, src_ip,
src_port, dest_ip, dest_port, proto, flow_id, flow{...}) plus an `fw` object with our verdict,
reason and rule. Times are the engine's clock under `time`; the driver that writes the event turns
it into EVE's wall-clock `timestamp` (the daemon's clock is monotonic, replay's is the capture's).
Events are built only for logged decisions and session ends, never for every packet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct

PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}


def address_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def flow_id(session) -> int:
    """A 51-bit id of a session (EVE's flow_id is an integer), the same in every process that
    knows the session by the same key and creation time."""
    proto, low, high, low_port, high_port = session.key
    material = struct.pack("!BHHd", proto, low_port, high_port, session.created) + low + high
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big") & ((1 << 51) - 1)


def _endpoints(proto, src, dst, sport, dport) -> dict:
    event = {
        "src_ip": address_text(src),
        "dest_ip": address_text(dst),
        "proto": PROTO_NAMES.get(proto, str(proto)),
    }
    if proto in (6, 17):
        event["src_port"] = sport
        event["dest_port"] = dport
    return event


def session_event(kind: str, session, now: float, reason: str) -> dict:
    """`new` when a session opens, `end` when it goes (reason: timeout, closed, killed, ...)."""
    event = {"time": now, "event_type": "flow", "flow_id": flow_id(session)}
    event.update(_endpoints(session.proto, session.src, session.dst, session.sport, session.dport))
    event["flow"] = {
        "pkts_toserver": session.orig_packets,
        "pkts_toclient": session.reply_packets,
        "bytes_toserver": session.orig_bytes,
        "bytes_toclient": session.reply_bytes,
        "start": session.created,
        "state": "new" if kind == "new" else "closed",
        "reason": reason if kind == "end" else None,
        "alerted": False,
    }
    if kind == "end":
        event["flow"]["end"] = now
    event["fw"] = {
        "event": kind,
        "reason": reason,
        "rule": session.rule,
        "state": session.state_name,
        "policy_rev": session.policy_rev,
    }
    if session.parent is not None:
        event["fw"]["parent_flow_id"] = flow_id(session.parent)
    return event


def verdict_event(pkt, verdict: str, reason: str, now: float) -> dict:
    """A packet the policy dropped or rejected (EVE event_type `drop`)."""
    event = {"time": now, "event_type": "drop" if verdict == "drop" else "flow"}
    event.update(_endpoints(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport))
    if pkt.proto in (1, 58):
        event["icmp_type"] = pkt.icmp_type
        event["icmp_code"] = pkt.icmp_code
    event["drop"] = {"len": pkt.ip_len}
    if pkt.proto == 6:
        event["drop"]["tcpseq"] = pkt.seq
        event["drop"]["tcpack"] = pkt.ack
        event["drop"]["syn"] = bool(pkt.flags & 2)
    event["fw"] = {"verdict": verdict, "reason": reason}
    return event
