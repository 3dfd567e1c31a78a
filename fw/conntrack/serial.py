"""Sessions and expectations as plain, versioned data: for snapshots across restarts and HA sync.

How it works: `session_to_dict` writes everything a node needs to go on tracking a session itself
(tuple, state, TCP window data, ALG state, timeouts, counters, rule) with addresses as text and
times on the wall clock: the engine's clock is monotonic in the daemon, so the caller passes
`clock_offset` = wall-clock time minus engine time, and `session_from_dict` takes it back off with
the reading node's own offset. Malformed input raises SerialError, never anything else, since a
snapshot file or a sync message may be damaged or hostile.
"""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

from fw.alg import ALGS, Peers
from fw.conntrack import tcp as tcpmod
from fw.conntrack.table import (
    LIBERAL,
    REPLIED,
    REVERSED,
    UNREPLIED,
    Profile,
    Session,
    TcpSession,
    flow_key,
    orientation,
)

FORMAT_VERSION = 1


class SerialError(ValueError):
    """Serialised session data that cannot be used."""


def session_to_dict(session: Session, clock_offset: float) -> dict:
    return {
        "proto": session.proto,
        "family": session.family,
        "src": str(ipaddress.ip_address(session.src)),
        "dst": str(ipaddress.ip_address(session.dst)),
        "sport": session.sport,
        "dport": session.dport,
        "state": session.state_name,
        "tcp": tcpmod.to_dict(session.tcp) if session.tcp is not None else None,
        "timeouts": dict(session.timeouts) if session.timeouts is not None else None,
        "rst_on_timeout": session.rst_on_timeout,
        "created": session.created + clock_offset,
        "last_seen": session.last_seen + clock_offset,
        "deadline": session.deadline + clock_offset,
        "counters": [session.orig_packets, session.orig_bytes, session.reply_packets, session.reply_bytes],
        "rule": session.rule,
        "policy_rev": session.policy_rev,
        "flags": session.flags & ~(REVERSED | LIBERAL),  # both come from the tuple and the track
        "alg": session.alg.to_dict() if session.alg is not None else None,
        "parent": _key_to_list(session.parent.key) if session.parent is not None else None,
        "owner": session.owner,
    }


def session_from_dict(data: dict, clock_offset: float) -> Session:
    """A Session from `session_to_dict`'s output (its parent link is left to the caller: see
    `parent_key`)."""
    try:
        src = ipaddress.ip_address(data["src"]).packed
        dst = ipaddress.ip_address(data["dst"]).packed
        proto, sport, dport = int(data["proto"]), int(data["sport"]), int(data["dport"])
        if len(dst) != len(src) or not (0 <= proto < 256 and 0 <= sport < 65536 and 0 <= dport < 65536):
            raise SerialError("inconsistent tuple")
        created = float(data["created"]) - clock_offset
        key = flow_key(proto, src, dst, sport, dport)
        flags = (int(data["flags"]) & ~(REVERSED | LIBERAL)) | orientation(key, src, sport)
        if data["tcp"] is not None:
            session = TcpSession(key, tcpmod.from_dict(data["tcp"]), created, flags)
        else:
            session = Session(key, {"UNREPLIED": UNREPLIED, "REPLIED": REPLIED}[data["state"]], created, flags)
        timeouts = data["timeouts"]
        timeouts = MappingProxyType({str(k): float(v) for k, v in timeouts.items()}) if timeouts else None
        rule = None if data["rule"] is None else str(data["rule"])
        session.profile = Profile(rule, data["policy_rev"], timeouts, bool(data["rst_on_timeout"]))
        session.last_seen = float(data["last_seen"]) - clock_offset
        session.deadline = float(data["deadline"]) - clock_offset
        counters = [int(n) for n in data["counters"]]
        session.orig_packets, session.orig_bytes, session.reply_packets, session.reply_bytes = counters
        alg = data["alg"]
        if alg is not None:
            session.alg = ALGS[alg["alg"]].load(alg)
            session.alg.peers = Peers.of_session(session)
        session.owner = data.get("owner")
        return session
    except SerialError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SerialError(f"bad session record: {error!r}") from None


def parent_key(data: dict) -> tuple | None:
    parent = data.get("parent")
    return key_from_list(parent) if parent else None


def expectation_to_dict(key: tuple, entry, clock_offset: float) -> dict:
    exp = entry.expectation
    return {
        "family": exp.family,
        "src": str(ipaddress.ip_address(exp.src)),
        "dst": str(ipaddress.ip_address(exp.dst)),
        "dport": exp.dport,
        "proto": exp.proto,
        "command": exp.command,
        "alg": entry.spec.name,
        "deadline": entry.deadline + clock_offset,
        "parent": _key_to_list(entry.parent.key),
    }


def _key_to_list(key: tuple) -> list:
    proto, low, high, low_port, high_port = key
    return [proto, str(ipaddress.ip_address(low)), str(ipaddress.ip_address(high)), low_port, high_port]


def key_from_list(raw) -> tuple:
    try:
        proto, low, high, low_port, high_port = raw
        return (int(proto), ipaddress.ip_address(low).packed, ipaddress.ip_address(high).packed,
                int(low_port), int(high_port))  # fmt: skip
    except (TypeError, ValueError) as error:
        raise SerialError(f"bad flow key: {error!r}") from None
