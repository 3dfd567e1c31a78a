# cython: annotation_typing=False
"""What the engine answers for one packet: a verdict, a reason, and effects for the driver.

A Decision is built once per packet, so it is a plain `__slots__` class; the state name and flow
text are derived on demand (replay prints them, the daemon rarely needs them). Effects are
imperatives (mitmproxy's "commands"): the engine never performs I/O, the driver carries them out.
They are the one way out of the engine: a driver (offload, HA sync, the event log, later NAT)
learns what happened to sessions only from them, never by diffing sessions or overriding the
engine. The session effects are made only when a session opens, changes state or closes, never
for a packet that merely passes (the established path allocates nothing but its Decision):

- `SendPacket(family, data)`: send these L3 bytes (a RST, an ICMP unreachable).
- `LogEvent(event)`: write this EVE event.
- `SessionOpened(session)`: a new session is in the table.
- `SessionChanged(session, old_state)`: its state moved from `old_state`, or (old_state is its
  state) its ALG announced expectations.
- `SessionClosed(session, why)`: it left the table: `timeout`, `timeout-reset`, `evicted`,
  `reopen`, `replaced`, `killed`, or a driver's word (`peer-removed`, `offload-reset`).
- `OffloadSession(session)`: the kernel may pass this session's packets from now on (only when
  `EngineConfig.offload` asks for it).
- `KernelNat(session)`: a translated session is ready for the kernel to hold its binding (the
  live NAT daemon, `Nat.kernel_bindings`): fw.drivers.nat_kernel makes the kernel conntrack entry
  and answers `Nat.kernel_translates`; from then on its packets are accepted without a rewrite.
- `RewritePacket(data)`: the packet must leave as these bytes (NAT).
- `SetMark(mark)`: the verdict carries this packet mark.
- `ForwardToOwner(node)`: the packet belongs to a session that `node` decides (HA owner
  forwarding, `Engine.decide_at_owners`): the driver sends it there; its verdict here is drop and
  the session was not touched.

Verdicts are counted where the final verdict is given (the driver: `Verdicts.count`), not by the
engine: a driver that holds a packet or hands it to another queue counts it when it is decided.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

ACCEPT = "accept"
DROP = "drop"
NO_EFFECTS: tuple = ()


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send these L3 bytes (a reset or an ICMP unreachable the engine built) out of a raw socket."""

    family: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LogEvent:
    """Write one event (Suricata EVE field names) to the event log."""

    event: dict[str, Any]


class SessionOpened:
    """A session entered the table (opened by this packet)."""

    __slots__ = ("session",)

    def __init__(self, session):
        self.session = session

    def __repr__(self) -> str:
        return f"SessionOpened({self.session!r})"


class SessionChanged:
    """A session's state moved from `old_state` (or, old_state being its state, its expectations did)."""

    __slots__ = ("session", "old_state")

    def __init__(self, session, old_state):
        self.session = session
        self.old_state = old_state

    def __repr__(self) -> str:
        return f"SessionChanged({self.session!r}, {self.old_state!r})"


class SessionClosed:
    """A session left the table, and why."""

    __slots__ = ("session", "why")

    def __init__(self, session, why: str):
        self.session = session
        self.why = why

    def __repr__(self) -> str:
        return f"SessionClosed({self.session!r}, {self.why!r})"


class OffloadSession:
    """The kernel may pass this session's packets (fw.drivers.offload sets the connection's mark)."""

    __slots__ = ("session",)

    def __init__(self, session):
        self.session = session

    def __repr__(self) -> str:
        return f"OffloadSession({self.session!r})"


class KernelNat:
    """A bare translated session is established: the kernel may hold its NAT binding (fw.drivers.nat_kernel)."""

    __slots__ = ("session",)

    def __init__(self, session):
        self.session = session

    def __repr__(self) -> str:
        return f"KernelNat({self.session!r})"


class RewritePacket:
    """The packet leaves as these L3 bytes instead of its own (NAT). A plain `__slots__` class, as
    the session effects: every packet of a translated session makes one (a frozen dataclass's
    `__init__` costs a third of the rewrite itself). Compiled (fw/decision.pxd), a final C type
    with a freelist, untracked by the cyclic collector, made by fw/nat/rewrite.py without a call."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __eq__(self, other) -> bool:
        return other.__class__ is RewritePacket and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"RewritePacket({len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class SetMark:
    """The packet's verdict carries this mark."""

    mark: int


@dataclass(frozen=True, slots=True)
class ForwardToOwner:
    """This packet's session is owned by `node`, which decides it (fw.sync.forwarding.service)."""

    node: str


SESSION_EFFECTS = (SessionOpened, SessionChanged, SessionClosed, OffloadSession)


class Verdicts:
    """Final verdicts by reason, counted once where they are given (the driver)."""

    __slots__ = ("accepted", "dropped")

    def __init__(self):
        self.accepted: Counter = Counter()
        self.dropped: Counter = Counter()

    def count(self, verdict: str, reason: str) -> None:
        if verdict == ACCEPT:
            self.accepted[reason] += 1
        else:
            self.dropped[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.accepted.values()) + sum(self.dropped.values())

    def clear(self) -> None:
        self.accepted.clear()
        self.dropped.clear()


class Decision:
    """The engine's answer for one packet."""

    __slots__ = ("verdict", "reason", "packet", "session", "effects")

    def __init__(self, verdict, reason, packet=None, session=None, effects=NO_EFFECTS):
        self.verdict = verdict
        self.reason = reason
        self.packet = packet
        self.session = session
        self.effects = effects

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT

    @property
    def state(self) -> str | None:
        return self.session.state_name if self.session is not None else None

    def __repr__(self) -> str:
        return f"Decision({self.verdict}, {self.reason!r}, state={self.state})"
