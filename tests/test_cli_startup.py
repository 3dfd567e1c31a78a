"""`fw --version`, `fw --help`, `fw sessions`, `fw stats` and `fw events` start without the heavy modules.

Every command imports what it uses when it runs: the store (SQLAlchemy, Alembic), scapy (replay),
textual (top), prometheus-client, PyYAML and the engine load only for the commands that need them.
Counted by the modules a fresh interpreter has after running the command (not by wall time, which
varies with the machine's load). `fw sessions` and `fw stats` run here without a daemon: they get as
far as the control socket, which is all they import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LAB_POLICY = str(Path(__file__).resolve().parent.parent / "policies" / "lab.yaml")

HEAVY = {"sqlalchemy", "alembic", "scapy", "textual", "rich", "prometheus_client", "yaml", "netfilterqueue",
         "redis", "psycopg", "matplotlib"}
LIGHT_FW = {"fw", "fw.cli", "fw.cli.commands", "fw.cli.common", "fw.cli.daemon", "fw.cli.events", "fw.cli.lab",
            "fw.cli.lb", "fw.cli.policy", "fw.cli.replay", "fw.cli.sessions", "fw.cli.store", "fw.cli.top",
            "fw.drivers", "fw.drivers.control", "fw.drivers.iptables",
            # the protocol-name table (fw.packet.constants) loads the package: plain struct code, ~7 ms
            "fw.packet", "fw.packet.build", "fw.packet.checksum", "fw.packet.constants", "fw.packet.parse",
            "fw.packet.text"}
MAX_MODULES = 200  # about 100 are the interpreter's own; click and the standard modules fw uses, the rest

PROBE = """
import json, sys
sys.argv = ["fw", *json.loads(sys.argv[1])]
from fw.cli import main
try:
    main()
except SystemExit:
    pass
print("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""


def modules_after(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "FW_STATE_DIR": "/nonexistent"})
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES "))
    return json.loads(line[len("MODULES "):])


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("sessions",), ("stats",), ("events",)],
                         ids=" ".join)
def test_the_command_starts_without_heavy_modules(args) -> None:
    modules = modules_after(*args)
    heavy = sorted({name.split(".")[0] for name in modules} & HEAVY)
    assert not heavy, f"fw {' '.join(args)} imports {heavy}"
    extra = sorted(name for name in modules if name.split(".")[0] == "fw" and name not in LIGHT_FW)
    assert not extra, f"fw {' '.join(args)} imports {extra}"
    assert len(modules) <= MAX_MODULES, f"fw {' '.join(args)} imports {len(modules)} modules"


def test_the_probe_sees_what_a_command_loads() -> None:
    """The check can fail: `fw policy check` does load PyYAML and the policy compiler."""
    modules = modules_after("policy", "check", LAB_POLICY)
    assert "yaml" in modules and "fw.policy" in modules
