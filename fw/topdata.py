"""What `fw top` shows, computed from the daemon's answers: rates, histories and the sessions' rows.

How it works. `TopModel.poll()` asks the daemon of this namespace (fw.drivers.control) for `stats`
and for its sessions (filtered by the daemon when the filter has KEY=VALUE terms, busiest by bytes
first, at most SESSION_LIMIT), and turns two successive answers into rates: packets and drops a
second (with a history for the sparklines), drops a second by reason, per-rule packets and bytes a
second, and each session's bytes and packets a second (by its flow id). Nothing here draws: the
view (fw.cli.top) reads `TopModel.view` and the rows. It is plain Python, tested without a terminal.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

HISTORY = 120  # seconds of packets/s and drops/s kept for the sparklines
SESSION_LIMIT = 2000  # sessions fetched per poll (the busiest by bytes); rates are over these
SORTS = ("bytes/s", "pkts/s", "bytes", "packets", "age")


@dataclass
class SessionRow:
    """One line of the sessions table."""

    id: int
    proto: str
    src: str
    dst: str
    state: str
    rule: str
    bytes: int
    packets: int
    age: float
    bytes_rate: float = 0.0
    packets_rate: float = 0.0
    alg: str | None = None
    filter: dict = field(default_factory=dict)  # the `fw sessions kill` filter that selects it

    def text(self) -> str:
        return " ".join(str(part) for part in (self.proto, self.src, self.dst, self.state, self.rule,
                                                self.alg or "")).lower()


def _endpoint(direction: dict, address_key: str, port_key: str) -> str:
    address, port = direction[address_key], direction.get(port_key)
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def row_of(view: dict) -> SessionRow:
    """A SessionRow of one `fw sessions --json` session."""
    original, reply = view["original"], view["reply"]
    selector = {"proto": view["proto"], "src": original["src"], "dst": original["dst"]}
    if "sport" in original:
        selector.update(sport=str(original["sport"]), dport=str(original["dport"]))
    return SessionRow(id=view["id"], proto=view["proto"], src=_endpoint(original, "src", "sport"),
                      dst=_endpoint(original, "dst", "dport"), state=view["state"], rule=view["rule"] or "-",
                      bytes=original["bytes"] + reply["bytes"], packets=original["packets"] + reply["packets"],
                      age=view["age"], alg=view.get("alg"), filter=selector)


@dataclass
class View:
    """The numbers of the last poll."""

    header: str = ""
    packets_rate: float = 0.0
    drops_rate: float = 0.0
    drops_by_reason: dict = field(default_factory=dict)  # reason -> drops/s
    rules: list = field(default_factory=list)  # (name, packets/s, bytes/s, packets, sessions)
    sessions_active: int = 0
    sessions_limit: int | None = None
    overload: dict = field(default_factory=dict)
    queues: str = ""
    virtual_servers: list = field(default_factory=list)
    error: str | None = None


class TopModel:
    """Polls the daemon; `view`, `rows()`; `sort`, `filter_text` chosen by the operator."""

    def __init__(self, ask: Callable[[dict], dict], clock: Callable[[], float] = time.monotonic):
        self.ask = ask
        self.clock = clock
        self.view = View()
        self.packets_history: deque = deque([0.0] * HISTORY, maxlen=HISTORY)
        self.drops_history: deque = deque([0.0] * HISTORY, maxlen=HISTORY)
        self.reason_history: dict[str, deque] = {}  # drop reason -> its drops/s, the last HISTORY polls
        self.sort = SORTS[0]
        self.filter_text = ""
        self.sessions: list[SessionRow] = []
        self.total_sessions = 0
        self._last: tuple[float, dict] | None = None
        self._seen: dict[int, tuple[float, int, int]] = {}  # flow id -> (when, bytes, packets)

    # -- the operator's choices --------------------------------------------------------------------

    def next_sort(self) -> str:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        return self.sort

    def set_filter(self, text: str) -> None:
        """KEY=VALUE words go to the daemon (ValueError if one is bad); other words match row text."""
        from fw.drivers.control import parse_filter  # noqa: PLC0415

        parse_filter([w for w in text.split() if "=" in w], empty_ok=True)
        self.filter_text = text.strip()

    def server_filter(self) -> dict | None:
        from fw.drivers.control import parse_filter  # noqa: PLC0415

        return parse_filter([w for w in self.filter_text.split() if "=" in w], empty_ok=True) or None

    def rows(self) -> list[SessionRow]:
        words = [w.lower() for w in self.filter_text.split() if "=" not in w]
        rows = [r for r in self.sessions if all(w in r.text() for w in words)]
        key = {"bytes/s": lambda r: (-r.bytes_rate, -r.bytes), "pkts/s": lambda r: (-r.packets_rate, -r.packets),
               "bytes": lambda r: -r.bytes, "packets": lambda r: -r.packets, "age": lambda r: -r.age}[self.sort]
        return sorted(rows, key=key)

    # -- polling -----------------------------------------------------------------------------------

    def poll(self) -> View:
        """Ask the daemon; update the view and the rows. A failure is kept in `view.error`."""
        from fw.drivers.control import ControlError  # noqa: PLC0415

        try:
            stats = self.ask({"command": "stats"})["stats"]
            answer = self.ask({"command": "sessions", "filter": self.server_filter(), "sort": "bytes",
                               "limit": SESSION_LIMIT})
        except (ControlError, ValueError) as error:
            self.view.error = str(error)
            return self.view
        now = self.clock()
        self._update_view(now, stats)
        self._update_sessions(now, answer)
        return self.view

    def _update_view(self, now: float, stats: dict) -> None:
        last = self._last
        self._last = (now, stats)
        elapsed = now - last[0] if last is not None else 0.0
        before = last[1] if last is not None else stats

        def rate(new: float, old: float) -> float:
            return max(0.0, new - old) / elapsed if elapsed > 0 else 0.0

        packets, old_packets = stats["packets"], before["packets"]
        view = View(error=None)
        view.packets_rate = rate(packets["total"], old_packets["total"])
        view.drops_rate = rate(packets["drop"], old_packets["drop"])
        old_drops = old_packets["by_verdict"]["drop"]
        view.drops_by_reason = {reason: rate(n, old_drops.get(reason, 0))
                                for reason, n in packets["by_verdict"]["drop"].items()}
        old_rules = before.get("rules") or {}
        for name, counts in sorted((stats.get("rules") or {}).items()):
            old = old_rules.get(name, {"packets": 0, "bytes": 0})
            view.rules.append((name, rate(counts["packets"], old["packets"]), rate(counts["bytes"], old["bytes"]),
                               counts["packets"], counts["sessions"]))
        view.rules.sort(key=lambda rule: (-rule[1], -rule[3], rule[0]))
        sessions = stats["sessions"]
        view.sessions_active, view.sessions_limit = sessions["active"], sessions.get("limit")
        view.overload = stats.get("overload") or {}
        view.queues = ", ".join(f"q{n}: {q['waiting']} waiting, {q['overflows']} overflows"
                                for n, q in sorted(stats.get("queues", {}).items()))
        view.virtual_servers = stats.get("virtual_servers") or []
        policy = stats.get("policy") or {}
        view.header = (f"fw pid {stats.get('pid')}, up {_uptime(stats.get('uptime', 0))}, {stats.get('mode')}, "
                       f"{policy.get('summary', '')}")
        if last is not None:
            self.packets_history.append(view.packets_rate)
            self.drops_history.append(view.drops_rate)
            for reason in set(self.reason_history) | set(view.drops_by_reason):
                history = self.reason_history.setdefault(reason, deque(maxlen=HISTORY))
                history.append(view.drops_by_reason.get(reason, 0.0))
        self.view = view

    def reasons(self) -> list[tuple[str, float, float]]:
        """(reason, drops/s now, the most a second in the history) of the reasons that dropped
        anything in the history: the busiest now first, then the busiest before."""
        rows = [(reason, self.view.drops_by_reason.get(reason, 0.0), max(history))
                for reason, history in self.reason_history.items() if max(history, default=0) > 0]
        return sorted(rows, key=lambda row: (-row[1], -row[2], row[0]))

    def _update_sessions(self, now: float, answer: dict) -> None:
        rows, seen = [], {}
        for session in answer.get("sessions", ()):
            row = row_of(session)
            before = self._seen.get(row.id)
            if before is not None and now > before[0]:
                row.bytes_rate = max(0, row.bytes - before[1]) / (now - before[0])
                row.packets_rate = max(0, row.packets - before[2]) / (now - before[0])
            seen[row.id] = (now, row.bytes, row.packets)
            rows.append(row)
        self._seen = seen
        self.sessions = rows
        self.total_sessions = answer.get("total", answer.get("count", len(rows)))

    def kill(self, row: SessionRow) -> int:
        """Kill the session of `row` (by its addresses, ports and protocol); how many went."""
        answer = self.ask({"command": "kill", "filter": row.filter})
        self.sessions = [r for r in self.sessions if r.id != row.id]
        return answer.get("killed", 0)


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rate_text(value: float, unit: str = "") -> str:
    """1234.5 -> `1.2k`, 3.2e6 -> `3.2M`: short figures for narrow columns."""
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f}{suffix}{unit}" if scaled < 10 else f"{scaled:.0f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def virtual_server_text(rows: list) -> str:
    """One line for the virtual servers (rows shaped as fw.lb's `status()`: `fw lb --json`):
    `web 203.0.113.80:80: web1 up 12, web2 down 0` (real server, health, active sessions)."""
    parts = []
    for row in rows:
        if not isinstance(row, dict):
            parts.append(str(row))
            continue
        servers = ", ".join(f"{s.get('server')} {s.get('health', '?')} {s.get('active', 0)}"
                            for s in row.get("real_servers", ()))
        parts.append(f"{row.get('name')} {row.get('address')}:{row.get('port')}: {servers or 'no real servers'}")
    return "; ".join(parts)
