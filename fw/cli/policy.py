"""`fw policy ...`: check a policy file or folder (later: revisions in the store).

Each command calls one library function (fw.policy.load_policy) and turns its result into output:
errors and warnings on stderr in SPEC's located format, exit status 2 when the policy is invalid.
"""

from __future__ import annotations

import json
import sys

import click

EXIT_INVALID = 2


@click.group("policy")
def policy() -> None:
    """Policies: validate a policy file, or a folder of them.

    Example: fw policy check policies/lab.yaml
    """


@policy.command("check")
@click.argument("path", type=click.Path(dir_okay=True, file_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the result and diagnostics as JSON.")
def check(path: str, as_json: bool) -> None:
    """Validate a policy file, or a folder of *.yaml files merged in name order.

    Prints a one-line summary and exits 0, or prints every error (file:line:col, the source line
    and a caret) on stderr and exits 2. Warnings, such as a shadowed rule, go to stderr too and do
    not change the exit status.

    Example: fw policy check policies/lab.yaml
    """
    from fw.policy import PolicyError, load_policy

    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        _report(path, None, exc.diagnostics + exc.warnings, as_json)
        sys.exit(EXIT_INVALID)
    _report(path, loaded, list(loaded.warnings), as_json)


def _report(path: str, loaded, diagnostics: list, as_json: bool) -> None:
    if as_json:
        result = {"path": path, "valid": loaded is not None,
                  "diagnostics": [d.to_dict() for d in diagnostics]}
        if loaded is not None:
            result.update(revision=loaded.revision, rules=len(loaded.rules), sets=len(loaded.sets))
        click.echo(json.dumps(result, indent=2))
        return
    for diagnostic in diagnostics:
        click.echo(diagnostic.format(), err=True)
    if loaded is not None:
        click.echo(f"{path}: ok, {loaded.summary()}")
    else:
        errors = sum(d.is_error for d in diagnostics)
        click.echo(f"{path}: {errors} error{'s' if errors != 1 else ''}", err=True)
