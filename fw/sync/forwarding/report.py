"""What owner forwarding tells the operator: the `fw stats` line and EVE anomaly events.

How it works: `anomaly(refusal, source)` is the body of an EVE `anomaly` event for a refused
datagram (`{"type": "forward", "event": REASON, "peer": claimed sender or None, "src_ip",
"src_port", "detail"}`); the daemon writes it through its throttle (one per reason and peer a
second; the counters say how many). `stats_line(section)` is `fw stats`' line for the `forward`
section (docs/forwarding.md, "Counters and events"): the receiver's and sender's stats as
fw.sync.forwarding.endpoint gives them. Pure.
"""

from __future__ import annotations

from fw.sync.forwarding.gate import Refused


def anomaly(refusal: Refused, source: tuple) -> dict:
    return {"type": "forward", "event": refusal.reason, "peer": refusal.node, "src_ip": source[0],
            "src_port": source[1], "detail": refusal.detail}  # fmt: skip


def stats_line(section: dict) -> str:
    """One line: sent (failed by why), received, refused by reason (the non-zero ones)."""
    sent, received = section.get("sent", {}), section.get("received", {})
    failed = {name.split(":", 1)[1]: count for name, count in sent.items() if name.startswith("failed:")}
    refused = {reason: count for reason, count in received.get("refused", {}).items() if count}
    failed_text = ", ".join(f"{name} {count}" for name, count in sorted(failed.items())) or "none"
    refused_text = ", ".join(f"{reason} {count}" for reason, count in refused.items()) or "none"
    return (f"forward: sent {sent.get('sent', 0)} (segmented {sent.get('segmented', 0)}, failed: {failed_text}), "
            f"received {received.get('accepted', 0)} of {received.get('datagrams', 0)} datagrams, "
            f"refused: {refused_text}")
