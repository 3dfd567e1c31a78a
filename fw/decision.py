"""What the engine answers for one packet: a verdict, a reason, and effects for the driver.

A Decision is built once per packet, so it is a plain `__slots__` class; the state name and flow
text are derived on demand (replay prints them, the daemon rarely needs them). Effects are
imperatives (mitmproxy's "commands"): the engine never performs I/O, the driver carries them out.
"""

from __future__ import annotations

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
