"""What an ALG hands the engine: an Expectation (admit one data session) or a Refusal (log, count).

Both are frozen value objects built only when a control channel announces a data connection, never
per packet. `shorten` makes untrusted protocol text safe to put in a log line.
"""

from __future__ import annotations

from dataclasses import dataclass

DETAIL_LIMIT = 80  # characters of offending text kept in a Refusal


@dataclass(frozen=True, slots=True)
class Expectation:
    """Admit one data session: from `src` (any source port) to `dst`:`dport`."""

    family: int  # 4 or 6
    src: bytes  # the endpoint allowed to connect (raw address bytes)
    dst: bytes  # the announced address (raw address bytes)
    dport: int  # the announced port
    proto: int = 6
    command: str = ""  # "PORT", "EPRT", "PASV", "EPSV" (for logs)


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
