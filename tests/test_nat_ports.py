"""NAT port allocation: kept when free, else the next free upward (wrapping), deterministic, sliced."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fw.nat.ports import Pool, node_slice

TCP, UDP, ICMP = 6, 17, 1
A1, A2, A3 = (ipaddress.ip_address(a).packed for a in ("192.0.2.1", "192.0.2.2", "192.0.2.3"))
CLIENT = ipaddress.ip_address("198.51.100.10").packed
OTHER_CLIENT = ipaddress.ip_address("198.51.100.11").packed


def nothing_taken(address, port):
    return False


def test_the_original_port_is_kept_when_free():
    pool = Pool(4, A1)
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 40000)


def test_a_port_in_use_toward_other_peers_is_kept_when_this_5_tuple_is_free():
    """As Linux: the same translated port may serve two sessions to different peers."""
    pool = Pool(4, A1)
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 40000)
    assert pool.allocate(TCP, OTHER_CLIENT, 40000, nothing_taken) == (A1, 40000)
    pool.release(TCP, A1, 40000)
    taken = {(A1, 40000)}
    assert pool.allocate(TCP, CLIENT, 40000, taken) == (A1, 40001)    # still held once


def test_the_next_free_port_upward_when_the_tuple_is_taken():
    pool = Pool(4, A1)
    taken = {(A1, 40000), (A1, 40001)}
    assert pool.allocate(TCP, CLIENT, 40000, taken) == (A1, 40002)
    assert pool.allocate(TCP, CLIENT, 40000, taken) == (A1, 40003)    # 40002 is the pool's now


def test_search_wraps_to_the_start_of_the_range():
    pool = Pool(4, A1, ports=(20000, 20003))
    taken = {(A1, 20003)}
    assert pool.allocate(UDP, CLIENT, 20003, taken) == (A1, 20000)


def test_a_port_outside_the_range_starts_from_its_start():
    pool = Pool(4, A1, ports=(20000, 29999))
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 20000)
    assert pool.allocate(TCP, CLIENT, 80, nothing_taken) == (A1, 20001)


def test_exhaustion_then_release():
    pool = Pool(4, A1, ports=(5000, 5002))
    got = [pool.allocate(TCP, CLIENT, 6000, nothing_taken) for _ in range(3)]
    assert got == [(A1, 5000), (A1, 5001), (A1, 5002)]
    assert pool.allocate(TCP, CLIENT, 6000, nothing_taken) is None
    pool.release(TCP, A1, 5001)
    assert pool.allocate(TCP, CLIENT, 6000, nothing_taken) == (A1, 5001)


def test_rotate_hands_a_released_port_out_again_only_after_the_rest_of_the_range():
    """full_nat's pools: the search goes on after the last port handed out, wrapping."""
    pool = Pool(4, A1, ports=(5000, 5003), rotate=True)
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 5000)
    pool.release(TCP, A1, 5000)
    got = [pool.allocate(TCP, CLIENT, 40000, nothing_taken) for _ in range(3)]
    assert got == [(A1, 5001), (A1, 5002), (A1, 5003)]
    assert pool.allocate(TCP, CLIENT, 40000, {(A1, 5000)}) is None  # wrapped: 5000 taken in the table
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 5000)
    assert pool.allocate(UDP, CLIENT, 40000, nothing_taken) == (A1, 5000)  # per protocol
    assert pool.allocate(TCP, CLIENT, 5002, {(A1, 5002)}) is None  # a kept port's search is as before (all held)


def test_protocols_are_separate_and_icmp_ids_use_the_whole_range():
    pool = Pool(4, A1)
    assert pool.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 40000)
    assert pool.allocate(UDP, CLIENT, 40000, {(A1, 40000)}) == (A1, 40001)
    assert pool.allocate(ICMP, CLIENT, 7, nothing_taken) == (A1, 7)           # ids below 1024 too
    assert pool.allocate(ICMP, CLIENT, 7, {(A1, 7)}) == (A1, 8)
    assert Pool(4, A1, ports=(20000, 20009)).port_range(ICMP) == (20000, 20009)


def test_an_address_range_keeps_a_client_on_one_address_and_overflows_to_the_next():
    pool = Pool(4, A1, A3, ports=(5000, 5000))
    first = pool.allocate(TCP, CLIENT, 5000, nothing_taken)
    assert first[0] in (A1, A2, A3)
    second = pool.allocate(TCP, CLIENT, 5000, {first})
    third = pool.allocate(TCP, CLIENT, 5000, {first, second})
    assert len({first[0], second[0], third[0]}) == 3
    assert pool.allocate(TCP, CLIENT, 5000, {first, second, third}) is None


def test_ipv6_range_and_masquerade_address():
    first = ipaddress.ip_address("2001:db8:ffff::1").packed
    last = ipaddress.ip_address("2001:db8:ffff::ffff:ffff").packed
    pool = Pool(6, first, last)
    address, port = pool.allocate(TCP, ipaddress.ip_address("2001:db8:1::10").packed, 40000, nothing_taken)
    assert first <= address <= last and port == 40000
    masquerade = Pool(4)
    assert masquerade.allocate(TCP, CLIENT, 1, nothing_taken, address=A2) == (A2, 1024)
    assert masquerade.allocate(TCP, CLIENT, 1, nothing_taken) is None          # no address known


def test_deterministic():
    def run():
        pool = Pool(4, A1, A3, ports=(1024, 1100))
        taken: set = set()
        out = []
        for i in range(200):
            got = pool.allocate(TCP, bytes([198, 51, 100, i % 7]), 1024 + i % 13, taken)
            out.append(got)
            taken.add(got)
            if i % 5 == 0:
                pool.release(TCP, *out[i // 2])
                taken.discard(out[i // 2])
        return out
    assert run() == run()


@pytest.mark.parametrize("nodes", [1, 2, 3, 7])
def test_node_slices_partition_the_range(nodes):
    slices = [node_slice((1024, 65535), node, nodes) for node in range(nodes)]
    assert slices[0][0] == 1024 and slices[-1][1] == 65535
    assert all(a[1] + 1 == b[0] for a, b in zip(slices, slices[1:], strict=False))


def test_a_node_keeps_the_original_port_only_in_its_own_slice():
    node0, node1 = Pool(4, A1, node=0, nodes=2), Pool(4, A1, node=1, nodes=2)
    low, high = node0.port_range(TCP), node1.port_range(TCP)
    assert low == (1024, 33279) and high == (33280, 65535)
    assert node0.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 1024)
    assert node1.allocate(TCP, CLIENT, 40000, nothing_taken) == (A1, 40000)
    assert node1.allocate(TCP, CLIENT, 2000, nothing_taken) == (A1, 33280)
    with pytest.raises(ValueError, match="node 2"):
        Pool(4, A1, node=2, nodes=2)


def test_claim_marks_a_restored_session():
    pool = Pool(4, A1, ports=(5000, 5001))
    pool.claim(TCP, A1, 5000)
    pool.claim(TCP, A1, 9999)                       # outside the range: ignored
    assert pool.allocate(TCP, CLIENT, 7000, nothing_taken) == (A1, 5001)
    assert pool.in_use(TCP) == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1000, 1040)), max_size=80))
def test_never_hands_out_a_taken_tuple_and_exhausts_only_when_full(steps):
    """Model: the session table holds what the pool gave; allocation or release in any order."""
    pool = Pool(4, A1, ports=(1010, 1029))
    table: list = []
    for allocate, port in steps:
        if allocate or not table:
            got = pool.allocate(UDP, CLIENT, port, set(table))
            if got is None:
                assert len(set(table)) == 20
            else:
                assert got not in table and 1010 <= got[1] <= 1029
                table.append(got)
        else:
            pool.release(UDP, *table.pop(port % len(table)))


def reference_allocate(lo: int, hi: int, held: dict, port: int, taken: set) -> int | None:
    """SPEC's rule by brute force: the original port if its tuple is free, else the first port
    upward from it (wrapping within lo-hi) that the pool does not hold and whose tuple is free."""
    if lo <= port <= hi and port not in taken:
        return port
    start = port + 1 if lo <= port <= hi else lo
    for candidate in [*range(start, hi + 1), *range(lo, start)]:
        if not held.get(candidate) and candidate not in taken:
            return candidate
    return None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "new", "close", "outside"]), st.integers(990, 1030)),
                max_size=60))
def test_allocation_follows_the_spec_rule_exactly(steps):
    """Against the brute-force rule; 'outside' puts a tuple in the table the pool did not make."""
    lo, hi = 1000, 1019
    pool = Pool(4, A1, ports=(lo, hi))
    held: dict = {}                    # port -> sessions holding it (the pool's view)
    table: list = []                   # the session table's translated tuples (ports), in order
    for action, port in steps:
        taken = set(table)
        if action == "outside":
            table.append(port)
        elif action == "close" and table:
            gone = table.pop(port % len(table))
            if held.get(gone):
                held[gone] -= 1
                pool.release(TCP, A1, gone)
        elif action == "new":
            want = reference_allocate(lo, hi, held, port, taken)
            got = pool.allocate(TCP, CLIENT, port, {(A1, p) for p in taken})
            assert (got and got[1]) == want and (got is None or got[0] == A1)
            if want is not None:
                held[want] = held.get(want, 0) + 1
                table.append(want)
