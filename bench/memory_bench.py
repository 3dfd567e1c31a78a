"""Memory per session for large tables, by the process's resident size (tracemalloc is too slow there).

How it works: in a child process (so that freed memory of earlier benchmarks does not hide the
growth), open N established TCP sessions through the engine and divide the growth of the resident
set (/proc/self/statm) by N. It counts what the allocator took from the system, so it is a little
above tracemalloc's figure for the same table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import gc, json, os, sys, tempfile
from pathlib import Path
from bench.engine_bench import handshake, client_address, policy_with_rules
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

sessions = int(sys.argv[1])
path = policy_with_rules(10, Path(tempfile.mkdtemp()))
path.write_text(path.read_text() + "options: {max_sessions: %d}\n" % (2 * sessions))  # no eviction
engine = Engine(load_policy(path), EngineConfig(events=False))
gc.collect()
gc.disable()
before = resident()
for i in range(sessions):
    for data in handshake(client_address(i), 1024 + i // 250):
        engine.process(data, 1000.0)
after = resident()
print(json.dumps({"sessions": len(engine.table), "bytes": after - before}))
"""


def bench_memory_resident(sessions: int) -> dict:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CHILD, str(sessions)], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    result = json.loads(done.stdout)
    return {"name": f"memory per session, {result['sessions']} sessions (resident)",
            "sessions": result["sessions"], "bytes_per_session": round(result["bytes"] / max(result["sessions"], 1))}


if __name__ == "__main__":
    print(bench_memory_resident(int(sys.argv[1]) if len(sys.argv) > 1 else 100000))
