"""The sans-IO core imports no I/O, clock, database, queue, CLI or scapy module (STYLE.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ["fw/packet", "fw/conntrack", "fw/policy", "fw/alg", "fw/nat", "fw/engine.py", "fw/decision.py", "fw/events.py"]
FORBIDDEN = {
    "socket", "time", "logging", "sqlalchemy", "netfilterqueue", "click", "scapy", "select",
    "asyncio", "subprocess", "threading", "multiprocessing", "redis", "datetime", "os",
}  # fmt: skip


def core_files():
    for entry in CORE:
        path = ROOT / entry
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("path", list(core_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_io(path):
    bad = sorted(set(imported_modules(path)) & FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_check_sees_the_core():
    files = [p.relative_to(ROOT).as_posix() for p in core_files()]
    assert "fw/engine.py" in files and any(f.startswith("fw/packet/") for f in files)
