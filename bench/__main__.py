"""`python -m bench`: run the benchmarks, print a table, write bench/results.json."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from bench import engine_bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--quick", action="store_true", help="smaller runs (for a smoke test)")
    args = parser.parse_args(argv)
    sessions = 10000 if args.quick else 50000
    results = [
        engine_bench.bench_established(repeat=1 if args.quick else 3),
        engine_bench.bench_new_sessions(10, sessions),
        engine_bench.bench_new_sessions(10000, sessions),
        engine_bench.bench_memory(10000 if args.quick else 100000),
    ]
    if not args.quick:
        results.append(engine_bench.bench_memory(1000000))
    ratio = results[2]["us_per_packet"] / results[1]["us_per_packet"]
    summary = {"new_session_cost_10000_vs_10_rules": round(ratio, 2)}
    print_table(results, summary)
    Path(args.output).write_text(
        json.dumps({"python": platform.python_version(), "results": results, "ratios": summary}, indent=2)
    )
    print(f"written: {args.output}")
    return 0


def print_table(results: list[dict], ratios: dict) -> None:
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
