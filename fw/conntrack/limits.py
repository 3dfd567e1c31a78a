"""Per-source limits against floods: half-open sessions, a new-session rate, an overload list.

How it works: only packets that would open a session reach `admit(src, now)`, so established
traffic never pays for this. Each source that opens sessions gets a small record: a token bucket
(`new_session_rate` tokens a second, up to `new_session_burst`), its count of half-open TCP
sessions (SYN_SENT, SYN_RECV, SYN_SENT2: kept by the engine through `half_open_started` and
`half_open_ended`), and the time until which it is blocked. A source that exceeds either limit is
put on the overload list for `overload_seconds` (pf's `overload <table> flush`): every new session
it tries is refused until then. A limit of 0 is off. `prune(now)` forgets idle sources so the
records cannot grow without bound.
"""

from __future__ import annotations

FLOOD = "flood"


class SourceRecord:
    __slots__ = ("tokens", "stamp", "half_open", "blocked_until")

    def __init__(self, tokens: float, now: float):
        self.tokens = tokens
        self.stamp = now
        self.half_open = 0
        self.blocked_until = 0.0


class SourceLimits:
    """The flood limits of a policy's options, and what each source has used of them."""

    def __init__(self, options) -> None:
        self.sources: dict[bytes, SourceRecord] = {}
        self.configure(options)

    def configure(self, options) -> None:
        self.rate = float(options.get("new_session_rate", 0))
        self.burst = float(options.get("new_session_burst", 0)) or max(self.rate, 1.0)
        self.max_half_open = int(options.get("max_half_open_per_source", 0))
        self.overload_seconds = float(options.get("overload_seconds", 60))

    @property
    def active(self) -> bool:
        return bool(self.rate or self.max_half_open)

    def admit(self, src: bytes, now: float) -> str | None:
        """None when `src` may open a session now (a token is spent), else why not ("rate",
        "half-open", "blocked"). A source that breaks a limit is blocked for overload_seconds."""
        record = self.sources.get(src)
        if record is None:
            record = self.sources[src] = SourceRecord(self.burst, now)
        if record.blocked_until > now:
            return "blocked"
        if self.max_half_open and record.half_open >= self.max_half_open:
            record.blocked_until = now + self.overload_seconds
            return "half-open"
        if self.rate:
            tokens = min(self.burst, record.tokens + (now - record.stamp) * self.rate)
            record.stamp = now
            if tokens < 1.0:
                record.tokens = tokens
                record.blocked_until = now + self.overload_seconds
                return "rate"
            record.tokens = tokens - 1.0
        return None

    def half_open_started(self, src: bytes, now: float) -> None:
        record = self.sources.get(src)
        if record is None:
            record = self.sources[src] = SourceRecord(self.burst, now)
        record.half_open += 1

    def half_open_ended(self, src: bytes) -> None:
        record = self.sources.get(src)
        if record is not None and record.half_open > 0:
            record.half_open -= 1

    def blocked(self, now: float) -> dict[bytes, float]:
        """Sources on the overload list and the time they are blocked until."""
        return {src: r.blocked_until for src, r in self.sources.items() if r.blocked_until > now}

    def prune(self, now: float) -> None:
        """Forget sources with no half-open session, no block, and a full bucket again."""
        if len(self.sources) < 1024:
            return
        rate, burst = self.rate, self.burst
        idle = [
            src
            for src, r in self.sources.items()
            if not r.half_open and r.blocked_until <= now and (not rate or r.tokens + (now - r.stamp) * rate >= burst)
        ]
        for src in idle:
            del self.sources[src]
