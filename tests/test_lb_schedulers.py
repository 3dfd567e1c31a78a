"""The load balancer's schedulers, Maglev table, persistence and balancer (fw/lb), without I/O.

Shares are counted over 10,000 flows from a fixed seed. The counting schedulers (wrr, and wlc with
every session held open) follow weights to the flow; the hashing ones (sh, maglev) follow them as a
random sample does: over 10,000 flows a share p wanders by sqrt((1 - p) / (10,000 p)) relative
(7% for one weight in 55), so their 5% bound is checked where it holds by more than two standard
deviations (shares of a quarter or more), and at 10 servers on the hash space itself (Maglev's
slots, sh's arithmetic) and over 100,000 flows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from fw.lb.balancer import Balancer
from fw.lb.hashing import OFFSET, stable_hash
from fw.lb.maglev import MaglevBuilder, build_table, default_table_size, is_prime, permutation
from fw.lb.persistence import Affinity
from fw.lb.schedulers import SCHEDULERS, Maglev, make_scheduler
from fw.lb.servers import RealServer, server_name

ROOT = Path(__file__).resolve().parent.parent
FLOWS = 10_000
SEED = 15
WEIGHTS_1_TO_10 = tuple(range(1, 11))


def addresses(count: int) -> list[str]:
    return [f"198.51.{100 + i // 250}.{i % 250 + 1}" for i in range(count)]


def triples(weights) -> list[tuple[str, int, int]]:
    return [(address, 8080, weight) for address, weight in zip(addresses(len(weights)), weights, strict=True)]


def flows(count: int = FLOWS, seed: int = SEED) -> list[tuple[bytes, int]]:
    rng = random.Random(seed)
    return [(bytes([192, 0, 2, 0]) + rng.randbytes(12) if i % 2 else rng.randbytes(4), rng.randrange(1024, 65536))
            for i in range(count)]


def shares(balancer: Balancer, flow_list, hold: bool = True) -> Counter:
    """Sessions per server name; with `hold`, every session stays open (wlc sees them)."""
    counts: Counter = Counter()
    for src, sport in flow_list:
        server = balancer.choose(src, sport, 0.0)
        if hold:
            balancer.opened(server)
        counts[server.name] += 1
    return counts


def worst_relative_error(counts: Counter, balancer: Balancer) -> float:
    total_weight = sum(s.weight for s in balancer.servers)
    total = sum(counts.values())
    return max(abs(counts[s.name] / total - s.weight / total_weight) / (s.weight / total_weight)
               for s in balancer.servers)


# --- shares -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["wrr", "wlc"])
def test_counting_schedulers_follow_weights_at_ten_servers(scheduler):
    balancer = Balancer("web", triples(WEIGHTS_1_TO_10), scheduler)
    counts = shares(balancer, flows())
    assert worst_relative_error(counts, balancer) < 0.05, counts


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
@pytest.mark.parametrize("weights", [(1, 1, 2), (3, 3, 3), (2, 3, 3)], ids=str)
def test_hashing_schedulers_follow_weights_over_ten_thousand_flows(scheduler, weights):
    balancer = Balancer("web", triples(weights), scheduler)
    counts = shares(balancer, flows())
    assert worst_relative_error(counts, balancer) < 0.05, counts


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
def test_hashing_schedulers_at_ten_servers_over_a_hundred_thousand_flows(scheduler):
    balancer = Balancer("web", triples([1] * 10), scheduler)
    counts = shares(balancer, flows(100_000), hold=False)
    assert worst_relative_error(counts, balancer) < 0.05, counts


def test_maglev_slots_follow_weights_at_ten_servers():
    servers = [RealServer(a, 8080, w) for a, w in zip(addresses(10), WEIGHTS_1_TO_10, strict=True)]
    counts = build_table(servers, 65537).counts()
    assert sum(counts.values()) == 65537
    for server in servers:
        expected = 65537 * server.weight / 55
        assert abs(counts[server.name] - expected) / expected < 0.01, (server, counts[server.name], expected)


def test_wrr_interleaves_as_ipvs():
    """ip_vs_wrr's example: weights A=4, B=3, C=2 give AABABCABC, again and again."""
    balancer = Balancer("web", [("198.51.100.1", 80, 4), ("198.51.100.2", 80, 3), ("198.51.100.3", 80, 2)], "wrr")
    letters = {"198.51.100.1:80": "A", "198.51.100.2:80": "B", "198.51.100.3:80": "C"}
    picks = "".join(letters[balancer.choose(b"\xc0\x00\x02\x01", 1, 0).name] for _ in range(18))
    assert picks == "AABABCABC" * 2


def test_wrr_steps_by_the_gcd_of_the_weights():
    balancer = Balancer("web", [("198.51.100.1", 80, 20), ("198.51.100.2", 80, 10)], "wrr")
    picks = [balancer.choose(b"\xc0\x00\x02\x01", 1, 0).address for _ in range(6)]
    assert picks == ["198.51.100.1", "198.51.100.1", "198.51.100.2"] * 2


def test_rr_takes_servers_in_order_and_goes_on_after_a_change():
    balancer = Balancer("web", triples([1, 1, 1]), "rr")
    first = [balancer.choose(b"\x01\x02\x03\x04", 1, 0).address for _ in range(4)]
    assert first == addresses(3) + addresses(1)
    balancer.scheduler.add(RealServer("198.51.100.9", 8080))
    after = [balancer.choose(b"\x01\x02\x03\x04", 1, 0).address for _ in range(4)]
    assert after == ["198.51.100.2", "198.51.100.3", "198.51.100.9", "198.51.100.1"]


def test_lc_takes_the_fewest_active_sessions_ties_in_order():
    balancer = Balancer("web", triples([1, 5, 1]), "lc")
    one, two, three = balancer.servers
    assert balancer.choose(b"\x01\x02\x03\x04", 1, 0) is one  # all 0: the first, weights aside
    balancer.opened(one)
    balancer.opened(two)
    assert balancer.choose(b"\x01\x02\x03\x04", 1, 0) is three
    balancer.opened(three)
    balancer.opened(three)
    balancer.closed(one)
    assert balancer.choose(b"\x01\x02\x03\x04", 1, 0) is one
    assert (one.active, one.opened, three.active, three.opened) == (0, 1, 2, 2)


def test_wlc_weighs_active_sessions():
    balancer = Balancer("web", triples([1, 3]), "wlc")
    light, heavy = balancer.servers
    for _ in range(2):
        balancer.opened(light)
    for _ in range(5):
        balancer.opened(heavy)
    assert balancer.choose(b"\x01\x02\x03\x04", 1, 0) is heavy  # 5/3 < 2/1
    balancer.opened(heavy)
    assert balancer.choose(b"\x01\x02\x03\x04", 1, 0) is light  # 2/1 == 6/3: the first in order


# --- health, draining, all down --------------------------------------------------------------

@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_down_and_drained_servers_get_no_new_flows_and_sessions_stay(scheduler):
    balancer = Balancer("web", triples([1, 2, 3, 4]), scheduler)
    held = shares(balancer, flows(400))
    down, drained = balancer.servers[1].name, balancer.servers[3].name
    balancer.set_up(down, False)
    balancer.drain(drained)
    balancer.work(1 << 30)
    counts = shares(balancer, flows(2000, seed=SEED + 1))
    assert counts[down] == 0 and counts[drained] == 0
    assert set(counts) == {balancer.servers[0].name, balancer.servers[2].name}
    assert balancer.server(drained).active == held[drained] > 0  # its sessions are still counted
    assert balancer.server(drained).health == "drained" and balancer.server(down).health == "down"
    balancer.enable(drained)
    balancer.set_up(down, True)
    balancer.work(1 << 30)
    assert {down, drained} <= set(shares(balancer, flows(2000, seed=SEED + 2)))
    assert balancer.server(drained).weight == 4


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_no_server_available_is_all_down(scheduler):
    balancer = Balancer("web", triples([1, 0, 2]), scheduler)
    balancer.set_up(balancer.servers[0].name, False)
    balancer.set_up(balancer.servers[2].name, False)
    balancer.work(1 << 30)
    assert balancer.choose(b"\x01\x02\x03\x04", 5, 0) is None
    balancer.set_weight(balancer.servers[1].name, 1)
    balancer.work(1 << 30)
    assert balancer.choose(b"\x01\x02\x03\x04", 5, 0) is balancer.servers[1]
    assert Balancer("empty", [], scheduler).choose(b"\x01\x02\x03\x04", 5, 0) is None


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
def test_a_server_going_down_moves_only_its_own_flows(scheduler):
    balancer = Balancer("web", triples([1, 1, 1, 1, 1]), scheduler)
    flow_list = flows(3000)
    before = [balancer.choose(src, sport, 0) for src, sport in flow_list]
    victim = balancer.servers[2]
    balancer.set_up(victim.name, False)  # maglev: the old table answers, falling through
    during = [balancer.choose(src, sport, 0) for src, sport in flow_list]
    assert all(b is d for b, d in zip(before, during, strict=True) if b is not victim)
    assert victim not in during


# --- persistence -------------------------------------------------------------------------------

def test_persistence_keeps_a_client_on_its_server_until_it_expires():
    balancer = Balancer("web", triples([1, 1, 1]), "rr", persistence=30)
    client, other = b"\xc0\x00\x02\x0a", b"\xc0\x00\x02\x0b"
    first = balancer.choose(client, 1000, 100.0)
    assert all(balancer.choose(client, 1001 + i, 100.0 + 10 * i) is first for i in range(5))  # refreshed
    assert balancer.choose(other, 1000, 140.0) is not first  # rr moved on for others
    later = [balancer.choose(client, 2000, 140.0 + 30.0)]  # 30 s after its last new session
    assert later[0] is not first
    assert balancer.expire(1000.0) == 2 and len(balancer.affinity) == 0


def test_persistence_gives_way_when_the_server_is_drained_or_down():
    balancer = Balancer("web", triples([1, 1]), "maglev", persistence=300)
    client = b"\xc0\x00\x02\x0a"
    first = balancer.choose(client, 1000, 0.0)
    balancer.drain(first.name)
    moved = balancer.choose(client, 1001, 1.0)
    assert moved is not first and moved is not None
    balancer.enable(first.name)
    assert balancer.choose(client, 1002, 2.0) is moved  # it stays where it went
    balancer.set_up(moved.name, False)
    assert balancer.choose(client, 1003, 3.0) is first


def test_affinity_expires_in_deadline_order():
    table = Affinity(10)
    for i in range(5):
        table.remember(bytes([i]), f"s{i}", float(i))
    table.remember(bytes([0]), "s0", 7.0)  # refreshed: now the last to expire
    assert table.expire(13.0) == 3  # s1, s2, s3: deadlines 11, 12, 13
    assert table.lookup(bytes([0]), 16.9) == "s0" and table.lookup(bytes([0]), 17.0) is None
    assert table.lookup(bytes([1]), 5.0) is None
    assert table.forget_server("s4") == 1
    with pytest.raises(ValueError):
        Affinity(0)


# --- Maglev --------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [10, 100])
def test_maglev_disruption_when_a_server_leaves_is_within_one_nth(count):
    servers = [RealServer(a, 8080) for a in addresses(count)]
    leaving = servers[count // 2]
    before = build_table(servers, 65537)
    after = build_table([s for s in servers if s is not leaving], 65537)
    others = [i for i in range(65537) if before.servers[before.slots[i]] is not leaving]
    moved = sum(before.servers[before.slots[i]] is not after.servers[after.slots[i]] for i in others)
    fraction = moved / len(others)
    print(f"maglev, {count} servers, one leaves: {fraction:.4f} of the other flows change server")
    assert 0 < fraction <= 1 / count


def test_maglev_built_in_small_steps_is_the_same_table():
    servers = [RealServer(a, 80, w) for a, w in zip(addresses(7), (1, 2, 3, 1, 5, 1, 2), strict=True)]
    whole = build_table(servers, 1009)
    builder = MaglevBuilder(servers, 1009)
    steps = 0
    while True:
        before = builder.probes
        done = builder.step(50)
        assert builder.probes - before <= 51
        steps += 1
        if done:
            break
    assert steps > 20 and builder.table().slots == whole.slots
    assert list(MaglevBuilder(servers, 1009).steps(50)) and whole.slots == MaglevBuilder(servers, 1009).run().slots


def test_maglev_swaps_a_table_built_in_a_thread_in_whole():
    scheduler = Maglev([RealServer(a, 80) for a in addresses(20)], table_size=10007)
    old = scheduler.table
    scheduler.servers[0].up = False
    scheduler.update(scheduler.servers[0])
    assert scheduler.table is old and scheduler.builder is not None
    builder = scheduler.builder
    results = []
    thread = threading.Thread(target=lambda: results.append(builder.run()))
    thread.start()
    thread.join()
    scheduler.install(results[0])
    assert scheduler.builder is None and scheduler.table is results[0] is not old
    assert scheduler.servers[0] not in scheduler.table.servers and len(scheduler.table.servers) == 19


def test_maglev_work_finishes_a_pending_table_in_bounded_steps():
    balancer = Balancer("web", triples([1] * 50), "maglev", table_size=default_table_size(50))
    balancer.set_up(balancer.servers[0].name, False)
    steps = 1
    while not balancer.work(5000):
        steps += 1
    assert steps > 5 and balancer.scheduler.builder is None
    assert balancer.servers[0] not in balancer.scheduler.table.servers


def test_permutation_and_table_sizes():
    size = 65537
    offset, skip = permutation("203.0.113.21:8080", size)
    assert 0 <= offset < size and 1 <= skip < size
    assert default_table_size(10) == 65537 and default_table_size(1000) == 100003
    assert is_prime(65537) and is_prime(100003) and not is_prime(65539 * 3) and not is_prime(1)
    with pytest.raises(ValueError):
        MaglevBuilder([RealServer("198.51.100.1", 80, 0)], 13)


# --- the same choice everywhere --------------------------------------------------------------

def test_the_stable_hash_never_changes():
    """Nodes of different versions must agree: this number is BLAKE2b's and must stay."""
    assert stable_hash(b"203.0.113.21:8080", OFFSET) == 18300644682987662162


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
def test_two_schedulers_built_apart_pick_the_same(scheduler):
    config = triples([1, 2, 3, 1, 1, 2, 5])
    one = Balancer("web", config, scheduler)
    two = Balancer("web", list(reversed(config)), scheduler)  # another order in the policy
    flow_list = flows()
    assert [one.choose(s, p, 0).name for s, p in flow_list] == [two.choose(s, p, 0).name for s, p in flow_list]


CHILD = """
import hashlib, sys
from tests.test_lb_schedulers import flows, triples
from fw.lb.balancer import Balancer
balancer = Balancer("web", triples([1, 2, 3, 1, 1, 2, 5]), sys.argv[1])
print(hashlib.sha256(" ".join(balancer.choose(s, p, 0).name for s, p in flows()).encode()).hexdigest())
"""


@pytest.mark.parametrize("scheduler", ["sh", "maglev"])
def test_two_processes_with_different_hash_seeds_pick_the_same(scheduler):
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run = subprocess.run([sys.executable, "-c", CHILD, scheduler], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        digests.add(run.stdout.strip())
    here = Balancer("web", triples([1, 2, 3, 1, 1, 2, 5]), scheduler)
    expected = hashlib.sha256(" ".join(here.choose(s, p, 0).name for s, p in flows()).encode()).hexdigest()
    assert digests == {expected}


# --- registry and the rest -------------------------------------------------------------------

def test_registry_names_every_scheduler():
    assert list(SCHEDULERS) == ["rr", "wrr", "lc", "wlc", "sh", "maglev"]
    for name, cls in SCHEDULERS.items():
        assert cls.name == name and make_scheduler(name, []).name == name
    assert {n for n, c in SCHEDULERS.items() if c.consistent} == {"sh", "maglev"}
    with pytest.raises(ValueError, match="unknown scheduler 'fifo'"):
        make_scheduler("fifo")


def test_real_servers():
    assert server_name("2001:db8::21", 80) == "[2001:db8::21]:80"
    server = RealServer("2001:0db8::0021", 80)
    assert server.name == "[2001:db8::21]:80" and server.family == 6 and len(server.packed) == 16
    with pytest.raises(ValueError):
        Balancer("web", [("198.51.100.1", 80, 1), ("198.51.100.1", 80, 2)])
    with pytest.raises(ValueError):
        RealServer("198.51.100.1", 80, -1)
    with pytest.raises(KeyError):
        Balancer("web", triples([1])).drain("198.51.100.7:8080")


def test_the_packet_side_of_the_balancer_does_no_io():
    """Everything in fw/lb but health.py is sans-IO (STYLE.md): the engine will call it."""
    forbidden = {"socket", "time", "logging", "select", "selectors", "threading", "os", "subprocess", "asyncio"}
    for path in sorted((ROOT / "fw/lb").glob("*.py")):
        if path.name == "health.py":
            continue
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert not names & forbidden, (path.name, names & forbidden)


def test_the_bench_prints_its_figures(tmp_path, capsys):
    from bench import lb_bench

    assert lb_bench.main(["--quick", "--json", str(tmp_path / "lb.json")]) == 0
    out = capsys.readouterr().out
    assert "maglev disruption, one of 10 leaves" in out and "pick, maglev, 10 servers" in out
    rows = {row["name"]: row for row in json.loads((tmp_path / "lb.json").read_text())}
    build = rows["maglev build, 100 servers, table 10007"]
    assert build["steps"] > 1 and build["cpu_seconds"] > 0
    disruption = rows["maglev disruption, one of 10 leaves"]
    assert 0 < disruption["other_slots_moved"] <= 0.1 and 0 < disruption["other_flows_moved"] <= 0.1
