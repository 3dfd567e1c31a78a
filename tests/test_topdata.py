"""fw.topdata: the rates, orders and filters of `fw top`, from two answers of a daemon.

The answers are shaped as the daemon gives them (its `stats` and `sessions` answers are built from
a real Daemon in the lab tests; here two are written out so the arithmetic can be checked exactly).
"""

from __future__ import annotations

import pytest

from fw.topdata import TopModel, rate_text, virtual_server_text


def stats(total: int, drops: dict, rules: dict, active: int, blocked: int = 0) -> dict:
    return {"pid": 7, "uptime": 65.0, "mode": "fail-closed", "policy": {"summary": "8 rules, revision abc"},
            "packets": {"total": total, "accept": total - sum(drops.values()), "drop": sum(drops.values()),
                        "by_verdict": {"accept": {}, "drop": drops}},
            "sessions": {"active": active, "limit": 1000},
            "rules": {name: {"packets": p, "bytes": b, "sessions": s} for name, (p, b, s) in rules.items()},
            "queues": {"0": {"waiting": 0, "overflows": 0}},
            "overload": {"blocked": blocked, "sources": [{"src": "198.51.100.66", "seconds": 50.0}] if blocked else []}}


def session(ident: int, dport: int, nbytes: int, packets: int, rule: str, alg=None, state="ESTABLISHED") -> dict:
    half = {"packets": packets // 2, "bytes": nbytes // 2}
    return {"id": ident, "proto": "tcp", "state": state, "rule": rule, "alg": alg, "age": float(ident),
            "original": {"src": "198.51.100.10", "dst": "203.0.113.10", "sport": 40000 + ident, "dport": dport, **half},
            "reply": {"src": "203.0.113.10", "dst": "198.51.100.10", "sport": dport, "dport": 40000 + ident, **half}}


class Daemon:
    """Answers in turn, and records what was asked."""

    def __init__(self, answers: list[tuple[dict, list]]):
        self.answers = answers
        self.asked: list[dict] = []

    def __call__(self, request: dict) -> dict:
        self.asked.append(request)
        if request["command"] == "kill":
            return {"ok": True, "killed": 1}
        current_stats, current_sessions = self.answers[0]
        if request["command"] == "stats":
            return {"ok": True, "stats": current_stats}
        if len(self.answers) > 1:
            self.answers.pop(0)  # the next poll gets the next answers
        return {"ok": True, "count": len(current_sessions), "total": len(current_sessions) + 1,
                "sessions": current_sessions}


@pytest.fixture
def model() -> TopModel:
    first = (stats(1000, {"default": 10}, {"allow-web": (500, 50_000, 1)}, 2),
             [session(1, 8080, 100_000, 100, "allow-web"), session(2, 21, 2_000, 20, "allow-ftp", "ftp")])
    second = (stats(3000, {"default": 30, "flood": 100}, {"allow-web": (1500, 2_050_000, 1)}, 2, blocked=1),
              [session(1, 8080, 2_100_000, 1100, "allow-web"), session(2, 21, 2_400, 24, "allow-ftp", "ftp"),
               session(3, 30000, 900_000, 600, "allow-ftp")])
    clock = iter([10.0, 12.0])
    return TopModel(Daemon([first, second]), clock=lambda: next(clock))


def test_rates_between_two_polls(model: TopModel) -> None:
    model.poll()
    view = model.poll()
    assert view.error is None
    assert view.packets_rate == 1000.0 and view.drops_rate == 60.0
    assert view.drops_by_reason == {"default": 10.0, "flood": 50.0}
    assert model.reasons() == [("flood", 50.0, 50.0), ("default", 10.0, 10.0)]
    assert view.rules == [("allow-web", 500.0, 1_000_000.0, 1500, 1)]
    assert view.overload["blocked"] == 1 and view.sessions_limit == 1000
    assert list(model.packets_history)[-1] == 1000.0
    rows = {row.id: row for row in model.sessions}
    assert rows[1].bytes_rate == 1_000_000.0 and rows[2].packets_rate == 2.0
    assert rows[3].bytes_rate == 0.0  # new since the last poll: no rate yet
    assert model.total_sessions == 4


def test_sorting_and_filtering(model: TopModel) -> None:
    model.poll()
    model.poll()
    assert [r.id for r in model.rows()] == [1, 2, 3]  # bytes/s: 1 MB/s, 200 B/s, none yet
    assert model.next_sort() == "pkts/s" and model.next_sort() == "bytes"
    assert [r.id for r in model.rows()] == [1, 3, 2]
    model.set_filter("ftp")
    assert [r.id for r in model.rows()] == [3, 2]  # words are found in rule, ALG, addresses
    model.set_filter("ftp :21")
    assert [r.id for r in model.rows()] == [2]
    model.set_filter("dport=21")
    assert model.server_filter() == {"dport": "21"} and model.rows() != []
    with pytest.raises(ValueError, match="bad filter term 'colour=red'"):
        model.set_filter("colour=red")
    assert model.filter_text == "dport=21"  # a bad filter leaves the one in force


def test_killing_a_row_asks_the_daemon_with_its_addresses_and_ports(model: TopModel) -> None:
    model.poll()
    row = model.rows()[0]
    assert model.kill(row) == 1
    assert model.ask.asked[-1] == {"command": "kill", "filter": {"proto": "tcp", "src": "198.51.100.10",
                                                                  "dst": "203.0.113.10", "sport": "40001",
                                                                  "dport": "8080"}}
    assert row.id not in [r.id for r in model.sessions]


def test_short_figures() -> None:
    assert [rate_text(v) for v in (0, 999, 1500, 15_000, 2_500_000, 3e9)] == ["0", "999", "1.5k", "15k", "2.5M",
                                                                               "3.0G"]


def test_virtual_servers_in_one_line() -> None:
    rows = [{"name": "web", "address": "203.0.113.80", "proto": "tcp", "port": 80, "scheduler": "maglev",
             "real_servers": [{"server": "web1", "health": "up", "active": 12},
                              {"server": "web2", "health": "down", "active": 0}]}]
    assert virtual_server_text(rows) == "web 203.0.113.80:80: web1 up 12, web2 down 0"
