"""The load balancer in the live daemon: `fw run` with a virtual server over three real servers.

One lab and one daemon for the module. The server namespace gets three more addresses, each with a
small HTTP server answering with its name (tests/backends.py): web1 203.0.113.21 (weight 1), web2
.22 (weight 2), web3 .23 (weight 3), port 8080, behind the virtual server 203.0.113.100 port 80
(wrr: shares follow the weights to the request; http health checks every 0.5 s, timeout 0.25 s,
rise 2, fall 2). The client requests with a script of its own (one new connection per request, the
answering server's name counted). Checked, on what the client and the EVE log see:
- 1,000 requests spread by weight, every one answered;
- web2 killed while requests run: its `lb` down event within interval x (fall + 1) + timeout of the
  kill; the requests sent to web2 in between may fail and are counted (each failure one of those);
  after it, no request reaches web2 and every one succeeds; restarted: up within interval x (rise + 1);
- `fw lb drain` of the server a long download runs on: the download runs to its end, new requests
  avoid the drained server; `fw lb enable` brings it back; `fw lb` and `fw lb --json` show it all,
  `fw events --type lb` the drain;
- a second virtual server (port 81, full_nat): the real server sees the firewall's address (and
  through the two-arm one, the client's);
- UDP virtual servers over IPv4 and IPv6 (port 53 to an echo server's 5353);
- a virtual server on the firewall's own lan address.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import netns
from tests.backends import Backend

pytestmark = [pytest.mark.netns, pytest.mark.root]

VIP = "203.0.113.100"
VIP6 = "2001:db8:2::100"
INTERVAL, TIMEOUT, RISE, FALL = 0.5, 0.25, 2, 2
DURING = 200  # requests running across a server's death
SERVERS = {"web1": ("203.0.113.21", 1), "web2": ("203.0.113.22", 2), "web3": ("203.0.113.23", 3)}
POLICY = f"""\
version: 1
defaults: {{action: drop}}
rules:
  - {{name: web, action: accept, proto: tcp, dst: {VIP}, dport: [80, 81]}}
  - {{name: dns, action: accept, proto: udp, dst: [{VIP}, "{VIP6}"], dport: 53}}
  - {{name: local, action: accept, proto: tcp, dst: 198.51.100.1, dport: 8088}}
virtual_servers:
  - name: web
    address: {VIP}
    proto: tcp
    port: 80
    scheduler: wrr
    health: {{type: http, path: /, interval: {INTERVAL}, timeout: {TIMEOUT}, rise: {RISE}, fall: {FALL}}}
    real_servers:
""" + "".join(f"      - {{address: {address}, port: 8080, weight: {weight}}}\n"
              for address, weight in SERVERS.values()) + f"""\
  - name: one-arm
    address: {VIP}
    proto: tcp
    port: 81
    scheduler: maglev
    full_nat: true
    real_servers:
      - {{address: 203.0.113.21, port: 8080}}
  - name: local
    address: 198.51.100.1
    proto: tcp
    port: 8088
    real_servers:
      - {{address: 203.0.113.22, port: 8080}}
  - name: dns
    address: {VIP}
    proto: udp
    port: 53
    real_servers:
      - {{address: 203.0.113.10, port: 5353}}
  - name: dns6
    address: "{VIP6}"
    proto: udp
    port: 53
    scheduler: sh
    real_servers:
      - {{address: "2001:db8:2::10", port: 5353}}
"""
# The client: N requests, one connection each; prints {"names": {name: count}, "errors": n}.
CLIENT = r"""
import collections, http.client, json, sys, time
host, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
port = int(sys.argv[4]) if len(sys.argv) > 4 else 80
names, errors = collections.Counter(), 0
for _ in range(count):
    try:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if path.startswith("/slow/"):
            size = len(body)
        names[" ".join(body.decode().split("\n")[:2]) if path == "/peer" else body.decode().split("\n")[0]] += 1
    except OSError as error:
        errors += 1
        print(repr(error), file=sys.stderr)
        print(time.time(), repr(error), file=sys.stderr)
print(json.dumps({"names": names, "errors": errors, **({"bytes": size} if path.startswith("/slow/") else {})}))
"""


class Running:
    def __init__(self, lab: Lab, process, folder: Path, servers: dict):
        self.lab, self.process, self.folder, self.servers = lab, process, folder, servers

    def fw(self, *args: str) -> str:
        from fw.lab import fw_argv

        return self.lab.run(self.lab.firewall, fw_argv(*args)).stdout

    def lb(self) -> dict:
        rows = json.loads(self.fw("lb", "--json"))["virtual_servers"]
        [row] = [row for row in rows if row["name"] == "web"]
        return {s["server"]: s for s in row["real_servers"]}

    def requests(self, count: int, path: str = "/", port: int = 80, host: str = VIP) -> dict:
        done = self.lab.run("client", [sys.executable, "-c", CLIENT, host, str(count), path, str(port)], timeout=240)
        result = json.loads(done.stdout)
        if result["errors"]:
            sys.stderr.write(f"--- client errors ---\n{done.stderr}\n")
        return result

    def background(self, path: str, count: int = 1) -> netns.Background:
        return netns.Background(self.lab, "client", [sys.executable, "-c", CLIENT, VIP, str(count), path], 120)

    def events(self) -> list[tuple[float, dict]]:
        """(wall time, lb body) of the EVE log's lb events."""
        rows = []
        for line in (self.folder / "eve.json").read_text().splitlines():
            event = json.loads(line)
            if event.get("event_type") == "lb":
                moment = datetime.datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
                rows.append((moment.timestamp(), event["lb"]))
        return rows

    def wait_event(self, server: str, state: str, after: float, limit: float = 30.0) -> float:
        """The wall time of the first `state` event of `server` after `after` (polled)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            for when, body in self.events():
                if when >= after and body["real_server"] == server and body["state"] == state:
                    return when
            time.sleep(0.1)
        raise AssertionError(f"no {state} event for {server}: {self.events()}")


@pytest.fixture(scope="module")
def lb_lab(lab_prefix, tmp_path_factory):
    from fw.lab import start_daemon, wait_daemon_ready

    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("lb-live")
    policy = folder / "lb.yaml"
    policy.write_text(POLICY)
    log = folder / "daemon.log"
    built = Lab(lab_prefix())
    process, servers = None, {}
    try:
        built.up()
        for name, (address, _weight) in SERVERS.items():
            built.run("server", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
            servers[name] = Backend("http", address, 8080, name=name, netns=built.namespace("server")).start()
        process = start_daemon(built, policy, log, "--log", str(folder / "eve.json"))
        wait_daemon_ready(built, process, 30)
        running = Running(built, process, folder, servers)
        deadline = time.monotonic() + 20
        while not all(s["last_check"] and s["health"] == "up" for s in running.lb().values()):
            assert time.monotonic() < deadline, running.lb()
            time.sleep(0.2)
        yield running
    finally:
        status = None
        if process is not None:
            process.terminate()
            try:
                status = process.wait(15)
            except Exception:  # noqa: BLE001
                process.kill()
        for server in servers.values():
            server.kill()
        built.down()
        if process is not None and status != 0:
            sys.stderr.write(f"--- daemon log ---\n{log.read_text(errors='replace')}\n")
        assert process is None or status == 0, f"fw run exited with {status}"


def test_a_thousand_requests_spread_by_weight(lb_lab):
    before = {name: row["opened"] for name, row in lb_lab.lb().items()}
    result = lb_lab.requests(1000)
    assert result["errors"] == 0
    total = sum(weight for _address, weight in SERVERS.values())
    for name, (_address, weight) in SERVERS.items():
        expected = 1000 * weight / total
        assert abs(result["names"][name] - expected) <= 0.05 * expected, result
    after = lb_lab.lb()
    assert sum(row["opened"] - before[name] for name, row in after.items()) == 1000
    text = lb_lab.fw("lb")
    assert "web: tcp 203.0.113.100:80, scheduler wrr" in text and "203.0.113.23:8080" in text
    assert "virtual servers: web 203.0.113.100:80: 203.0.113.21:8080 up" in lb_lab.fw("stats")


def test_a_killed_server_is_marked_down_avoided_and_brought_back(lb_lab):
    """Requests run across the kill: one sent to web2 after it died and before it was marked down
    fails (refused) and is counted; every failure is one of those, the rest are answered."""
    victim, key = lb_lab.servers["web2"], "203.0.113.22:8080"
    before = {name: row["opened"] for name, row in lb_lab.lb().items()}
    across = lb_lab.background("/", count=DURING)
    deadline = time.monotonic() + 10
    while sum(row["opened"] - before[name] for name, row in lb_lab.lb().items()) < 10:  # requests under way
        assert time.monotonic() < deadline, "the requests did not start"
        time.sleep(0.05)
    killed = time.time()
    victim.kill()
    down = lb_lab.wait_event(key, "down", killed)
    assert down - killed <= INTERVAL * (FALL + 1) + TIMEOUT + 0.3, down - killed  # 0.3 s: a loaded machine
    result = across.json(120)
    to_victim = lb_lab.lb()[key]["opened"] - before[key]
    failed = result["errors"]
    sys.stderr.write(f"requests across the kill: {DURING}, failed (sent to the dead web2): {failed}\n")
    assert sum(result["names"].values()) + failed == DURING, result
    assert failed <= to_victim - result["names"].get("web2", 0), (result, to_victim)
    result = lb_lab.requests(60)
    assert result["errors"] == 0 and "web2" not in result["names"], result
    assert lb_lab.lb()[key]["health"] == "down"
    victim.start()
    restarted = time.time()
    up = lb_lab.wait_event(key, "up", restarted)
    assert up - restarted <= INTERVAL * (RISE + 1) + 0.3, up - restarted
    result = lb_lab.requests(60)
    assert result["errors"] == 0 and result["names"]["web2"] > 0, result


def test_drain_keeps_a_long_download_and_sends_new_requests_elsewhere(lb_lab):
    # `opened` only grows: `active` also falls as earlier tests' finished sessions expire, which
    # can hide the download's session from a comparison with a count taken before it
    before = {name: row["opened"] for name, row in lb_lab.lb().items()}
    download = lb_lab.background("/slow/200")  # 200 KiB in about 4 s
    deadline = time.monotonic() + 10
    while True:
        busy = [name for name, row in lb_lab.lb().items() if row["opened"] > before[name]]
        if busy:
            break
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.1)
    [drained] = busy
    lb_lab.fw("lb", "drain", "web", drained)
    assert lb_lab.lb()[drained]["health"] == "drained"
    name = next(n for n, (address, _w) in SERVERS.items() if drained.startswith(address + ":"))
    result = lb_lab.requests(60)
    assert result["errors"] == 0 and name not in result["names"], result
    finished = download.json(60)
    assert finished == {"names": {name: 1}, "errors": 0, "bytes": len(name) + 1 + 200 * 1024}, finished
    lb_lab.fw("lb", "enable", "web", drained)
    assert lb_lab.lb()[drained]["health"] == "up"
    states = [body["state"] for _when, body in lb_lab.events() if body["real_server"] == drained]
    assert states[-2:] == ["drained", "enabled"]
    shown = lb_lab.fw("events", "--type", "lb").splitlines()  # the daemon's feed: fw events
    assert any(line.endswith(f"[LB] web {drained} drained: fw lb drain") for line in shown), shown
    assert not any("[NEW]" in line for line in shown), shown


def test_full_nat_gives_the_real_server_the_firewalls_address(lb_lab):
    """One-arm: the real server sees the firewall's address on its side (the route's preferred
    source toward it), not the client's; the client sees the virtual address answer."""
    result = lb_lab.requests(5, "/peer", port=81)
    assert result == {"names": {"web1 203.0.113.1": 5}, "errors": 0}, result
    two_arm = lb_lab.requests(6, "/peer")  # port 80 (two-arm): the client's own address
    assert two_arm["errors"] == 0 and all(name.endswith(" 198.51.100.10") for name in two_arm["names"]), two_arm


@pytest.mark.parametrize("vip", [VIP, VIP6])
def test_udp_virtual_servers_over_ipv4_and_ipv6(lb_lab, vip):
    """Request/response datagrams through a UDP virtual server: each echoed from the real server,
    back to the client from the virtual address (the client's connected socket takes nothing else)."""
    echo = netns.udp_echo(lb_lab.lab, 5353, count=5, lifetime=20)
    payloads = [f"query {i}".encode() for i in range(5)]
    assert netns.udp_exchange(lb_lab.lab, vip, 53, payloads) == payloads
    assert echo.json() == {"echoed": 5}


def test_a_virtual_address_of_the_firewalls_own_is_balanced(lb_lab):
    """The firewall's lan address, port 8088: balanced to web2, not passed to the firewall itself."""
    assert lb_lab.requests(3, port=8088, host="198.51.100.1") == {"names": {"web2": 3}, "errors": 0}
