"""`pip install .` gives a working `fw`: the wheel's contents, a fresh venv, `fw --version`, completion.

The wheel is built from a copy of what the distribution is made of (pyproject.toml, README.md, fw/),
so the build writes nothing into the checkout. It goes into a fresh venv made by
scripts/install-venv.sh (the script `make install` and the fw VM use) with --no-deps; the
dependencies come from this venv through a .pth path line (so no download or C build here), and
their versions must be the pins. Shell completion is click's: `_FW_COMPLETE=bash_source fw`, checked
by completing words in a real bash.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

import fw
from tests.test_deploy import REPO, need, run

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEPENDENCIES = PYPROJECT["project"]["dependencies"]  # pins: "click==8.5.1"
DEV_DEPENDENCIES = PYPROJECT["project"]["optional-dependencies"]["dev"]


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def modules_of(distribution: str) -> list[str]:
    """The top-level modules an installed distribution provides ("PyYAML" -> ["_yaml", "yaml"])."""
    return sorted(module for module, owners in metadata.packages_distributions().items()
                  if normalized(distribution) in map(normalized, owners) and not module.startswith("_"))


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files of fw/ that import it, for modules outside the standard library."""
    found: dict[str, set[str]] = {}
    for name in package_files():
        if name.endswith(".py"):
            tree = ast.parse((REPO / name).read_text())
            optional = {id(inner) for node in ast.walk(tree)
                        if isinstance(node, ast.Try) and _catches_import_error(node)
                        for statement in node.body for inner in ast.walk(statement)}
            for node in ast.walk(tree):
                if id(node) in optional:  # `try: import cython` / `except ImportError:` a fallback
                    continue
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in (module.split(".")[0] for module in modules):
                    if module not in sys.stdlib_module_names and module != "fw":
                        found.setdefault(module, set()).add(name)
    return found


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    for handler in node.handlers:
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(kind, ast.Name) and kind.id in names for kind in caught):
            return True
    return False


def package_files() -> list[str]:
    """The files of the fw package that git tracks (work in progress of others aside)."""
    done = run(["git", "ls-files", "fw"], cwd=REPO)
    if done.returncode != 0:
        return sorted(str(p.relative_to(REPO)) for p in (REPO / "fw").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
    return sorted(done.stdout.split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    for name in package_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source], timeout=300)
    assert done.returncode == 0, done.stderr
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed by scripts/install-venv.sh, dependencies from this venv."""
    path = tmp_path_factory.mktemp("venv") / "fw"
    done = run([REPO / "scripts" / "install-venv.sh", path, "--no-deps", wheel], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [site] = path.glob("lib/python*/site-packages")
    (site / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def wheel_metadata(wheel: Path) -> tuple[list[str], object, str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        return names, Parser().parsestr(archive.read(info).decode()), archive.read(entry_points).decode()


def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    names, _, _ = wheel_metadata(wheel)
    # The .pxd files type the in-place compiled build (build_compiled.py); the wheel is the pure one
    # and nothing reads them at run time.
    missing = [name for name in package_files() if name not in names and not name.endswith(".pxd")]
    assert missing == [], "package data the wheel lacks (pyproject: [tool.setuptools.package-data])"


def test_the_wheel_declares_name_command_and_pinned_dependencies(wheel: Path) -> None:
    _, info, entry_points = wheel_metadata(wheel)
    assert (info["Name"], info["Version"], info["Requires-Python"]) == ("spi-fw", fw.__version__, ">=3.11")
    requires = info.get_all("Requires-Dist")
    assert sorted(r for r in requires if "extra ==" not in r) == sorted(DEPENDENCIES)
    assert sorted(r.split(";")[0] for r in requires if 'extra == "dev"' in r) == sorted(DEV_DEPENDENCIES)
    assert "[console_scripts]\nfw = fw.cli:main" in entry_points


def test_installed_fw_runs_from_its_venv(venv: Path, tmp_path: Path) -> None:
    done = run([venv / "bin" / "fw", "--version"], cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"fw, version {fw.__version__}\n")
    located = run([venv / "bin" / "python", "-c", "import fw; print(fw.__file__)"], cwd=tmp_path)
    assert located.stdout.strip().startswith(str(venv / "lib")), located.stdout  # not this checkout
    module = run([venv / "bin" / "python", "-m", "fw", "--version"], cwd=tmp_path)
    assert module.stdout == done.stdout
    policy = run([venv / "bin" / "fw", "policy", "check", REPO / "policies" / "lab.yaml"], cwd=tmp_path)
    assert policy.returncode == 0, policy.stderr


def test_every_module_fw_imports_comes_with_a_declared_dependency() -> None:
    declared = {normalized(requirement.partition("==")[0]) for requirement in DEPENDENCIES}
    owners = metadata.packages_distributions()
    undeclared = {module: sorted(files) for module, files in third_party_imports().items()
                  if not declared & set(map(normalized, owners.get(module, [module])))}
    assert undeclared == {}, "imported by fw but not in pyproject's dependencies"


def test_dependencies_are_the_pinned_versions_and_import(venv: Path, tmp_path: Path) -> None:
    for requirement in DEPENDENCIES:
        name, _, version = requirement.partition("==")
        name = name.split("[")[0]  # "psycopg[binary]" -> "psycopg"
        assert metadata.version(name) == version, requirement
        for module in modules_of(name):
            done = run([venv / "bin" / "python", "-c", f"import {module}"], cwd=tmp_path)
            assert done.returncode == 0, f"{module}: {done.stderr}"


# -- shell completion ---------------------------------------------------------------------------------


def complete(venv: Path, line: str) -> list[str]:
    """What bash offers after `line` once `eval "$(_FW_COMPLETE=bash_source fw)"` (docs/deploy.md)."""
    need("bash")
    words = line.split(" ")
    script = (f'eval "$(_FW_COMPLETE=bash_source fw)"\n'
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              '_fw_completion fw; printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completes_commands_and_options(venv: Path) -> None:
    assert complete(venv, "fw po") == ["policy"]
    assert complete(venv, "fw policy ch") == ["check"]
    assert "--json" in complete(venv, "fw replay x.pcap --")
    assert complete(venv, "fw nosuch") == []


@pytest.mark.parametrize(("shell", "marker"), [("zsh", "#compdef fw"), ("fish", "complete --no-files --command fw")])
def test_other_shells_get_a_completion_script(venv: Path, shell: str, marker: str) -> None:
    done = run([venv / "bin" / "fw"], env={"_FW_COMPLETE": f"{shell}_source", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and marker in done.stdout
