"""Compile fw's hot modules with mypyc, next to their sources (`make compiled`; `make pure` undoes it).

How it works: mypyc (pinned in pyproject's dev extras) turns each module of MODULES into a C
extension, built in a temporary folder (setuptools would otherwise read this repository's
pyproject.toml) and copied next to the module's .py, where Python's import prefers it. The .py stays
the source and is what runs with FW_PURE=1 (fw/__init__.py) or when nothing is built.
`--clean` removes the built extensions. Prints one line per module.

    .venv/bin/python scripts/build_compiled.py [--clean]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("fw/packet/parse.py", "fw/conntrack/tcp.py")
SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="fw-compiled", ext_modules=mypycify(sys.argv[1:], separate=True, opt_level="3"),
      script_args=["build_ext", "--inplace"])
"""


def built(module: str) -> list[Path]:
    source = ROOT / module
    return sorted(source.parent.glob(f"{source.stem}.*.so")) + sorted(source.parent.glob(f"{source.stem}__mypyc.*.so"))


def clean() -> None:
    for module in MODULES:
        for path in built(module):
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")


def build() -> None:
    clean()
    with tempfile.TemporaryDirectory() as folder:
        sources = [str(ROOT / module) for module in MODULES]
        for module in MODULES:
            (Path(folder) / module).parent.mkdir(parents=True, exist_ok=True)  # where --inplace puts them
        done = subprocess.run([sys.executable, "-c", SETUP, *sources], cwd=folder, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"mypyc failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        for module in MODULES:
            package = Path(module).parent
            for path in sorted((Path(folder) / package).glob(f"{Path(module).stem}*.so")):
                shutil.copy2(path, ROOT / package / path.name)
            print(f"compiled {module}: {', '.join(p.name for p in built(module))}")


if __name__ == "__main__":
    clean() if sys.argv[1:] == ["--clean"] else build()
