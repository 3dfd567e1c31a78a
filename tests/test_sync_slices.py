"""NAT port slices for active/active HA: disjoint, covering the range, stable from the node id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fw.sync.slices import port_slice, slice_index


def test_two_nodes_split_the_range_in_halves():
    assert port_slice(1024, 65535, slice_index("fw1", 2), 2) == (1024, 33279)
    assert port_slice(1024, 65535, slice_index("fw2", 2), 2) == (33280, 65535)


def test_the_index_comes_from_the_node_ids_trailing_number():
    assert [slice_index(node, 8) for node in ("fw1", "fw2", "edge-07", "a.b:8")] == [0, 1, 6, 7]


@pytest.mark.parametrize("node, count", [("fw", 2), ("fw3", 2), ("fw0", 2), ("fw1a", 2)])
def test_node_ids_that_give_no_slice_are_refused(node, count):
    with pytest.raises(ValueError, match="node id"):
        slice_index(node, count)


@pytest.mark.parametrize("args", [(10, 12, 0, 4), (0, 100, 2, 2), (0, 100, -1, 2), (5, 4, 0, 1), (0, 70000, 0, 1)])
def test_impossible_slices_are_refused(args):
    with pytest.raises(ValueError):
        port_slice(*args)


@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(1, 16))
def test_slices_are_disjoint_and_cover_the_range(a, b, count):
    first, last = min(a, b), max(a, b)
    if last - first + 1 < count:
        return
    slices = [port_slice(first, last, index, count) for index in range(count)]
    assert slices[0][0] == first and slices[-1][1] == last
    assert all(low <= high for low, high in slices)
    assert all(slices[i][1] + 1 == slices[i + 1][0] for i in range(count - 1))  # adjacent: no gap, no overlap
