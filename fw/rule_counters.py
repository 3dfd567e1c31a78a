# cython: annotation_typing=False
"""Per-rule counters of packets, bytes and sessions: `fw run`'s one per-packet hook (fw.records sets
`RuleCounters.count` as the packet handler's `observe`; fw.metrics and the store read them).

How it works: `count(decision)` adds the packet to the rule its session was opened by (or that
refused it, by its action or over its `limit`): packets, bytes (IP total length), and sessions when
this packet opened one (ALG data sessions count for the rule of their control session). Compiled
(build_compiled.py, with rule_counters.pxd), RuleCounters is an extension type and `count` reads
the session's profile and the packet's length as C fields; it runs on every packet of `fw run`.
`deltas()` gives what was counted since its last call, for the store. The Prometheus HTTP thread
reads `totals()`-shaped copies only (made on the loop's tick).
"""

from __future__ import annotations


class RuleCounters:
    """Packets, bytes and sessions per rule name. `count` runs on the packet thread only."""

    __slots__ = ("rules", "_reported")

    def __init__(self):
        self.rules: dict[str, list[int]] = {}  # rule -> [packets, bytes, sessions]
        self._reported: dict[str, tuple[int, int, int]] = {}

    def count(self, decision) -> None:
        """Add one decision: the per-packet cost of per-rule counters."""
        d = decision  # compiled: a Decision (the pxd), whose fields are read in C
        if d is None:
            raise TypeError("RuleCounters.count: a Decision, not None")
        session = d.session
        if session is None:
            reason = d.reason
            if not reason.startswith(("rule:", "limit:")):
                return
            rule, opened = reason.partition(":")[2], False
        else:
            profile = session.profile  # (Session.rule is a property: a Python call, compiled or not)
            rule = profile.rule
            if rule is None:
                return
            reason = d.reason
            opened = reason != "established" and (reason.startswith("rule:") or (
                reason.startswith("related:") and reason != "related:icmp"))
        entry = self.rules.get(rule)
        if entry is None:
            entry = self.rules[rule] = [0, 0, 0]
        entry[0] += 1
        packet = d.packet
        if packet is not None:
            entry[1] += packet.ip_len
        if opened:
            entry[2] += 1

    def totals(self) -> dict[str, tuple[int, int, int]]:
        """{rule: (packets, bytes, sessions)} since the daemon started."""
        return {rule: tuple(entry) for rule, entry in list(self.rules.items())}

    def deltas(self) -> dict[str, tuple[int, int, int]]:
        """What was counted since the last call (call it from the packet thread's loop)."""
        totals = self.totals()
        reported, self._reported = self._reported, totals
        changes = {}
        for rule, now in totals.items():
            before = reported.get(rule, (0, 0, 0))
            if now != before:
                changes[rule] = tuple(max(0, a - b) for a, b in zip(now, before, strict=True))
        return changes

    def as_dict(self) -> dict[str, dict]:
        """For `fw stats --json`: {rule: {"packets", "bytes", "sessions"}}."""
        return {rule: {"packets": p, "bytes": b, "sessions": s} for rule, (p, b, s) in self.totals().items()}
