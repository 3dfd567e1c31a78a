"""`python -m bench` (`make bench`): run the benchmarks, print a table, write bench/results.json
and, with the live part, its plots (bench/throughput.png, cpu.png, latency.png: bench/plots.py).

Two parts. The offline engine (bench/engine_bench.py: packets already in memory, one core, no
kernel; the load balancer's engine figures from bench/lb_bench.py) always runs. The live lab
(bench/live_bench.py: iperf3, UDP and ping through `fw run`, a bare NFQUEUE loop, kernel forwarding
and kernel conntrack, in namespaces of its own) runs when we are root and the lab tools are there;
otherwise the reason it was skipped is printed and written. `--quick` is the smoke test: small
offline runs, no live part. `--paths NAME...` measures only those live paths (live_bench.PATHS'
names), without the offline part.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench import engine_bench, lb_bench, memory_bench


def offline(quick: bool) -> tuple[list[dict], dict]:
    sessions = 10000 if quick else 50000
    results = [engine_bench.bench_established(repeat=1 if quick else 3)]
    for rules in (10, 1000, 10000):
        results.append(engine_bench.bench_new_sessions(rules, sessions, repeat=1 if quick else 3))
    if quick:
        results.append(engine_bench.bench_memory(10000))
    else:  # tracemalloc makes a million sessions take minutes: the resident size, in a fresh process
        results += [memory_bench.bench_memory_resident(100000), memory_bench.bench_memory_resident(1000000)]
    nat = engine_bench.bench_nat_established(rounds=1 if quick else 5)  # best of five interleaved, as below
    results.append(nat["nat"])
    by_name = {row["name"]: row for row in results}
    ten = by_name["new sessions, 10 rules"]["us_per_packet"]
    ratios = {f"new_session_cost_{n}_vs_10_rules": round(by_name[f"new sessions, {n} rules"]["us_per_packet"] / ten, 2)
              for n in (1000, 10000)}
    ratios["established_nat_vs_plain_same_run"] = nat["ratio"]
    results_lb, ratios_lb = load_balancer(quick)
    return results + results_lb, {**ratios, **ratios_lb}


def load_balancer(quick: bool) -> tuple[list[dict], dict]:
    """bench/lb_bench.py's engine figures: balanced new sessions beside plain ones (same run), the
    Maglev build at 1,000 real servers, the worst packet-loop turn while such a table is rebuilt."""
    servers = 10 if quick else 100
    # the best of five interleaved rounds each (about 1 s in all): two let one slow round decide the ratio
    balanced = lb_bench.bench_balanced_new_sessions(servers, 2000 if quick else 20_000, rounds=1 if quick else 5)
    build = lb_bench.bench_build(100 if quick else 1000, 10007 if quick else 100003)
    rebuild = lb_bench.bench_rebuild_latency(100 if quick else 1000)
    ratios = {"balanced_new_sessions_vs_plain_same_run": balanced["ratio"],
              "maglev_build_servers": 100 if quick else 1000, "maglev_build_cpu_seconds": build["cpu_seconds"],
              "maglev_build_longest_step_cpu_ms": build["longest_step_cpu_ms"],
              "maglev_rebuild_worst_loop_turn_cpu_ms": rebuild["worst_turn_cpu_ms"],
              "loop_worst_turn_without_rebuild_cpu_ms": rebuild["worst_turn_without_rebuild_cpu_ms"]}
    return [balanced["plain"], balanced["balanced"]], ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--quick", action="store_true", help="small offline runs only (a smoke test)")
    parser.add_argument("--offline", action="store_true", help="skip the live lab part")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each live measurement")
    parser.add_argument("--runs", type=int, default=3, help="live runs per path (the median is kept)")
    parser.add_argument("--paths", nargs="+", metavar="NAME",
                        help="only these live paths, without the offline part (quoted: 'fw run, virtual server')")
    args = parser.parse_args(argv)
    if args.paths:
        from bench.live_bench import PATHS  # noqa: PLC0415

        if unknown := [path for path in args.paths if path not in PATHS]:
            parser.error(f"unknown path {unknown[0]!r}; the paths: {'; '.join(PATHS)}")
        if args.quick or args.offline:
            parser.error("--paths measures live paths: not with --quick or --offline")
    started = time.monotonic()
    results, ratios = offline(args.quick) if not args.paths else ([], {})
    if not args.paths:
        print_table(results, ratios)
    document = {"python": platform.python_version(), "machine": platform.machine(),
                "results": results, "ratios": ratios, "live": None, "live_skipped": None}
    if args.quick or args.offline:
        document["live_skipped"] = "--quick" if args.quick else "--offline"
    else:
        from bench import live_bench  # noqa: PLC0415

        reason = live_bench.unavailable_reason()
        if reason:
            document["live_skipped"] = reason
            print(f"live part skipped: {reason}")
        else:
            live = live_bench.run(seconds=args.seconds, runs=args.runs, paths=args.paths or live_bench.PATHS)
            live_bench.print_table(live)
            document["live"] = live
    document["seconds"] = round(time.monotonic() - started, 1)
    Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: {args.output}")
    if document["live"] is not None:
        write_plots(document, Path(args.output).parent)
    return 0


def write_plots(document: dict, out: Path) -> None:
    """The PNGs of bench/plots.py beside the results (`python -m bench.plots FILE` redraws them)."""
    from bench import plots  # noqa: PLC0415  (matplotlib only when there is something to plot)

    try:
        for path in plots.write_plots(document, out):
            print(f"written: {path}")
    except plots.PlotError as error:
        print(f"no plots: {error}")


def print_table(results: list[dict], ratios: dict) -> None:
    sys.stdout.reconfigure(line_buffering=True)
    print("offline engine (one core, no kernel)")
    print(f"{'benchmark':44} {'packets/s':>12} {'us/packet':>10} {'bytes/session':>14}")
    for row in results:
        print(
            f"{row['name']:44} {row.get('packets_per_second', ''):>12} {row.get('us_per_packet', ''):>10} "
            f"{row.get('bytes_per_session', ''):>14}"
        )
    for name, value in ratios.items():
        print(f"ratio {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
