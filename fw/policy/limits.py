"""A rule's `limit` and `log_limit`: parsed from YAML into RuleLimit and Rate, errors located.

How it works: `limit` is a mapping of `per_source` (concurrent sessions from one source, as
connlimit and pf's max-src-conn), `sessions` (the rule's concurrent sessions, pf's max), `rate`
with `burst` (new sessions, a token bucket as nftables' `limit`; `per_source: true` gives each
source its own bucket, pf's max-src-conn-rate) and `over` (what happens to a session over the
limit: drop, or reject). Rates are written "N/second" (minute, hour, day). The engine keeps the
counts (fw.conntrack.rule_limits); this module only checks what is written.
"""

from __future__ import annotations

import re

from yaml.nodes import MappingNode

from fw.policy import fields
from fw.policy.diagnostics import Reporter
from fw.policy.fields import INVALID
from fw.policy.source import items

LIMIT_KEYS = ("per_source", "sessions", "rate", "burst", "over")
OVER_ACTIONS = ("drop", "reject")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
RATE_WORDS = "N/second, N/minute, N/hour or N/day"


class Rate:
    """`count` events per `seconds`: a token bucket refilled at count/seconds, `burst` deep."""

    __slots__ = ("count", "seconds", "burst", "text")

    def __init__(self, count: int, seconds: int, burst: int | None = None, text: str = ""):
        self.count = count
        self.seconds = seconds
        self.burst = burst if burst is not None else count
        self.text = text or f"{count}/{seconds}s"

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def __repr__(self) -> str:
        return f"Rate({self.text}, burst {self.burst})"


class RuleLimit:
    """What a rule's `limit` allows: each field None when not set."""

    __slots__ = ("per_source", "sessions", "rate", "rate_per_source", "over")

    def __init__(self, per_source=None, sessions=None, rate=None, rate_per_source=False, over="drop"):
        self.per_source = per_source
        self.sessions = sessions
        self.rate = rate
        self.rate_per_source = rate_per_source
        self.over = over

    @property
    def counts(self) -> bool:
        """Does this limit count concurrent sessions (and so need releasing when they end)?"""
        return self.per_source is not None or self.sessions is not None

    def __repr__(self) -> str:
        return (f"RuleLimit(per_source={self.per_source}, sessions={self.sessions}, rate={self.rate}, "
                f"rate_per_source={self.rate_per_source}, over={self.over})")


def rate(rep: Reporter, node, what: str):
    """'N/second' (minute, hour, day) -> Rate, or INVALID."""
    value = fields.scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    match = RATE.match(value) if isinstance(value, str) else None
    unit = match[2].rstrip("s") if match else None
    if match is None or unit not in UNITS:
        rep.error(node, f"{what} must be {RATE_WORDS} (got '{node.value}')")
        return INVALID
    if int(match[1]) <= 0:
        rep.error(node, f"{what} must be at least 1/{unit}")
        return INVALID
    return Rate(int(match[1]), UNITS[unit], text=f"{int(match[1])}/{unit}")


def rule_limit(rep: Reporter, key_node, node, action):
    """A rule's `limit` mapping -> RuleLimit, or INVALID. `action` is the rule's (limits need accept)."""
    if not isinstance(node, MappingNode):
        rep.error(node, "limit must be a mapping (per_source, sessions, rate, burst, over)")
        return INVALID
    entries = {key: (k, v) for key, k, v in items(rep, node, LIMIT_KEYS, "limit")}
    ok = len(entries) == len(node.value)
    values = {}
    if "rate" in entries:
        values["rate"] = rate(rep, entries["rate"][1], "limit rate")
    for key in ("sessions", "burst"):
        if key in entries:
            values[key] = fields.positive_int(rep, entries[key][1], f"limit {key}")
    if "over" in entries:
        values["over"] = fields.choice(rep, entries["over"][1], "limit over", OVER_ACTIONS)
    if "per_source" in entries:
        values["per_source"] = _per_source(rep, entries["per_source"][1], "rate" in entries)
    if "burst" in entries and "rate" not in entries:
        rep.error(entries["burst"][0], "limit burst needs a rate")
        ok = False
    if ok and not {"per_source", "sessions", "rate"} & entries.keys():
        rep.error(node, "limit sets nothing (add per_source, sessions or rate)")
        ok = False
    if action not in (INVALID, "accept"):
        rep.error(key_node, f"limit needs action accept (this rule's action is {action})")
        ok = False
    if not ok or INVALID in values.values():
        return INVALID
    return _limit_of(values)


def _per_source(rep: Reporter, node, with_rate: bool):
    """per_source: a count of sessions, or with a rate, true/false (a bucket per source)."""
    if with_rate:
        return fields.boolean(rep, node, "limit per_source (with a rate: true or false)")
    value = fields.scalar(rep, node, "limit per_source")
    if value is INVALID:
        return INVALID
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        rep.error(node, "limit per_source must be a positive integer (sessions from one source; "
                        "true/false only beside a rate)")
        return INVALID
    return value


def _limit_of(values: dict) -> RuleLimit:
    bucket = values.get("rate")
    if bucket is not None and "burst" in values:
        bucket = Rate(bucket.count, bucket.seconds, values["burst"], bucket.text)
    with_rate = bucket is not None
    return RuleLimit(
        per_source=None if with_rate else values.get("per_source"),
        sessions=values.get("sessions"),
        rate=bucket,
        rate_per_source=bool(values.get("per_source")) if with_rate else False,
        over=values.get("over", "drop"),
    )
