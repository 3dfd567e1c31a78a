"""Where a packet is decided (here or at its session's owner), and whose claim to a session wins:
the rules of docs/forwarding.md, case by case."""

from __future__ import annotations

import pytest

from fw.sync.forwarding.owner import FORWARD, LOCAL, Claim, Owners, Route, claim_wins

FW1, FW2, FW3 = ("192.0.2.1", 6380), ("192.0.2.2", 6380), ("192.0.2.3", 6380)


def owners(alive=("fw2",), addresses=None) -> Owners:
    made = Owners("fw1")
    made.update(alive, {"fw2": FW2, "fw3": FW3} if addresses is None else addresses)
    return made


@pytest.mark.parametrize("owner, forwarded, alive, addresses, expected", [
    ("fw2", False, ("fw2",), None, Route(FORWARD, "owner", "fw2", FW2)),
    ("fw1", False, ("fw2",), None, Route(LOCAL, "ours")),
    (None, False, ("fw2",), None, Route(LOCAL, "ours")),  # a session from before sync
    ("fw2", True, ("fw2",), None, Route(LOCAL, "came-forwarded")),  # never twice: no loops
    ("fw2", False, (), None, Route(LOCAL, "owner-dead")),
    ("fw3", False, ("fw2",), None, Route(LOCAL, "owner-dead")),
    ("fw2", False, ("fw2",), {}, Route(LOCAL, "no-address")),
    ("fw3", False, ("fw2", "fw3"), None, Route(FORWARD, "owner", "fw3", FW3)),
])  # fmt: skip
def test_a_packet_of_a_known_session(owner, forwarded, alive, addresses, expected):
    assert owners(alive, addresses).for_session(owner, forwarded) == expected


@pytest.mark.parametrize("alive, addresses, forwarded, expected", [
    (("fw2",), None, False, Route(FORWARD, "only-peer", "fw2", FW2)),  # a SYN-ACK that beat the sync
    (("fw2",), None, True, Route(LOCAL, "came-forwarded")),
    (("fw2", "fw3"), None, False, Route(LOCAL, "several-peers")),  # held and asked for, as without forwarding
    (("fw2", "fw3"), {"fw3": FW3}, False, Route(FORWARD, "only-peer", "fw3", FW3)),
    ((), None, False, Route(LOCAL, "alone")),
    (("fw2",), {}, False, Route(LOCAL, "alone")),
    (("fw1",), None, False, Route(LOCAL, "alone")),  # ourselves in the list changes nothing
])  # fmt: skip
def test_a_packet_this_node_cannot_place(alive, addresses, forwarded, expected):
    assert owners(alive, addresses).for_unplaced(forwarded) == expected


def test_before_any_update_everything_is_decided_here():
    fresh = Owners("fw1")
    assert fresh.for_unplaced(False) == Route(LOCAL, "alone")
    assert fresh.for_session("fw2", False) == Route(LOCAL, "owner-dead")


def test_a_dead_owners_sessions_are_taken_over_and_forwarding_to_it_stops():
    view = owners(alive=("fw2",))
    assert not view.takes_over("fw2") and view.for_session("fw2", False).kind == FORWARD
    view.update((), {"fw2": FW2})  # fw2 no longer heard (its directory entry not yet expired)
    assert view.takes_over("fw2") and view.for_session("fw2", False) == Route(LOCAL, "owner-dead")
    assert not view.takes_over("fw1") and not view.takes_over(None)


def test_the_later_claim_wins_and_a_node_that_comes_back_does_not_steal():
    before, moved = Claim("fw1", 1000.0), Claim("fw2", 1030.0)  # fw1 died, fw2 took the session over
    assert claim_wins(before, moved)  # fw2's claim replaces the old one everywhere
    assert not claim_wins(moved, before)  # fw1, back, loads fw2's claim: its own older one loses
    assert claim_wins(Claim("fw2", 5.0), Claim("fw1", 5.0)) and not claim_wins(Claim("fw1", 5.0), Claim("fw2", 5.0))
