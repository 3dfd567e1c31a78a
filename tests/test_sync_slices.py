"""NAT port slices for active/active HA: the slice index from the node id, and the pools of two
nodes (fw.nat.ports) never handing out the same port."""

from __future__ import annotations

import pytest

from fw.nat.ports import node_slice
from fw.sync.slices import slice_index


def test_the_index_comes_from_the_node_ids_trailing_number():
    assert [slice_index(node, 8) for node in ("fw1", "fw2", "edge-07", "a.b:8")] == [0, 1, 6, 7]


@pytest.mark.parametrize("node, count", [("fw", 2), ("fw3", 2), ("fw0", 2), ("fw1a", 2)])
def test_node_ids_that_give_no_slice_are_refused(node, count):
    with pytest.raises(ValueError, match="node id"):
        slice_index(node, count)


def test_two_nodes_take_disjoint_halves_of_the_range():
    fw1, fw2 = (node_slice((1024, 65535), slice_index(node, 2), 2) for node in ("fw1", "fw2"))
    assert fw1 == (1024, 33279) and fw2 == (33280, 65535)
