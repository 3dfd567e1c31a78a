"""The mypyc build of the hot modules (scripts/build_compiled.py) and the FW_PURE switch.

With FW_PURE=1 the .py sources run even where extensions are built; without it the extensions run
when built (`make compiled`; skipped when they are not). The rest of the suite runs against
whichever is imported: CI runs it twice, built and with FW_PURE=1 (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fw

ROOT = Path(__file__).resolve().parent.parent
SHOW = "import json, fw, fw.engine; print(json.dumps(fw.compiled_modules()))"


def compiled_in_child(pure: bool) -> list[str]:
    env = {**os.environ, "FW_PURE": "1" if pure else ""}
    done = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=True)
    return json.loads(done.stdout)


def built() -> bool:
    return all(list((ROOT / (name.replace(".", "/"))).parent.glob(name.rpartition(".")[2] + ".*.so"))
               for name in fw.COMPILED)


def test_fw_pure_runs_the_sources_even_where_extensions_are_built():
    assert compiled_in_child(pure=True) == []


@pytest.mark.skipif(not built(), reason="the mypyc extensions are not built (make compiled)")
def test_built_extensions_are_what_runs_without_fw_pure():
    assert compiled_in_child(pure=False) == list(fw.COMPILED)
