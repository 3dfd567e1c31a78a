"""Policies: load and check a YAML policy, then find the first rule matching a new session.

How it works: `load_policy(path)` reads one file or a folder's `*.yaml` files (source.py), merges
them and checks every value (build.py, rules.py, fields.py), collecting every error with its place
(diagnostics.py); it returns a `Policy` (model.py) or raises one `PolicyError` listing them all.
`Policy.match(pkt, iif, oif)` finds the first matching rule through an index by protocol, port and
address (index.py); `Policy.timeouts_for(rule, pkt, builtin)` resolves a session's timeouts.
The vocabulary (keys, options, timeout names) is data in schema.py.
"""

from __future__ import annotations

from pathlib import Path

from fw.policy.build import build
from fw.policy.diagnostics import ERROR, WARNING, Diagnostic, PolicyError
from fw.policy.model import Policy, Rule, TimeoutOverride
from fw.policy.schema import OPTIONS, TIMEOUT_KEYS
from fw.policy.source import merge, read_sources

__all__ = [
    "ERROR", "OPTIONS", "TIMEOUT_KEYS", "WARNING", "Diagnostic", "Policy", "PolicyError", "Rule",
    "TimeoutOverride", "load_policy", "load_policy_sources",
]


def load_policy(path: str | Path) -> Policy:
    """The policy in a YAML file or a folder of them; PolicyError lists every error found."""
    sink: list[Diagnostic] = []
    sources = read_sources(path, sink)
    if sink:
        raise PolicyError(sink)
    return load_policy_sources(sources, name=str(path))


def load_policy_sources(sources, name: str = "policy") -> Policy:
    """The policy in (file name, text) pairs, merged in the order given (as a folder's files).

    The store keeps policies this way; `name` stands for the whole in whole-policy errors.
    """
    sink: list[Diagnostic] = []
    merged = merge(list(sources), sink)
    policy = build(merged, name, sink)
    if policy is None:
        file_order = {rep.file: i for i, rep in enumerate(merged.reporters)}
        ordered = sorted(sink, key=lambda d: d.sort_key(file_order))
        raise PolicyError([d for d in ordered if d.severity == ERROR],
                          [d for d in ordered if d.severity != ERROR])
    return policy
