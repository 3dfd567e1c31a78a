"""The `fw` command line: a click group whose commands live one module per area.

Each command opens what it needs, calls one library function and turns library errors into one
clear line (click.ClickException, exit 1; click.UsageError, exit 2). Commands are added here,
explicitly, not by import side effects.
"""

from __future__ import annotations

import click

from fw import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fw")
def main() -> None:
    """fw: a stateful packet-inspection firewall on NFQUEUE.

    Example: fw policy check policies/lab.yaml
    """


def _add_commands() -> None:
    from fw.cli import commands  # noqa: PLC0415  (keeps `fw --help` importable on its own)

    for command in commands.ALL:
        main.add_command(command)
    for register in commands.REGISTER:
        register(main)


_add_commands()
