"""Where a packet is decided, here or at its session's owner, and whose claim to a session wins.

How it works. `Owners` is this node's view of its peers: which are alive (heard through sync) and
where they listen (the directory); the daemon updates it, the packet handler asks it (docs/forwarding.md,
"Which packets go to the owner"):
- `for_session(owner, forwarded)`: a packet of a session in our table, looked up before the engine
  runs (so that our copy is not moved by a packet its owner will judge). Forwarded to the owner
  when the owner is another node, alive, with an address; decided here otherwise, with the reason.
- `for_unplaced(forwarded)`: a packet the engine would drop (or hold) because its session may be a
  peer's it has not heard of yet (a SYN-ACK that beat the sync). Forwarded when exactly one peer
  is alive with an address (the usual two-node cluster); with several, decided here (held).
A packet that came forwarded is never forwarded again.

`claim_wins(ours, theirs)`: two claims (owner, claimed wall-clock time) to one session, as after a
failover: the later claim wins, equal times go to the lower node id, so every node reaches the same
answer and a node that comes back does not take back the sessions that moved. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

LOCAL, FORWARD = "local", "forward"


class Route(NamedTuple):
    kind: str  # LOCAL or FORWARD
    reason: str  # ours, came-forwarded, owner-dead, no-address, owner; alone, several-peers, only-peer
    node: str | None = None
    address: tuple[str, int] | None = None


class Claim(NamedTuple):
    owner: str
    claimed: float  # wall clock


class Owners:
    """Which peers are alive and where they listen; routes packets accordingly."""

    def __init__(self, node: str):
        self.node = node
        self.alive: frozenset[str] = frozenset()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._only: Route | None = None

    def update(self, alive: Iterable[str], addresses: dict[str, tuple[str, int]]) -> None:
        """The peers heard lately and the directory's addresses (called when either changes)."""
        self.alive = frozenset(alive) - {self.node}
        self.addresses = dict(addresses)
        reachable = sorted(peer for peer in self.alive if peer in self.addresses)
        self._only = Route(FORWARD, "only-peer", reachable[0], self.addresses[reachable[0]]) \
            if len(reachable) == 1 else Route(LOCAL, "several-peers" if reachable else "alone")  # fmt: skip

    def for_session(self, owner: str | None, forwarded: bool) -> Route:
        if forwarded:
            return Route(LOCAL, "came-forwarded")
        if owner is None or owner == self.node:
            return Route(LOCAL, "ours")
        if owner not in self.alive:
            return Route(LOCAL, "owner-dead")
        address = self.addresses.get(owner)
        if address is None:
            return Route(LOCAL, "no-address")
        return Route(FORWARD, "owner", owner, address)

    def for_unplaced(self, forwarded: bool) -> Route:
        return Route(LOCAL, "came-forwarded") if forwarded else self._only or Route(LOCAL, "alone")

    def takes_over(self, owner: str | None) -> bool:
        """Whether this node claims a session of `owner` on its next packet (its owner is gone)."""
        return owner is not None and owner != self.node and owner not in self.alive


def claim_wins(ours: Claim, theirs: Claim) -> bool:
    """True if `theirs` replaces `ours` as the session's owner."""
    if theirs.claimed != ours.claimed:
        return theirs.claimed > ours.claimed
    return theirs.owner < ours.owner
