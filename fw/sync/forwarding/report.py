"""What owner forwarding tells the operator: the `fw stats` line and EVE anomaly events.

How it works: `anomaly(refusal, source)` is the body of an EVE `anomaly` event for a refused
datagram (`{"type": "forward", "event": REASON, "peer": claimed sender or None, "src_ip",
"src_port", "detail"}`); the daemon writes it through its throttle (one per reason and peer a
second; the counters say how many). `stats_line(section)` is `fw stats`' line for the `forward`
section (docs/forwarding.md, "Counters and events"): the receiver's and sender's stats as
fw.sync.forwarding.endpoint gives them. `metric_families(section)`: the same section as Prometheus
families (fw_forward_*), for fw.metrics' sources. Pure.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
    line = (f"forward: sent {sent.get('sent', 0)} (segmented {sent.get('segmented', 0)}, failed: {failed_text}), "
            f"received {received.get('accepted', 0)} of {received.get('datagrams', 0)} datagrams, "
            f"refused: {refused_text}")
    if "decided" not in section:  # the pieces alone (fw.sync.forwarding.node): no daemon's counters
        return line
    handed = sum(section.get("handed", {}).values())
    decided = {verdict: sum(reasons.values()) for verdict, reasons in section["decided"].items()}
    return (f"{line}; handed to owners {handed} (decided here instead {section.get('fallback', 0)}), "
            f"judged for peers: accepted {decided.get('accept', 0)} (sent on {section.get('sent_on', 0)}), "
            f"dropped {decided.get('drop', 0)}")


def metric_families(section: dict) -> list:
    """fw_forward_sent_total, _sent_bytes_total, _send_failed_total{errno}, _handed_total{route},
    _received_total{peer}, _refused_total{reason}, _decided_total{verdict,reason}, _sent_on_total,
    fw_forward_peers (live peers with an address, whose sessions they decide)."""
    sent, received = section.get("sent", {}), section.get("received", {})
    families = [CounterMetricFamily("fw_forward_sent", "Datagrams sent to sessions' owners.",
                                    value=sent.get("sent", 0)),
                CounterMetricFamily("fw_forward_sent_bytes", "Bytes of the packets sent to owners.",
                                    value=sent.get("bytes", 0)),
                CounterMetricFamily("fw_forward_sent_on", "Forwarded packets this owner accepted and sent on.",
                                    value=section.get("sent_on", 0)),
                GaugeMetricFamily("fw_forward_peers", "Peers that decide their own sessions.",
                                  value=len(section.get("decide_at", ())))]  # fmt: skip
    rows = (("fw_forward_send_failed", "Packets that could not be sent to an owner (decided here).", ("errno",),
             {(name.split(":", 1)[1],): n for name, n in sent.items() if name.startswith("failed:")}),
            ("fw_forward_handed", "Packets handed to another node, by route.", ("route",),
             {(route,): n for route, n in section.get("handed", {}).items()}),
            ("fw_forward_received", "Forwarded packets admitted, by sending peer.", ("peer",),
             {(peer,): n for peer, n in received.get("by_sender", {}).items()}),
            ("fw_forward_refused", "Forwarded datagrams refused, by reason.", ("reason",),
             {(reason,): n for reason, n in received.get("refused", {}).items()}),
            ("fw_forward_decided", "Forwarded packets judged here, by verdict and reason.", ("verdict", "reason"),
             {(verdict, reason): n for verdict, reasons in section.get("decided", {}).items()
              for reason, n in reasons.items()}))  # fmt: skip
    for name, text, labels, values in rows:
        family = CounterMetricFamily(name, text, labels=labels)
        for label_values, n in sorted(values.items()):
            family.add_metric(label_values, n)
        families.append(family)
    return families
