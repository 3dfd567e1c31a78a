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
