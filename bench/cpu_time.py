"""CPU time of the offline engine's two loops, for comparing trees in one sitting (issue 19).

How it works: `python -m bench.cpu_time established|new` runs bench/engine_bench.py's loops with
`time.process_time` (the process's own CPU time, less disturbed by the machine's other work than
the wall clock), best of 3: 200,000 established TCP packets of 1,000 flows after their handshakes,
or 50,000 SYNs opening sessions through a policy of 10 rules, and prints packets/s and us per
packet. To compare an older commit, copy this bench/ into its tree and run it there with
`PYTHONPATH=<tree>`, alternately with this one; `FW_PURE=1` measures the pure-Python build.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench import engine_bench
from fw.decision import Verdicts
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy


def cpu_rate(workload: str, repeat: int = 3) -> tuple[int, float]:
    """(packets, best CPU seconds) of one workload."""
    policy = load_policy(engine_bench.policy_with_rules(10, Path(tempfile.mkdtemp())))
    if workload == "established":
        setup, packets = engine_bench.established_stream(flows=1000, rounds=100)
    else:
        setup = []
        packets = [engine_bench.build.tcp(engine_bench.client_address(i), engine_bench.SERVER, 1024 + i % 60000,
                                          80 if i % 2 else 443, 1000, 0, engine_bench.SYN) for i in range(50000)]
    best = None
    for _ in range(repeat):
        engine = Engine(policy, EngineConfig(events=False))
        engine_bench.timed(engine, setup)
        elapsed = engine_bench.timed(engine, packets, verdicts=Verdicts(), clock=time.process_time)
        best = elapsed if best is None else min(best, elapsed)
    return len(packets), best


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "established"
    if name not in ("established", "new"):
        raise SystemExit("usage: python -m bench.cpu_time established|new")
    count, seconds = cpu_rate(name)
    print(f"{name}: {count / seconds:,.0f}/s ({seconds / count * 1e6:.2f} us)")
