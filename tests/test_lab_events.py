"""`fw sessions` filters and `fw events` against a real daemon in the lab (issue 17).

A curl through `fw run --policy policies/lab.yaml`; `fw sessions` with filters, sort and limit shows
it (and only it); `fw events` shows it open, change state and, once killed, go; a follower
(`fw events --follow`) sees each of these live, and drops come with their reason.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import time
from pathlib import Path

import pytest

from fw.lab import Lab, fw_argv
from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = Path(__file__).resolve().parent.parent / "policies" / "lab.yaml"


@pytest.fixture
def web(lab: Lab, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(bytes(300_000))
    (tmp_path / "www" / "small").write_bytes(b"x" * 100)
    with netns.http_server(lab, tmp_path / "www", 8080):
        yield


class Follower:
    """`fw events --follow --json` in the fw namespace; `until(predicate)` reads events as they come."""

    def __init__(self, lab: Lab, *args: str):
        self.process = lab.popen(lab.firewall, fw_argv("events", "--follow", "--json", *args),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.events: list[dict] = []
        self._buffer = b""

    def until(self, predicate, timeout: float = 10.0) -> dict:
        deadline, checked = time.monotonic() + timeout, 0
        while True:
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            if time.monotonic() >= deadline:
                break
            if not self.selector.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = self.process.stdout.read1(65536)
            if not chunk:
                break
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self.events += [json.loads(line) for line in lines]
        raise AssertionError(f"no such event within {timeout} s; seen: {self.events}; "
                             f"stderr: {self.process.stderr.read1(4096) if self.process.poll() is not None else ''}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self.selector.close()


def _lines(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_sessions_filters_sort_and_limit(lab: Lab, daemon, web) -> None:
    firewall = daemon(POLICY)
    for name in ("big", "small"):
        assert netns.curl(lab, netns.url("203.0.113.10", 8080, f"/{name}")).returncode == 0
    table = firewall.fw("sessions", "dport=8080", "--sort", "bytes")
    lines = _lines(table)
    assert lines[0].split() == ["PROTO", "SOURCE", "DESTINATION", "STATE", "PKTS", "BYTES", "AGE", "EXPIRES", "RULE"]
    assert len(lines) == 3 and all("allow-web" in line and "203.0.113.10:8080" in line for line in lines[1:])
    sizes = [json.loads(firewall.fw("sessions", "dport=8080", "--sort", "bytes", "--json").stdout)["sessions"][i]
             ["reply"]["bytes"] for i in (0, 1)]
    assert sizes[0] > 300_000 > sizes[1]
    assert "\x1b[" not in table.stdout  # not a terminal: no colours
    limited = json.loads(firewall.fw("sessions", "proto=tcp", "--limit", "1", "--sort", "bytes", "--json").stdout)
    assert (limited["count"], limited["total"]) == (1, 2)
    assert limited["sessions"][0]["reply"]["bytes"] == sizes[0]
    assert json.loads(firewall.fw("sessions", "proto=udp", "--json").stdout)["count"] == 0
    assert json.loads(firewall.fw("sessions", "state=TIME_WAIT", "rule=allow-web", "--json").stdout)["count"] == 2
    assert "198.51.100.10 dst=203.0.113.10" in firewall.fw("sessions", "--conntrack").stdout
    bad = firewall.fw("sessions", "colour=blue", check=False)
    assert bad.returncode == 2 and "bad filter term 'colour=blue'" in bad.stderr and "Traceback" not in bad.stderr
    killed = firewall.fw("sessions", "kill", "state=TIME_WAIT", "dport=8080")
    assert killed.stdout.strip() == "2 sessions killed"


def test_events_show_sessions_open_change_and_go_and_drops_with_their_reason(lab: Lab, daemon, web) -> None:
    firewall = daemon(POLICY)
    follower = Follower(lab)
    only_new = Follower(lab, "--type", "new")
    try:
        assert netns.curl(lab, netns.url("203.0.113.10", 8080, "/small")).returncode == 0
        opened = follower.until(lambda e: e["type"] == "new" and e.get("dport") == 8080)
        assert (opened["src"], opened["dst"], opened["proto"], opened["state"], opened["rule"], opened["reason"]) == (
            "198.51.100.10", "203.0.113.10", "tcp", "SYN_SENT", "allow-web", "rule:allow-web")
        flow = opened["flow_id"]
        follower.until(lambda e: e["type"] == "update" and e["flow_id"] == flow and e["state"] == "ESTABLISHED")
        follower.until(lambda e: e["type"] == "update" and e["flow_id"] == flow and e["state"] == "TIME_WAIT")
        assert firewall.fw("sessions", "kill", "dport=8080").stdout.strip() == "1 sessions killed"
        gone = follower.until(lambda e: e["type"] == "destroy" and e["flow_id"] == flow)
        assert gone["reason"] == "killed" and gone["bytes"] > 100
        assert netns.curl(lab, netns.url("203.0.113.10", 9999, "/"), max_time=1).returncode == 28
        drop = follower.until(lambda e: e["type"] == "drop" and e.get("dport") == 9999)
        assert drop["reason"] == "default" and drop["src"] == "198.51.100.10"
        only_new.until(lambda e: e["flow_id"] == flow)
        assert {e["type"] for e in only_new.events} == {"new"}
    finally:
        follower.close()
        only_new.close()
    history = firewall.fw("events", "--json", "--since", "5m")
    kinds = [json.loads(line)["type"] for line in _lines(history)]
    assert {"new", "update", "destroy", "drop"} <= set(kinds)
    text = firewall.fw("events", "--type", "destroy").stdout
    assert "[DESTROY] tcp" in text and "reason=killed" in text and "dport=8080" in text
    assert firewall.fw("events", "--since", "1s", "--type", "new").returncode == 0
    bad = firewall.fw("events", "--type", "born", check=False)
    assert bad.returncode == 2 and "'born' is not one of" in bad.stderr


def test_events_with_workers_say_clearly_that_they_do_not_work_yet(lab: Lab, daemon) -> None:
    firewall = daemon(POLICY, "--queues", "0-1")
    result = firewall.fw("events", check=False)
    assert result.returncode == 1 and "does not work with fw run --queues" in result.stderr
