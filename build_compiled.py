"""Compile fw's hot modules with Cython, in place: `python build_compiled.py` (`make install` runs it).

How it works: each module in COMPILED is an ordinary Python module (it runs and is tested as it
is); Cython compiles it, with the types of a `.pxd` file beside it where there is one, into an
extension module next to the `.py` (fw/packet/parse.cpython-311-x86_64-linux-gnu.so beside
fw/packet/parse.py). Python's import system prefers the extension module, so the compiled build is
the one that runs. `FW_PURE=1` in the environment makes `import fw` skip them (fw/__init__.py), so
the same checkout runs and tests the pure-Python modules too (`make test-pure`).

A module that fails to compile is reported and left pure (a machine without a C compiler still
runs fw); `--strict` makes that an error (CI). `--clean` removes the extension modules.
The generated C sources go to build/cython/, the objects to build/temp/ and build/lib/ (not
committed); each module is then moved into place with os.replace, so a running fw keeps the file it
loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# The modules compiled, by path (the packet path's hot modules; docs/performance.md says what each gives).
COMPILED: list[str] = [
    "fw/packet/parse.py",
    "fw/conntrack/table.py",
    "fw/conntrack/tcp.py",
    "fw/engine.py",
    "fw/engine_trackers.py",  # UDP's established path (fw/engine_trackers.pxd)
    "fw/decision.py",
    "fw/policy/index.py",
    "fw/policy/model.py",
    "fw/nat/rewrite.py",  # NAT (fw/nat/rewrite.pxd, fw/engine_nat.pxd: Translation, Binding)
    "fw/engine_nat.py",
    "fw/nat/ports.py",
    "fw/packet/checksum.py",
    "fw/engine_lb.py",  # the load balancer's new-session path and Maglev's table build
    "fw/lb/balancer.py",
    "fw/lb/schedulers.py",
    "fw/lb/hashing.py",
    "fw/lb/servers.py",
    "fw/lb/maglev.py",
    "fw/drivers/nfqueue.py",
    "fw/drivers/nfqueue_socket.py",
    "fw/rule_counters.py",  # fw run's per-packet observe hook (fw.records)
    "fw/drivers/nat_queue.py",  # the NAT daemon's handler (fw/drivers/nat_queue.pxd), its route cache
    "fw/drivers/routes.py",
    "fw/engine_nat_passes.py",  # the live NAT passes around Engine.process
]


def extension_files() -> list[Path]:
    """The extension modules built beside COMPILED's sources (whatever their ABI tag)."""
    found = []
    for source in COMPILED:
        path = ROOT / source
        found.extend(path.parent.glob(path.stem + ".*.so"))
    return found


def clean() -> int:
    for path in extension_files():
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


def _build(sources: list[str]) -> None:
    """Compile `sources` into build/lib, then move each extension module beside its source with
    os.replace: a process that has the old one loaded keeps its file (no rewrite in place)."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    # Named by path: a folder without __init__.py (fw/drivers) would make it a top-level module.
    extensions = [Extension(source.removesuffix(".py").replace("/", "."), [source]) for source in sources]
    modules = cythonize(extensions, build_dir="build/cython", quiet=True, nthreads=os.cpu_count() or 1,
                        compiler_directives={"language_level": 3})
    dist = Distribution({"ext_modules": modules, "script_args": [
        "-q", "build_ext", "--build-lib", "build/lib", "--build-temp", "build/temp",
        "--parallel", str(os.cpu_count() or 1)]})
    dist.parse_command_line()
    dist.run_commands()
    command = dist.get_command_obj("build_ext")
    for module in modules:
        built = Path(command.get_ext_fullpath(module.name))
        os.replace(built, ROOT / built.relative_to(command.build_lib))


def build(strict: bool) -> int:
    """Cythonize and build COMPILED; if that fails, module by module: a failure leaves that module
    pure (or fails with --strict)."""
    try:
        import Cython  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as error:
        print(f"build_compiled: {error}: fw stays pure Python", file=sys.stderr)
        return 1 if strict else 0
    failed = []
    try:
        _build(COMPILED)
    except (Exception, SystemExit):  # noqa: BLE001 - find which: one at a time
        for source in COMPILED:
            try:
                _build([source])
            except (Exception, SystemExit) as error:  # noqa: BLE001 - any build failure leaves the module pure
                failed.append(source)
                print(f"build_compiled: {source} not compiled ({error}): it stays pure Python", file=sys.stderr)
    print(f"build_compiled: {len(COMPILED) - len(failed)} of {len(COMPILED)} modules compiled")
    return 1 if failed and strict else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--strict", action="store_true", help="a module that does not compile is an error")
    parser.add_argument("--clean", action="store_true", help="remove the extension modules (fw runs pure)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    return clean() if args.clean else build(args.strict)


if __name__ == "__main__":
    sys.exit(main())
