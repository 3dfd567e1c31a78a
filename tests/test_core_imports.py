"""The sans-IO core imports no I/O, clock, database, queue, CLI or scapy module (STYLE.md), and none
of fw's own drivers, store, sync, CLI or daemon: the core is what they are built on, never the reverse.
Imports are compared by their full dotted name (`fw.drivers.offload`, `from fw import store`)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ["fw/packet", "fw/conntrack", "fw/policy", "fw/alg", "fw/nat", "fw/engine*.py", "fw/decision.py",
        "fw/events.py"]
FORBIDDEN = {
    "socket", "time", "logging", "sqlalchemy", "netfilterqueue", "click", "scapy", "select",
    "asyncio", "subprocess", "threading", "multiprocessing", "redis", "datetime", "os",
}  # fmt: skip
FORBIDDEN_FW = ("fw.drivers", "fw.store", "fw.sync", "fw.cli", "fw.daemon", "fw.workers", "fw.records",
                "fw.metrics", "fw.lab")  # fmt: skip


def core_files():
    for entry in CORE:
        if "*" in entry:
            yield from sorted(ROOT.glob(entry))
            continue
        path = ROOT / entry
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imported_modules(source: str, package: str):
    """Every module a source imports, by its full dotted name (relative imports resolved from
    `package`; `from A import b` yields A and A.b, since b may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def offences(source: str, package: str) -> list[str]:
    bad = set()
    for name in imported_modules(source, package):
        if name.split(".")[0] in FORBIDDEN or any(name == f or name.startswith(f + ".") for f in FORBIDDEN_FW):
            bad.add(name)
    return sorted(bad)


def package_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


@pytest.mark.parametrize("path", list(core_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_io_and_no_driver(path):
    bad = offences(path.read_text(), package_of(path))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_check_sees_the_core():
    files = [p.relative_to(ROOT).as_posix() for p in core_files()]
    assert "fw/engine.py" in files and any(f.startswith("fw/packet/") for f in files)
    assert "fw/conntrack/expect.py" in files and "fw/alg/tftp.py" in files


@pytest.mark.parametrize("source", [
    "import fw.drivers.offload", "from fw.drivers.offload import OffloadService", "from fw import store",
    "from fw.sync import tracker", "import fw.cli", "from ..drivers import effects", "from .. import daemon",
    "import time", "from socket import socket",
])
def test_the_check_catches_a_driver_store_sync_cli_or_io_import(source):
    assert offences(source, "fw.conntrack"), source


@pytest.mark.parametrize("source", [
    "from fw.conntrack import table", "from fw.decision import Decision", "import fw.packet.build",
    "from . import serial", "from fw.alg.base import AlgSpec",
])
def test_the_check_lets_core_imports_be(source):
    assert offences(source, "fw.conntrack") == [], source
