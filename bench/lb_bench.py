"""`python -m bench.lb_bench`: the load balancer's offline figures (fw/lb), printed and as JSON.

- Maglev table build at 1,000 real servers, table sizes 65,537 and 100,003 (SPEC's rule: a prime
  >= 100 x the real servers), whole; then the same in steps of `DEFAULT_BUDGET` probes as the daemon
  will run it between packets: how many steps, and the longest one (the pause a packet may see).
- Disruption: when one of N real servers leaves, the fraction of the other flows that change server
  (Maglev promises about 1/N at most; ideally 0), over the whole hash space (every slot) and over
  100,000 random flows.
- The cost of one pick, for every scheduler, at 100 real servers.
- Through the engine (`python -m bench` shows these in its table): new sessions per second to a
  maglev virtual server of 100 real servers beside new sessions without a virtual server, the same
  SYNs, alternately in one process (`bench_balanced_new_sessions`); the worst turn of a packet loop
  (a batch of established packets, then one slice of the table being built, as fw.daemon runs it)
  while a 1,000-server table is rebuilt after a server went down, beside the worst turn without a
  rebuild (`bench_rebuild_latency`).
Times are CPU time of this process (the machine's cores are shared: wall clock would count the
waits for a core), but the whole build's wall clock is given too; the disruption fractions are exact.
`--quick` is a smoke test (small tables); `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

from fw.decision import Verdicts
from fw.engine import Engine, EngineConfig
from fw.lb.balancer import Balancer
from fw.lb.maglev import DEFAULT_BUDGET, MaglevBuilder, build_table, default_table_size
from fw.lb.schedulers import SCHEDULERS
from fw.lb.servers import RealServer


def real_servers(count: int, weights=None) -> list[RealServer]:
    weights = weights or [1] * count
    return [RealServer(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8080, weights[i]) for i in range(count)]


def bench_build(servers: int, size: int, budget: int = DEFAULT_BUDGET) -> dict:
    """Whole build time, then the stepped build's step count and longest step."""
    members = real_servers(servers)
    started, cpu = time.perf_counter(), time.process_time()
    build_table(members, size)
    whole, whole_cpu = time.perf_counter() - started, time.process_time() - cpu
    builder = MaglevBuilder(members, size)
    longest, steps = 0.0, 0
    while True:
        cpu = time.process_time()
        done = builder.step(budget)
        longest = max(longest, time.process_time() - cpu)
        steps += 1
        if done:
            break
    return {"name": f"maglev build, {servers} servers, table {size}", "seconds": round(whole, 3),
            "cpu_seconds": round(whole_cpu, 3), "steps": steps, "budget": budget,
            "longest_step_cpu_ms": round(longest * 1000, 2)}


def bench_disruption(servers: int, flows: int = 100_000, seed: int = 1) -> dict:
    """One server of `servers` leaves: the share of the others' slots and flows that move."""
    members = real_servers(servers)
    size = default_table_size(servers)
    leaving = members[servers // 2]
    before = build_table(members, size)
    after = build_table([s for s in members if s is not leaving], size)
    names_before = [before.servers[i].name for i in before.slots]
    names_after = [after.servers[i].name for i in after.slots]
    others = [i for i in range(size) if names_before[i] != leaving.name]
    slot_fraction = sum(names_before[i] != names_after[i] for i in others) / len(others)
    balancer, rng = Balancer("bench", [(s.address, s.port, 1) for s in members], "maglev"), random.Random(seed)
    sample = [(rng.randbytes(4), rng.randrange(1024, 65536)) for _ in range(flows)]
    first = [balancer.choose(src, sport, 0).name for src, sport in sample]
    balancer.set_up(leaving.name, False)
    balancer.work(1 << 30)
    second = [balancer.choose(src, sport, 0).name for src, sport in sample]
    stayed = [(a, b) for a, b in zip(first, second, strict=True) if a != leaving.name]
    flow_fraction = sum(a != b for a, b in stayed) / len(stayed)
    return {"name": f"maglev disruption, one of {servers} leaves", "servers": servers, "table": size,
            "other_slots_moved": round(slot_fraction, 5), "other_flows_moved": round(flow_fraction, 5),
            "one_over_n": round(1 / servers, 5)}


def bench_pick(scheduler: str, servers: int = 100, picks: int = 20_000) -> dict:
    members = real_servers(servers)
    balancer = Balancer("bench", [(s.address, s.port, 1 + i % 4) for i, s in enumerate(members)], scheduler)
    rng = random.Random(2)
    sample = [(rng.randbytes(4), rng.randrange(1024, 65536)) for _ in range(picks)]
    started = time.process_time()
    for src, sport in sample:
        balancer.opened(balancer.choose(src, sport, 0.0))
    elapsed = time.process_time() - started
    return {"name": f"pick, {scheduler}, {servers} servers", "us_per_pick": round(elapsed / picks * 1e6, 2)}


def vs_policy(servers: int, folder: Path, port: int = 80) -> Path:
    """engine_bench's 10-rule policy plus a maglev virtual server at its server's address and `port`."""
    from bench.engine_bench import SERVER, policy_with_rules  # noqa: PLC0415

    members = "\n".join(f"      - {{address: {s.address}, port: 8080}}" for s in real_servers(servers))
    extra = (f"virtual_servers:\n  - name: web\n    address: {SERVER}\n    proto: tcp\n    port: {port}\n"
             f"    scheduler: maglev\n    real_servers:\n{members}\n")
    return policy_with_rules(10, folder, extra)


def bench_balanced_new_sessions(servers: int = 100, sessions: int = 20_000, rounds: int = 2) -> dict:
    """New sessions/s (CPU time) to a maglev virtual server and to the same address without one."""
    from bench.engine_bench import SERVER, SYN, _rate, client_address, policy_with_rules, timed  # noqa: PLC0415
    from fw.packet import build  # noqa: PLC0415
    from fw.policy import load_policy  # noqa: PLC0415

    syns = [build.tcp(client_address(i), SERVER, 1024 + i % 60000, 80, 1000, 0, SYN) for i in range(sessions)]
    cases = {"new sessions, no virtual server": load_policy(policy_with_rules(10, Path(mkdtemp()))),
             f"new sessions, maglev virtual server, {servers} real servers": load_policy(vs_policy(servers,
                                                                                                   Path(mkdtemp())))}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, policy in cases.items():
            engine = Engine(policy, EngineConfig(events=False))
            verdicts = Verdicts()
            elapsed = timed(engine, syns, verdicts=verdicts, clock=time.process_time)
            assert verdicts.accepted["rule:web"] == sessions, f"{name}: not every SYN was accepted"
            best[name] = min(best.get(name, elapsed), elapsed)
    plain, balanced = (_rate(name, sessions, best[name]) for name in cases)
    return {"plain": plain, "balanced": balanced,
            "ratio": round(balanced["packets_per_second"] / plain["packets_per_second"], 3)}


def bench_rebuild_latency(servers: int = 1000, batch: int = 64, budget: int = DEFAULT_BUDGET) -> dict:
    """The worst turn (CPU ms) of a packet loop (a batch of established packets, then one slice of
    pending table work) while a `servers`-server Maglev table is rebuilt, and without a rebuild."""
    from bench.engine_bench import established_stream, timed  # noqa: PLC0415
    from fw.policy import load_policy  # noqa: PLC0415

    engine = Engine(load_policy(vs_policy(servers, Path(mkdtemp()), port=443)), EngineConfig(events=False))
    setup, traffic = established_stream(200, 50)  # to port 80: sessions of the rules, the loop's packets
    verdicts = Verdicts()
    timed(engine, setup, verdicts=verdicts)
    assert verdicts.accepted["rule:web"] == 200, "the loop's sessions did not open"
    lb = engine.nat.lb

    def loop(turns: int | None) -> tuple[float, int]:
        worst, count, position = 0.0, 0, 0
        while turns is None or count < turns:
            started = time.process_time()
            timed(engine, traffic[position:position + batch])
            more = not lb.work(budget)
            worst = max(worst, time.process_time() - started)
            position = (position + batch) % (len(traffic) - batch)
            count += 1
            if turns is None and not more:
                break
        return worst, count

    quiet, _ = loop(200)
    build_started = time.process_time()
    lb.apply(_Change(("web", real_servers(servers)[servers // 2].name)))
    during, turns = loop(None)
    return {"name": f"packet loop during a maglev rebuild, {servers} servers", "batch": batch, "budget": budget,
            "worst_turn_cpu_ms": round(during * 1000, 2), "worst_turn_without_rebuild_cpu_ms": round(quiet * 1000, 2),
            "turns": turns, "rebuild_cpu_seconds": round(time.process_time() - build_started, 3)}


class _Change:
    """A health checker's change (fw.lb.health.HealthChange's fields): the server went down."""

    def __init__(self, key):
        self.server, self.old, self.new, self.why = key, "up", "down", "bench"


def run(quick: bool = False) -> list[dict]:
    rows = []
    if quick:
        rows.append(bench_build(100, 10007))
        rows.append(bench_disruption(10, flows=5000))
        rows.extend(bench_pick(name, servers=10, picks=1000) for name in SCHEDULERS)
        return rows
    rows.append(bench_build(1000, 65537))
    rows.append(bench_build(1000, default_table_size(1000)))
    rows.extend(bench_disruption(count) for count in (10, 100, 1000))
    rows.extend(bench_pick(name) for name in SCHEDULERS)
    return rows


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        figures = ", ".join(f"{key} {value}" for key, value in row.items() if key != "name")
        print(f"{row['name']:48} {figures}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small tables only (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
