"""Per-rule limits and per-rule log limits, kept beside the session table.

How it works: only a packet that a rule with a `limit` would admit reaches `admit(rule, src, now)`
(the engine's opening path), so established traffic never pays for this. A limit counts the
concurrent sessions the rule opened, per source (`per_source`) and in all (`sessions`), and/or
spends a token of a bucket (`rate`, one per rule or one per source). A session that is counted
carries the flag COUNTED; `release(session)` undoes its count when it leaves the table by any path
(the engine calls it from the one place every removal goes through), or earlier when a TCP session
reaches TIME_WAIT or CLOSE (as nf_conncount, which skips closed connections: a client that closes
and reconnects is not refused for 2 MSL). Counts are keyed by the
session's rule name and source, so they survive a reload: a new `RuleLimits` recounts the table
against the new rules (`recount`), which keeps the invariant "a count is the number of COUNTED
sessions in the table" whatever the reload changed. Buckets start full again after a reload.

`LogLimits` is a token bucket per rule (and one for the default action) in front of its log
events, as iptables' `-m limit` before LOG; `allow(reason, now)` says whether an event may go out
and counts `log_suppressed:<rule>` in the engine's counters when not.
"""

from __future__ import annotations

from collections import Counter

from fw.conntrack.table import RELATED, REVERSED
from fw.conntrack.tcp import TcpState

COUNTED = 256  # Session.flags bit: the session is counted in its rule's limit (fw.conntrack.table's bits are below)
CLOSED = frozenset((TcpState.TIME_WAIT, TcpState.CLOSE))  # TCP sessions that no longer count
BUCKETS_KEPT = 4096  # per-source buckets past which full ones are forgotten


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst`."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, now: float):
        self.tokens = tokens
        self.stamp = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        tokens = min(burst, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def full(self, rate: float, burst: float, now: float) -> bool:
        return self.tokens + (now - self.stamp) * rate >= burst


class RuleState:
    """What one limited rule has used: sessions per source, in all, and its buckets."""

    __slots__ = ("limit", "per_source", "total", "bucket", "buckets")

    def __init__(self, limit):
        self.limit = limit
        self.per_source: dict[bytes, int] = {}
        self.total = 0
        self.bucket: Bucket | None = None
        self.buckets: dict[bytes, Bucket] = {}


class RuleLimits:
    """The limits of one policy's rules. `admit` on opening, `counted`/`release` around a session."""

    def __init__(self, policy=None, sessions=()):
        self.rules: dict[str, RuleState] = {}
        if policy is not None:
            for rule in policy.rules:
                if rule.limit is not None:
                    self.rules[rule.name] = RuleState(rule.limit)
        self.recount(sessions)

    def recount(self, sessions) -> None:
        """Count the table's sessions anew (after a reload): those the limited rules opened."""
        for session in sessions:
            session.flags &= ~COUNTED
            self.adopted(session)

    def adopted(self, session) -> None:
        """Count a session that joins the table without opening (snapshot, HA peer, recount)."""
        session.flags &= ~COUNTED
        state = self.rules.get(session.rule)
        if state is not None and state.limit.counts and not session.flags & RELATED \
                and session.state not in CLOSED:
            self._count(state, _source(session))
            session.flags |= COUNTED

    def admit(self, rule, src: bytes, now: float) -> bool:
        """May `rule` open a session from `src` now? Spends a token when it may."""
        state = self.rules.get(rule.name)
        if state is None:
            return True
        limit = state.limit
        if limit.per_source is not None and state.per_source.get(src, 0) >= limit.per_source:
            return False
        if limit.sessions is not None and state.total >= limit.sessions:
            return False
        rate = limit.rate
        if rate is not None:
            bucket = self._bucket(state, src, now)
            if not bucket.take(rate.per_second, rate.burst, now):
                return False
        return True

    def opened(self, rule, session) -> None:
        """The session `rule` admitted is in the table: count it."""
        state = self.rules.get(rule.name)
        if state is not None and state.limit.counts:
            self._count(state, _source(session))
            session.flags |= COUNTED

    def release(self, session) -> None:
        """A COUNTED session left the table (expiry, kill, close, eviction, replacement)."""
        session.flags &= ~COUNTED
        state = self.rules.get(session.rule)
        if state is None:
            return
        src = _source(session)
        left = state.per_source.get(src, 0) - 1
        if left > 0:
            state.per_source[src] = left
        else:
            state.per_source.pop(src, None)
        state.total = max(0, state.total - 1)

    def usage(self) -> dict:
        """{rule: {"sessions": n, "sources": n}} for the stats."""
        return {name: {"sessions": s.total, "sources": len(s.per_source)} for name, s in self.rules.items()}

    @staticmethod
    def _count(state: RuleState, src: bytes) -> None:
        state.per_source[src] = state.per_source.get(src, 0) + 1
        state.total += 1

    @staticmethod
    def _bucket(state: RuleState, src: bytes, now: float) -> Bucket:
        rate = state.limit.rate
        if not state.limit.rate_per_source:
            if state.bucket is None:
                state.bucket = Bucket(rate.burst, now)
            return state.bucket
        bucket = state.buckets.get(src)
        if bucket is None:
            if len(state.buckets) >= BUCKETS_KEPT:
                state.buckets = {k: b for k, b in state.buckets.items()
                                 if not b.full(rate.per_second, rate.burst, now)}
            bucket = state.buckets[src] = Bucket(rate.burst, now)
        return bucket


def _source(session) -> bytes:
    key = session.key
    return key[2] if session.flags & REVERSED else key[1]


class LogLimits:
    """A token bucket per rule's log events (`log_limit`); `allow(reason, now)`."""

    def __init__(self, policy=None, counters: Counter | None = None):
        self.counters = counters if counters is not None else Counter()
        self.rates: dict = {}
        self.buckets: dict[str | None, Bucket] = {}
        if policy is not None:
            self.rates = {rule.name: rule.log_limit for rule in policy.rules if rule.log_limit is not None}
            if policy.default_log_limit is not None:
                self.rates[None] = policy.default_log_limit

    def allow(self, reason: str, now: float) -> bool:
        """May the rule behind `reason` ("rule:NAME", "limit:NAME" or "default") log one more event
        now? Counts the event when not."""
        if not self.rates:
            return True
        rule_name = reason.partition(":")[2] or None
        rate = self.rates.get(rule_name)
        if rate is None:
            return True
        bucket = self.buckets.get(rule_name)
        if bucket is None:
            bucket = self.buckets[rule_name] = Bucket(rate.burst, now)
        if bucket.take(rate.per_second, rate.burst, now):
            return True
        self.counters["log_suppressed"] += 1
        self.counters[f"log_suppressed:{rule_name or 'default'}"] += 1
        return False
