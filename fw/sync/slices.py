"""Which NAT port slice a node of an active/active cluster takes, from its node id.

How it works: fw.nat.ports.Pool cuts each translation's port range into `nodes` contiguous slices
and hands out ports from slice `node` only (`node_slice`), so that two nodes translating to the
same address never pick the same port. `slice_index(node_id, count)` is that `node` for a node
id: its trailing number, counted from 1 (`fw1` -> 0, `fw2` -> 1, `edge-07` -> 6), so that it is
stable across restarts and failovers and needs no coordination; ValueError (a message for the
operator) for a node id without one, or one beyond `count`. Pure.
"""

from __future__ import annotations

import re

TRAILING_NUMBER = re.compile(r"(\d+)$")


def slice_index(node: str, count: int) -> int:
    """The slice of node `node` among `count` slices."""
    match = TRAILING_NUMBER.search(node)
    if match is None:
        raise ValueError(f"node id {node!r}: with NAT slices, a node id ends in its number (fw1, fw2, ...)")
    number = int(match.group(1))
    if not 1 <= number <= count:
        raise ValueError(f"node id {node!r}: its number must be 1 to {count} (the number of NAT slices)")
    return number - 1
