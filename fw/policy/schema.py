"""The policy file's vocabulary as data: keys, actions, protocols, timeouts, options.

Everything the loader accepts is listed here, so a later feature adds its keys in one place: an
option is a row of `OPTIONS` (its kind, its default and one line of help), a timeout a name in
`TIMEOUT_KEYS`. Validators for option kinds live in `OPTION_KINDS`. Protocol and ICMP names come
from `fw.packet.constants`, which the packet layer shares.
"""

from __future__ import annotations

from typing import NamedTuple

from fw.alg import ALGS as ALG_REGISTRY
from fw.packet.constants import (
    ICMP_CODES,
    ICMP_TYPES,
    ICMPV6_CODES,
    ICMPV6_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOLS,
)

VERSIONS = (1,)
ACTIONS = ("accept", "drop", "reject")
ANY = "any"
PORT_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP))
ICMP_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_ICMPV6))
# The address families a protocol exists in (others: both).
PROTOCOL_FAMILIES = {PROTO_ICMP: frozenset((4,)), PROTO_ICMPV6: frozenset((6,))}
ICMP_NAMES = {PROTO_ICMP: (ICMP_TYPES, ICMP_CODES), PROTO_ICMPV6: (ICMPV6_TYPES, ICMPV6_CODES)}
ALGS = tuple(ALG_REGISTRY)  # the ALGs, their protocols and timeout keys: fw.alg's registry
ALG_PROTOCOLS = {name: spec.proto for name, spec in ALG_REGISTRY.items()}
PROTOCOL_NAMES = PROTOCOLS  # name -> number ('any' is handled apart)

# nf_conntrack's timeout names (nf_conntrack_proto_*.c, sysctl net.netfilter.*), in their order.
TIMEOUT_KEYS = (
    "tcp_syn_sent", "tcp_syn_recv", "tcp_established", "tcp_fin_wait", "tcp_close_wait",
    "tcp_last_ack", "tcp_time_wait", "tcp_close", "tcp_unacknowledged", "udp", "udp_stream",
    "icmp",
) + tuple(spec.timeout_key for spec in ALG_REGISTRY.values())  # ftp_expectation, tftp_expectation

# Top-level keys; all but `sets`, `rules`, `nat` and `virtual_servers` may appear in one file of a
# folder only.
TOP_KEYS = ("version", "defaults", "sets", "zones", "timeouts", "timeout_overrides", "options", "rules", "nat",
            "virtual_servers")
MERGED_KEYS = ("sets", "rules", "nat", "virtual_servers")  # lists: entries concatenate in file order
DEFAULTS_KEYS = ("action", "log", "log_limit")
DEFAULT_ACTION = "drop"
DEFAULT_LOG = False
MATCH_KEYS = ("proto", "src", "dst", "sport", "dport")
OVERRIDE_KEYS = MATCH_KEYS + TIMEOUT_KEYS + ("rst_on_timeout",)
RULE_KEYS = (
    "name", "action", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "iif",
    "oif", "log", "alg", "timeouts", "rst_on_timeout", "limit", "log_limit", "from_zone", "to_zone",
)


class OptionKind(NamedTuple):
    """How to check an option's value: `check(value) -> bool` and the words for an error."""

    check: object
    expected: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


OPTION_KINDS = {
    "bool": OptionKind(lambda v: isinstance(v, bool), "true or false"),
    "positive_int": OptionKind(lambda v: _is_int(v) and v > 0, "a positive integer"),
    "non_negative_int": OptionKind(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "spoof_mode": OptionKind(lambda v: v in ("strict", "loose", "off") or v is False, "strict, loose or off"),
    "positive_number": OptionKind(
        lambda v: (_is_int(v) or isinstance(v, float)) and v > 0, "a positive number"),
}


class Option(NamedTuple):
    kind: str
    default: object
    help: str


# Every option a policy may set. Add later features' options (flood limits, adaptive timeouts) here.
OPTIONS = {
    "tcp_loose": Option("bool", False, "pick up mid-stream TCP flows (insecure)"),
    "rst_on_timeout": Option("bool", False, "on expiry of an established TCP session, RST both ends"),
    "max_sessions": Option("positive_int", 262144, "the session table's size"),
    "adaptive_start": Option("non_negative_int", 0,
                             "sessions from which timeouts shrink (0: 60% of max_sessions)"),
    "adaptive_end": Option("non_negative_int", 0,
                           "sessions at which timeouts reach zero (0: 120% of max_sessions)"),
    "new_session_rate": Option("non_negative_int", 0, "new sessions a second per source (0: no limit)"),
    "new_session_burst": Option("non_negative_int", 0, "burst of new sessions per source (0: the rate)"),
    "max_half_open_per_source": Option("non_negative_int", 0,
                                       "half-open TCP sessions per source (0: no limit)"),
    "overload_seconds": Option("positive_int", 60, "how long a source over a limit is blocked"),
    "reload_recheck": Option("bool", False, "a reload closes the sessions the new rules refuse"),
    "spoof_check": Option("spoof_mode", "off", "drop packets whose source is not of their interface's zone"),
}


def option_defaults() -> dict:
    return {name: option.default for name, option in OPTIONS.items()}
