"""Every `fw` command has help with an example and is documented in the README (STYLE.md section 3)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fw.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def walk(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


COMMANDS = list(walk(main))


def test_the_walk_finds_the_commands():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "replay", "policy check", "sessions", "stats", "reload", "cleanup", "lab up"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_has_help_with_an_example(path, command):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert (command.help or "").strip(), f"fw {' '.join(path)} has no help text"
    if not isinstance(command, click.Group):
        assert "Example" in command.help, f"fw {' '.join(path)}: its help has no Example"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_is_in_the_readme(path):
    assert f"fw {' '.join(path)}" in README, f"README does not mention `fw {' '.join(path)}`"


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("fw, version ")


def test_bad_usage_is_one_line_and_exit_2():
    result = CliRunner().invoke(main, ["replay"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
