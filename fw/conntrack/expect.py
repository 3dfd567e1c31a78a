"""ALG expectations: pinholes for the sessions a control session announced, any protocol.

How it works. An ALG's Expectation admits one session of its protocol from `src` (any source port)
to `dst`:`dport`. It is kept under (proto, src, dst, dport), the key a packet that would open a
session builds from its own header, so a new session finds its expectation in one dict lookup
(made only while any are waiting). An expectation is used once, lives its ALG's timeout
(`spec.timeout_key` in the control session's timeouts, else `spec.default_timeout`), dies with its
control session (whose `expectations` holds its keys), and a newer one with the same key replaces
it. The admitted session's reason is its ALG's (`spec.reason`: related:ftp, related:tftp).

`Expectations` is a dict (key -> PendingExpectation) with these operations; snapshots and HA sync
carry it as plain records (fw.conntrack.serial).
"""

from __future__ import annotations

import ipaddress

from fw.alg import ALGS, Expectation
from fw.conntrack import serial


class PendingExpectation:
    """An expectation waiting for its session, with the control session that announced it."""

    __slots__ = ("expectation", "parent", "deadline", "spec")

    def __init__(self, expectation: Expectation, parent, deadline: float, spec):
        self.expectation = expectation
        self.parent = parent
        self.deadline = deadline
        self.spec = spec  # the ALG's fw.alg.AlgSpec: reason, timeout key


class Expectations(dict):
    """The expectations waiting, by key (proto, src, dst, dport)."""

    def expect(self, parent, expectation: Expectation, spec, now: float) -> None:
        """Keep one expectation of `parent`'s ALG (replacing one with the same key)."""
        key = (expectation.proto, expectation.src, expectation.dst, expectation.dport)
        lifetime = parent.timeouts.get(spec.timeout_key, spec.default_timeout)
        self._put(key, PendingExpectation(expectation, parent, now + lifetime, spec))

    def _put(self, key: tuple, entry: PendingExpectation) -> None:
        old = self.get(key)
        if old is not None and old.parent.expectations:
            old.parent.expectations.discard(key)
        self[key] = entry
        parent = entry.parent
        if parent.expectations is None:
            parent.expectations = set()
        parent.expectations.add(key)

    def take(self, pkt, now: float) -> PendingExpectation | None:
        """The live expectation this packet (opening a session) meets, used up; or None."""
        key = (pkt.proto, pkt.src, pkt.dst, pkt.dport)
        entry = self.pop(key, None)
        if entry is None:
            return None
        parent = entry.parent
        if parent.expectations:
            parent.expectations.discard(key)
        if entry.deadline < now or parent.slot == -1:
            return None
        return entry

    def discard(self, key: tuple) -> None:
        """Drop one expectation (a peer's session used it)."""
        entry = self.pop(key, None)
        if entry is not None and entry.parent.expectations:
            entry.parent.expectations.discard(key)

    def forget(self, session) -> None:
        """The control session is gone: its expectations go with it."""
        for key in session.expectations:
            self.pop(key, None)
        session.expectations = None

    def expire(self, now: float) -> None:
        for key in [k for k, e in self.items() if e.deadline < now]:
            self.discard(key)

    def to_records(self, clock_offset: float) -> list[dict]:
        return [serial.expectation_to_dict(k, e, clock_offset) for k, e in self.items()]

    def restore(self, record: dict, sessions: dict, now: float, clock_offset: float) -> bool:
        """Take one record of to_records() back (its control session must be in `sessions`);
        False for a bad record."""
        try:
            expectation = Expectation(
                int(record["family"]), ipaddress.ip_address(record["src"]).packed,
                ipaddress.ip_address(record["dst"]).packed, int(record["dport"]), int(record["proto"]),
                str(record["command"]),
            )  # fmt: skip
            parent = sessions.get(serial.key_from_list(record["parent"]))
            deadline = float(record["deadline"]) - clock_offset
        except (KeyError, TypeError, ValueError, serial.SerialError):
            return False
        spec = ALGS.get(record.get("alg")) or (parent.alg.SPEC if parent is not None and parent.alg else None)
        if parent is not None and deadline > now and spec is not None:
            key = (expectation.proto, expectation.src, expectation.dst, expectation.dport)
            self._put(key, PendingExpectation(expectation, parent, deadline, spec))
        return True
