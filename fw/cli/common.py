"""What several commands share: loading a policy with every error printed and exit status 2."""

from __future__ import annotations

import sys

import click


def load_policy_or_exit(path: str):
    """The policy at `path`; on errors print each one (SPEC's format) to stderr and exit 2."""
    from fw.policy import PolicyError, load_policy

    try:
        policy = load_policy(path)
    except PolicyError as error:
        for diagnostic in error.diagnostics:
            click.echo(diagnostic.format(), err=True)
        sys.exit(2)
    for warning in getattr(policy, "warnings", ()):
        click.echo(warning.format(), err=True)
    return policy


class Failure(click.ClickException):
    """One line on stderr and SPEC's exit status (1 runtime failure, 2 bad usage)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def ask(request: dict) -> dict:
    """The answer of this namespace's daemon to `request`; its errors as a Failure."""
    from fw.drivers.control import ControlError, call

    try:
        return call(request)
    except ControlError as error:
        raise Failure(str(error), error.exit_code) from None


def styled(text: str, **style) -> str:
    """`text` in colour on a terminal that shows colours; plain where stdout is not a TTY (or NO_COLOR)."""
    import os

    if not sys.stdout.isatty() or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return text
    return click.style(text, **style)


def parse_time(text: str, now: float | None = None) -> float:
    """`30s`, `10m`, `2h`, `7d`, `1w` ago, or an ISO 8601 date/time (local time unless it has a
    zone); wall-clock seconds. ValueError if it is neither."""
    import datetime
    import re
    import time

    now = time.time() if now is None else now
    match = re.match(r"^(\d+(?:\.\d+)?)([smhdw])$", text.strip())
    if match:
        return now - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    moment = datetime.datetime.fromisoformat(text.strip())
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()
