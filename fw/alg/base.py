"""The ALG interface: what an ALG is told (Peers), what it hands the engine (an Expectation: admit
one data session; a Refusal: log, count), and its entry in the registry (AlgSpec).

Expectation and Refusal are frozen value objects built only when a control channel announces a
data connection, never per packet. `shorten` makes untrusted protocol text safe to put in a log line.

An ALG is a class with `name`, a `SPEC` (its AlgSpec), built per control session by
`SPEC.create(peers)`, and:
- `feed(from_client, seq, payload) -> list[Expectation | Refusal]`: the payload of one packet of
  its control session, either protocol: for TCP only in-window payload, `seq` the sequence number
  of its first byte (the ALG orders the stream itself, see fw/alg/stream.py); for UDP one whole
  datagram, `seq` None.
- `peers`: the session's two ends (Peers). NAT sets `peers.translated` (the ends as the other side
  of the firewall sees them) so that an ALG can check or rewrite announced addresses against them.
- `to_dict()` / `from_dict(d)`: plain data for snapshots and HA sync (`d["alg"]` is the name).
It reads no clock and does no I/O: when an expectation expires is the engine's business (the
spec's `timeout_key` in the session's timeouts, else `default_timeout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DETAIL_LIMIT = 80  # characters of offending text kept in a Refusal


@dataclass(frozen=True, slots=True)
class Expectation:
    """Admit one data session of protocol `proto`: from `src` (any source port) to `dst`:`dport`."""

    family: int  # 4 or 6
    src: bytes  # the endpoint allowed to connect (raw address bytes)
    dst: bytes  # the announced address (raw address bytes)
    dport: int  # the announced port
    proto: int = 6
    command: str = ""  # what announced it: "PORT", "EPRT", "PASV", "EPSV", "RRQ", "WRQ" (for logs)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An announcement refused: the engine logs and counts it; the control session continues."""

    reason: str  # "bounce" | "low-port" | "family-mismatch" | "malformed" | "epsv-all"
    command: str
    detail: str  # the offending text, shortened


def shorten(text: bytes, limit: int = DETAIL_LIMIT) -> str:
    """Printable ASCII as is, anything else as \\xNN; cut to `limit` characters with '...'."""
    shown = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in text[: limit + 1])
    return shown[:limit] + "..." if len(shown) > limit else shown


class Peers:
    """The two ends of an ALG's control session: the client (who opened it) and the server, as the
    engine saw them. `translated` is the same seen through NAT (another Peers), or None."""

    __slots__ = ("family", "client", "server", "client_port", "server_port", "translated")

    def __init__(self, family: int, client: bytes, server: bytes, client_port: int = 0, server_port: int = 0):
        self.family = family
        self.client = client
        self.server = server
        self.client_port = client_port
        self.server_port = server_port
        self.translated: Peers | None = None

    @property
    def outside(self) -> Peers:
        """The ends as the far side sees them: translated if NAT translates the session, else these."""
        return self.translated if self.translated is not None else self

    @classmethod
    def of_session(cls, session) -> Peers:
        return cls(session.family, session.src, session.dst, session.sport, session.dport)


@dataclass(frozen=True)
class AlgSpec:
    """One row of the ALG registry (fw.alg.ALGS): everything the engine, the policy and the logs
    need to know of an ALG besides its parser."""

    name: str  # `alg: NAME` in a rule
    proto: int  # the protocol of its control sessions (the rule must match it): 6 or 17
    ports: tuple[int, ...]  # its well-known server ports (documentation; the rule decides)
    timeout_key: str  # the `timeouts` key of its expectations' lifetime
    default_timeout: int  # ... and its default
    reason: str  # the reason of the sessions its expectations admit ("related:NAME")
    event_type: str  # the EVE event_type of its refusals
    cls: Any  # the ALG class: cls(family, client, server), cls.from_dict(d)

    def create(self, peers: Peers):
        """A new ALG for the control session between these peers."""
        alg = self.cls(peers.family, peers.client, peers.server)
        alg.peers = peers
        return alg

    def load(self, data: dict):
        """An ALG from its to_dict() (snapshots, HA sync)."""
        return self.cls.from_dict(data)
