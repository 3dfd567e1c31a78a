"""Re-judging existing sessions against a policy (`options.reload_recheck`, `fw reload --dry-run`).

How it works: each session's opening packet is rebuilt as a small probe (its original direction's
addresses, ports, and for ICMP the echo request) and matched as a new session would be. The table
does not record interfaces, so the probe has none: the first rule that matches without naming an
interface decides, unless an earlier rule that names one (iif, oif, from_zone, to_zone) would match
on its own interfaces; then the verdict depends on an interface the session does not remember and
the session is kept. Sessions opened through an expectation (FTP data) are kept, unless their
control session is refused. Limits are not applied: a session already counted stays.
"""

from __future__ import annotations

ECHO_REQUEST = {1: 8, 58: 128}


class SessionProbe:
    """A session's opening packet, shaped like a Packet for the matcher."""

    __slots__ = ("family", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code")

    def __init__(self, session):
        self.family = session.family
        self.proto = session.proto
        self.src, self.dst = session.src, session.dst
        self.sport, self.dport = session.sport, session.dport
        self.icmp_type = ECHO_REQUEST.get(self.proto, 0)
        self.icmp_code = 0


def refused_by(policy, sessions) -> list:
    """The sessions `policy` would refuse now, in table order (see the module's docstring)."""
    bound = [rule for rule in policy.rules if rule.interface_bound]
    refused, closed = [], set()
    related = []
    for session in sessions:
        if session.parent is not None:
            related.append(session)
        elif _refuses(policy, bound, session):
            refused.append(session)
            closed.add(id(session))
    refused.extend(s for s in related if id(s.parent) in closed)
    return refused


def _refuses(policy, bound: list, session) -> bool:
    probe = SessionProbe(session)
    rule = policy.match(probe, None, None)
    before = rule.index if rule is not None else len(policy.rules)
    src, dst = int.from_bytes(probe.src, "big"), int.from_bytes(probe.dst, "big")
    for candidate in bound:
        if candidate.index >= before:
            break
        if candidate.matches(probe, src, dst, *candidate.own_interfaces()):
            return False  # decided by an interface the session does not remember: keep it
    action = rule.action if rule is not None else policy.default_action
    return action != "accept"
