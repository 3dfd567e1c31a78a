"""NAT port slices for active/active HA: nodes translating to one address never pick the same port.

How it works: a translation's port range `first..last` is cut into `count` slices of equal size
(the last one also takes the remainder); node `index` draws its ports from slice `index` only.
`slice_index(node, count)` takes the index from the node id's trailing number, counted from 1
(`fw1` -> 0, `fw2` -> 1, `edge-07` -> 6), so that it is stable across restarts and failovers and
needs no coordination; ValueError for a node id without one, or one beyond `count`. Pure.
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


def port_slice(first: int, last: int, index: int, count: int) -> tuple[int, int]:
    """(low, high), inclusive: slice `index` of `count` of the ports first..last."""
    if not 0 <= first <= last <= 65535:
        raise ValueError(f"port range {first}-{last}")
    size = (last - first + 1) // count
    if not 0 <= index < count or size < 1:
        raise ValueError(f"slice {index} of {count} in {first}-{last}: fewer ports than slices, or no such slice")
    low = first + index * size
    return low, last if index == count - 1 else low + size - 1
