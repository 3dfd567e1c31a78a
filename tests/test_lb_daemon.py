"""The load balancer's daemon side (fw/drivers/lb.py): health checks in the daemon's loop against
real HTTP servers on loopback, their changes in the engine, as EVE `lb` events and metrics, and the
control commands of `fw lb`, `fw lb drain` and `fw lb enable`.

The daemon is a real fw.daemon.Daemon, not started (no queue, no iptables): its loop is turned as
`Daemon.run` turns it (poll until the next wake-up, then the background work). Its effects carry
the events to an EVE file. The CLI's text is checked on the rows the service answers.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from fw.cli.lb import lb_lines
from fw.daemon import Daemon, DaemonConfig
from fw.drivers.effects import Effects
from fw.drivers.eve import EveLog
from fw.drivers.lb import LbService, canonical_server
from fw.engine import Engine, EngineConfig
from fw.metrics import Metrics
from fw.policy import load_policy_sources
from fw.workers import merge_lb

INTERVAL, TIMEOUT, RISE, FALL = 0.4, 0.2, 2, 2


def policy_text(ports) -> str:
    servers = "\n".join(f"      - {{address: 127.0.0.1, port: {port}, weight: {w}}}" for port, w in ports)
    return textwrap.dedent(f"""\
        version: 1
        defaults: {{action: accept}}
        virtual_servers:
          - name: web
            address: 203.0.113.100
            proto: tcp
            port: 80
            scheduler: maglev
            health: {{type: http, path: /, expect: 200, interval: {INTERVAL}, timeout: {TIMEOUT},
                      rise: {RISE}, fall: {FALL}}}
            real_servers:
        """) + servers + "\n"


@pytest.fixture
def lab(backend, tmp_path):
    """(daemon, service, servers, eve path): three HTTP servers, the middle one of weight 2."""
    servers = [backend("http", name=f"web{i}") for i in range(3)]
    text = policy_text([(s.port, 2 if i == 1 else 1) for i, s in enumerate(servers)])
    policy_path = tmp_path / "lb.yaml"
    policy_path.write_text(text)

    def load(path):
        return load_policy_sources([(str(path), open(path).read())])

    engine = Engine(load(policy_path), EngineConfig(events=True))
    daemon = Daemon(DaemonConfig(policy_path=str(policy_path)), engine, load)
    eve = tmp_path / "eve.json"
    daemon.effects = Effects(None, EveLog(str(eve)))
    service = LbService(daemon)
    yield daemon, service, servers, eve
    service.close()
    daemon.effects.close()


def turn(daemon, until, limit: float = 15.0) -> float:
    """Turn the loop as Daemon.run does until `until()`; the time it took."""
    start = time.monotonic()
    while not until():
        assert time.monotonic() - start < limit, "condition not met"
        wake = min([w for w in (due() for due in daemon.wakeups) if w is not None] or [time.monotonic() + 0.1])
        daemon.loop.run_once(min(0.1, max(0.0, wake - time.monotonic())))
        for work in daemon.background:
            work()
    return time.monotonic() - start


def health(daemon) -> dict:
    [row] = daemon.handle({"command": "lb"})["virtual_servers"]
    return {s["server"]: s["health"] for s in row["real_servers"]}


def events(eve) -> list[dict]:
    return [json.loads(line)["lb"] for line in eve.read_text().splitlines() if '"lb"' in line]


def test_a_killed_server_goes_down_and_comes_back_within_the_bounds(lab):
    daemon, _service, servers, eve = lab
    victim = f"127.0.0.1:{servers[0].port}"
    turn(daemon, lambda: all(s["last_check"] for s in daemon.handle({"command": "lb"})["virtual_servers"][0]
                             ["real_servers"]))
    servers[0].kill()
    took = turn(daemon, lambda: health(daemon)[victim] == "down")
    assert took <= INTERVAL * (FALL + 1) + TIMEOUT + 0.5  # 0.5: a loaded machine's slack
    balancer = daemon.engine.nat.lb.services.balancers["web"]
    turn(daemon, lambda: balancer.scheduler.builder is None)  # the new table, built in slices, is in
    for sport in range(40000, 40300):
        assert balancer.choose(bytes([198, 51, 100, 10]), sport, 1.0).name != victim
    servers[0].start()
    took = turn(daemon, lambda: health(daemon)[victim] == "up")
    assert took <= INTERVAL * (RISE + 1) + 0.5
    daemon.effects.log.flush()
    states = [(e["real_server"], e["state"]) for e in events(eve)]
    assert states == [(victim, "down"), (victim, "up")]


def test_drain_and_enable_over_the_control_commands(lab):
    """... and their events in the EVE log and in `fw events` (the feed, type lb)."""
    from fw.cli.events import event_line
    from fw.feed import EventFeed, parse_request

    daemon, _service, servers, eve = lab
    feed = EventFeed()
    daemon.effects.effect_sinks.append(feed.effects)  # as fw.feed.attach_feed does
    name = f"127.0.0.1:{servers[1].port}"
    answer = daemon.handle({"command": "lb-drain", "name": "web", "server": name})
    assert answer["ok"] and health(daemon)[name] == "drained"
    refused = daemon.handle({"command": "lb-drain", "name": "web", "server": "127.0.0.1:1"})
    assert not refused["ok"] and refused["exit"] == 2 and "web:" in refused["error"]
    assert not daemon.handle({"command": "lb-drain", "name": "nope", "server": name})["ok"]
    assert daemon.handle({"command": "lb-enable", "name": "web", "server": name})["ok"]
    assert health(daemon)[name] == "up"
    daemon.effects.log.flush()
    assert [e["state"] for e in events(eve)] == ["drained", "enabled"]
    _follow, types, _since = parse_request({"types": ["lb"]})
    shown = [json.loads(line) for chunk in feed.stream(False, types) for line in chunk.splitlines()][1:]
    assert [(e["type"], e["virtual_server"], e["real_server"], e["state"]) for e in shown] == [
        ("lb", "web", name, "drained"), ("lb", "web", name, "enabled")]
    assert event_line(shown[0]).endswith(f"[LB] web {name} drained: fw lb drain")


def test_a_reload_keeps_a_down_server_down_and_forgets_drain(lab):
    daemon, _service, servers, _eve = lab
    down, drained = f"127.0.0.1:{servers[0].port}", f"127.0.0.1:{servers[2].port}"
    servers[0].kill()
    turn(daemon, lambda: health(daemon)[down] == "down")
    daemon.handle({"command": "lb-drain", "name": "web", "server": drained})
    assert daemon.reload()["ok"]
    assert health(daemon) == {down: "down", f"127.0.0.1:{servers[1].port}": "up", drained: "up"}


def test_metrics_and_stats_carry_each_real_server(lab):
    daemon, _service, servers, _eve = lab
    engine = daemon.engine
    from tests.packets import seg

    decision = engine.process(seg("198.51.100.10:40000", "203.0.113.100:80", "S", seq=1), 1.0)
    metrics = Metrics(engine)
    samples = [s.name for m in metrics.collect() for s in m.samples if m.name.startswith("fw_lb")]
    assert samples.count("fw_lb_up") == 3 and samples.count("fw_lb_opened_total") == 3
    assert samples.count("fw_lb_bytes_total") == 3

    def total(name: str) -> float:
        return sum(s.value for m in metrics.collect() for s in m.samples if s.name == name)

    assert (total("fw_lb_sessions"), total("fw_lb_opened_total"), total("fw_lb_up")) == (1, 1, 3)
    daemon.handle({"command": "lb-drain", "name": "web", "server": f"127.0.0.1:{servers[0].port}"})
    engine.kill(decision.session, 2.0)  # its bytes are known when it ends: one 40-byte SYN
    metrics.tick(2.0)  # the numbers are copied on the loop's ticks
    assert (total("fw_lb_sessions"), total("fw_lb_bytes_total"), total("fw_lb_up")) == (0, 40, 2)
    stats_rows = daemon.stats_sections["virtual_servers"]()
    merged = merge_lb(merge_lb(None, stats_rows), stats_rows)  # two workers alike: counts doubled
    assert sum(s["opened"] for s in merged[0]["real_servers"]) == 2
    lines = lb_lines(stats_rows, time.time())
    assert lines[0] == "web: tcp 203.0.113.100:80, scheduler maglev" and "REAL SERVER" in lines[1]
    assert len(lines) == 5


def test_server_names_are_taken_as_the_balancer_writes_them():
    assert canonical_server("[2001:0db8::0021]:80") == "[2001:db8::21]:80"
    assert canonical_server("203.0.113.21:8080") == "203.0.113.21:8080"
    assert canonical_server("nonsense") == "nonsense"


@pytest.mark.parametrize("extra", [["--queues", "0-1"], ["--fail-open"]])
def test_fw_run_refuses_virtual_servers_where_it_refuses_nat(tmp_path, extra):
    """--queues (a reply from a real server hashes to another worker than its session's) and
    --fail-open (untranslated traffic would leak) are refused in one line, exit 2."""
    from click.testing import CliRunner

    from fw.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(policy_text([(8080, 1)]))
    result = CliRunner().invoke(main, ["run", "--policy", str(path), *extra])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{extra[0]} is refused with a policy that translates addresses (virtual_servers)" in result.stderr

