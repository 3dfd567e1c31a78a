"""The compiled build (build_compiled.py) and the pure one (FW_PURE=1) import the same modules.

Run in subprocesses, so that this process's imports do not decide: with the extension modules
built, a plain import takes them; with FW_PURE=1 every fw module comes from its `.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import build_compiled

ROOT = Path(__file__).resolve().parent.parent
IMPORT = ("import importlib, json, sys, fw; "
          "[importlib.import_module(m) for m in sys.argv[1:]]; "
          "print(json.dumps({m: sys.modules[m].__file__ for m in sys.argv[1:]}))")


def _files(modules: list[str], pure: bool) -> dict:
    env = dict(os.environ, FW_PURE="1" if pure else "")
    out = subprocess.run([sys.executable, "-c", IMPORT, *modules], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def test_fw_pure_imports_every_module_from_its_source():
    modules = [_module_name(source) for source in build_compiled.COMPILED] or ["fw.packet.parse"]
    for name, path in _files(modules, pure=True).items():
        assert path.endswith(".py"), (name, path)


def test_every_compiled_module_is_built_and_imported_as_such():
    modules = [_module_name(source) for source in build_compiled.COMPILED]
    for name, path in _files(modules, pure=False).items():
        assert not path.endswith(".py"), f"{name} is not compiled: run `python build_compiled.py` (make install)"
