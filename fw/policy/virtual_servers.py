"""The policy's `virtual_servers` list (SPEC "Translation"): parsed and checked, every error located.

How it works: `virtual_servers(rep, node, names)` walks the list like rules.py walks rules: each
key of each entry is parsed by its own function, which reports at the node that is wrong and goes
on, so one run reports every error; then the checks across keys (maglev_table_size against the
scheduler and the number of real servers, health's path and expect only for http, real servers in
the virtual address's family) and across entries (unique names, one virtual server per address,
proto and port, unique real servers within one), and against the `nat` list: a `dnat` entry that
would translate the virtual server's address, proto and port is an error (the virtual server would
always win: SPEC decides destinations by virtual server first). It returns `VirtualServer`s, or
INVALID.

Defaults: scheduler `wlc` (IPVS's), persistence 0 (off), full_nat false, when_all_down reject, a
real server's port is the virtual server's and its weight 1, no health check unless `health` is
given (then interval 2, timeout 1, rise 2, fall 2; http: path "/", expect 200; the timeout may not
exceed the interval, so one check ends before the next starts). `maglev_table_size` defaults to the
smallest prime >= max(65537, 100 x the real servers), which is 65537 up to 655 real servers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from fw.lb.maglev import default_table_size, is_prime, smallest_prime_at_least
from fw.lb.schedulers import SCHEDULERS as SCHEDULER_CLASSES
from fw.packet.constants import PROTO_TCP, PROTO_UDP
from fw.policy import fields
from fw.policy.diagnostics import Reporter
from fw.policy.fields import INVALID, NULL
from fw.policy.source import items

SCHEDULERS = tuple(SCHEDULER_CLASSES)
DEFAULT_SCHEDULER = "wlc"
WHEN_ALL_DOWN = ("reject", "drop")
HEALTH_TYPES = ("tcp", "http")
PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
KEYS = ("name", "address", "proto", "port", "scheduler", "maglev_table_size", "persistence", "full_nat",
        "when_all_down", "health", "real_servers")
HEALTH_KEYS = ("type", "interval", "timeout", "rise", "fall", "path", "expect")
HTTP_ONLY_KEYS = ("path", "expect")
REAL_SERVER_KEYS = ("address", "port", "weight")
MAX_TABLE_SIZE = 1 << 24
SLOTS_PER_SERVER = 100
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")  # printable ASCII, no space: it goes into a request line


@dataclass(frozen=True, slots=True)
class HealthSpec:
    type: str
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    path: str = "/"
    expect: int = 200


@dataclass(frozen=True, slots=True)
class RealServerSpec:
    address: str  # normalised text (ipaddress)
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class VirtualServer:
    name: str
    address: str
    family: int
    proto: int
    port: int
    real_servers: tuple[RealServerSpec, ...]
    scheduler: str = DEFAULT_SCHEDULER
    maglev_table_size: int | None = None  # maglev only
    persistence: int = 0
    full_nat: bool = False
    when_all_down: str = "reject"
    health: HealthSpec | None = None
    file: str = ""
    line: int = 0


def virtual_servers(rep: Reporter, node, seen: dict | None = None, nat=()):
    """The list of VirtualServers, or INVALID (every problem reported). `seen` carries names and
    (address, proto, port) across the files of a folder; `nat` is the policy's parsed nat list."""
    if isinstance(node, ScalarNode) and node.tag == NULL:
        return []
    if not isinstance(node, SequenceNode):
        rep.error(node, "virtual_servers must be a list of virtual servers")
        return INVALID
    seen = {"names": {}, "addresses": {}} if seen is None else seen
    dnat = [entry for entry in nat if entry.type == "dnat"]
    result = [virtual_server(rep, item, seen, dnat) for item in node.value]
    return INVALID if INVALID in result else result


def virtual_server(rep: Reporter, node, seen: dict, dnat=()):
    """One entry -> VirtualServer, or INVALID."""
    entries = {key: (key_node, value) for key, key_node, value in items(rep, node, KEYS, "a virtual server")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    name = _name(rep, node, entries, seen["names"])
    label = f"virtual server '{name}'" if isinstance(name, str) else "virtual server"
    address = _required(rep, node, entries, "address", label, _vip)
    proto = _required(rep, node, entries, "proto", label,
                      lambda r, n: _proto(r, n))
    port = _required(rep, node, entries, "port", label, lambda r, n: _port(r, n, "port"))
    values = {
        "scheduler": _optional(rep, entries, "scheduler", DEFAULT_SCHEDULER,
                               lambda r, n: fields.choice(r, n, "scheduler", SCHEDULERS)),
        "persistence": _optional(rep, entries, "persistence", 0,
                                 lambda r, n: _integer(r, n, "persistence", 0, None, "seconds")),
        "full_nat": _optional(rep, entries, "full_nat", False, lambda r, n: fields.boolean(r, n, "full_nat")),
        "when_all_down": _optional(rep, entries, "when_all_down", "reject",
                                   lambda r, n: fields.choice(r, n, "when_all_down", WHEN_ALL_DOWN)),
        "health": _optional(rep, entries, "health", None, _health),
    }
    family = address.version if address is not INVALID else None
    real = _required(rep, node, entries, "real_servers", label,
                     lambda r, n: _real_servers(r, n, family, port))
    values["maglev_table_size"] = _table_size(rep, entries, values["scheduler"], real)
    if address is not INVALID and proto is not INVALID and port is not INVALID:
        ok = _unique_address(rep, node, entries, (address, proto, port), label, seen["addresses"]) and ok
        ok = _not_dnat(rep, entries, (address, proto, port), label, dnat) and ok
    if not ok or INVALID in (name, address, proto, port, real) or INVALID in values.values():
        return INVALID
    return VirtualServer(name, str(address), address.version, proto, port, tuple(real), **values,
                         file=rep.file, line=entries["name"][1].start_mark.line + 1)


def _required(rep: Reporter, node, entries: dict, key: str, label: str, parse):
    if key not in entries:
        rep.error(node, f"{label} has no '{key}'")
        return INVALID
    return parse(rep, entries[key][1])


def _optional(rep: Reporter, entries: dict, key: str, default, parse):
    return parse(rep, entries[key][1]) if key in entries else default


def _name(rep: Reporter, node, entries: dict, names: dict):
    name = fields.unique_name(rep, node, entries, names, "virtual server")
    if name is not INVALID and not NAME.match(name):
        rep.error(entries["name"][1], "a virtual server name is letters, digits, '_', '.' and '-'")
        return INVALID
    return name


def _address(rep: Reporter, node, what: str):
    value = fields.scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else ipaddress.ip_address("")
    except ValueError:
        rep.error(node, f"{what} must be one IPv4 or IPv6 address, not '{node.value}'")
        return INVALID


def _vip(rep: Reporter, node):
    return _address(rep, node, "address")


def _proto(rep: Reporter, node):
    value = fields.choice(rep, node, "proto", tuple(PROTOS))
    return INVALID if value is INVALID else PROTOS[value]


def _integer(rep: Reporter, node, what: str, low: int, high: int | None, unit: str = ""):
    value = fields.scalar(rep, node, what) if isinstance(node, ScalarNode) else INVALID
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
        return value
    if value is not INVALID or isinstance(node, ScalarNode):
        bound = f"{low}-{high}" if high is not None else f">= {low}"
        rep.error(node, f"{what} must be an integer {bound}{' (' + unit + ')' if unit else ''}")
    else:
        rep.error(node, f"{what} must be a single value")
    return INVALID


def _port(rep: Reporter, node, what: str):
    return _integer(rep, node, what, 1, 65535)


def _number(rep: Reporter, node, what: str):
    value = fields.scalar(rep, node, what) if isinstance(node, ScalarNode) else INVALID
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    rep.error(node, f"{what} must be a positive number of seconds")
    return INVALID


def _health(rep: Reporter, node):
    entries = {key: (key_node, value) for key, key_node, value in items(rep, node, HEALTH_KEYS, "health")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    kind = _required(rep, node, entries, "type", "health",
                     lambda r, n: fields.choice(r, n, "health type", HEALTH_TYPES))
    values = {
        "interval": _optional(rep, entries, "interval", 2.0, lambda r, n: _number(r, n, "interval")),
        "timeout": _optional(rep, entries, "timeout", 1.0, lambda r, n: _number(r, n, "timeout")),
        "rise": _optional(rep, entries, "rise", 2, lambda r, n: _integer(r, n, "rise", 1, 100)),
        "fall": _optional(rep, entries, "fall", 2, lambda r, n: _integer(r, n, "fall", 1, 100)),
        "path": _optional(rep, entries, "path", "/", _path),
        "expect": _optional(rep, entries, "expect", 200, lambda r, n: _integer(r, n, "expect", 100, 599)),
    }
    if kind not in (INVALID, "http"):
        for key in HTTP_ONLY_KEYS:
            if key in entries:
                rep.error(entries[key][0], f"'{key}' applies to http checks only (this one is {kind})")
                ok = False
    if INVALID not in (values["interval"], values["timeout"]) and values["timeout"] > values["interval"]:
        rep.error(entries["timeout"][1], f"timeout {values['timeout']:g} is longer than the interval "
                                         f"{values['interval']:g} (one check must end before the next)")
        ok = False
    if not ok or kind is INVALID or INVALID in values.values():
        return INVALID
    return HealthSpec(kind, **values)


def _path(rep: Reporter, node):
    value = fields.scalar(rep, node, "path")
    if value is INVALID:
        return INVALID
    if not isinstance(value, str) or not value.startswith("/"):
        rep.error(node, f"path must start with '/' (got '{node.value}')" if isinstance(node, ScalarNode)
                  else "path must start with '/'")
        return INVALID
    if not HTTP_PATH.match(value):
        rep.error(node, "path may hold printable ASCII only, no spaces (percent-encode the rest)")
        return INVALID
    return value


def _real_servers(rep: Reporter, node, family: int | None, default_port):
    if not isinstance(node, SequenceNode) or not node.value:
        rep.error(node, "real_servers must be a list of at least one real server")
        return INVALID
    seen: dict = {}
    result = [_real_server(rep, item, family, default_port, seen) for item in node.value]
    return INVALID if INVALID in result else result


def _real_server(rep: Reporter, node, family: int | None, default_port, seen: dict):
    entries = {key: (key_node, value) for key, key_node, value in items(rep, node, REAL_SERVER_KEYS, "a real server")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    address = _required(rep, node, entries, "address", "real server",
                        lambda r, n: _address(r, n, "real server address"))
    port = _optional(rep, entries, "port", default_port, lambda r, n: _port(r, n, "real server port"))
    weight = _optional(rep, entries, "weight", 1, lambda r, n: _integer(r, n, "weight", 0, 65535))
    if address is not INVALID and family is not None and address.version != family:
        rep.error(entries["address"][1], f"real server {address} is IPv{address.version}, "
                                         f"the virtual address IPv{family}")
        ok = False
    if INVALID in (address, port, weight) or not ok:
        return INVALID
    spec = RealServerSpec(str(address), port, weight)
    if spec.name in seen:
        where = entries["address"][1]
        rep.error(where, f"duplicate real server {spec.name} (first at line {seen[spec.name]})")
        return INVALID
    seen[spec.name] = entries["address"][1].start_mark.line + 1
    return spec


def _table_size(rep: Reporter, entries: dict, scheduler, real):
    """maglev_table_size: maglev only, a prime >= 100 x the real servers; its default otherwise."""
    count = len(real) if real is not INVALID else 0
    if "maglev_table_size" not in entries:
        return default_table_size(count) if scheduler == "maglev" else None
    key_node, node = entries["maglev_table_size"]
    size = _integer(rep, node, "maglev_table_size", 2, MAX_TABLE_SIZE)
    if size is INVALID or scheduler is INVALID:
        return INVALID
    if scheduler != "maglev":
        rep.error(key_node, f"maglev_table_size applies to the maglev scheduler only (this one is {scheduler})")
    elif not is_prime(size):
        rep.error(node, f"maglev_table_size {size} is not a prime "
                        f"(the next one is {smallest_prime_at_least(size)})")
    elif size < SLOTS_PER_SERVER * count:
        rep.error(node, f"maglev_table_size {size} is below 100 x the {count} real servers (at least "
                        f"{smallest_prime_at_least(SLOTS_PER_SERVER * count)})")
    else:
        return size
    return INVALID


def _unique_address(rep: Reporter, node, entries: dict, where: tuple, label: str, addresses: dict) -> bool:
    address, proto, port = where
    if where in addresses:
        first_name, first = addresses[where]
        proto_name = "tcp" if proto == PROTO_TCP else "udp"
        where = f"{proto_name} {address} port {port}, {fields.first_place(rep, first)}"
        rep.error(entries["address"][1], f"{label} has the address, proto and port of virtual server "
                                         f"'{first_name}' ({where})")
        return False
    name_node = entries["name"][1] if "name" in entries else node
    addresses[where] = (name_node.value if isinstance(name_node, ScalarNode) else "?", (rep, name_node))
    return True


def _not_dnat(rep: Reporter, entries: dict, where: tuple, label: str, dnat) -> bool:
    """No dnat entry may name this virtual server's address (in its `dst`), proto and port."""
    address, proto, port = where
    value = int(address)
    for entry in dnat:
        selector = entry.selector
        if selector.dst is None or value not in selector.dst.by_family[address.version]:
            continue
        if selector.proto not in (None, proto) or (selector.dport is not None and port not in selector.dport):
            continue
        place = f"line {entry.line}" if entry.file == rep.file else f"{entry.file}:{entry.line}"
        proto_name = "tcp" if proto == PROTO_TCP else "udp"
        rep.error(entries["address"][1], f"{label} has the address, proto and port of dnat entry "
                                         f"'{entry.name}' ({place}): {proto_name} {address} port {port} "
                                         f"would always go to the virtual server")
        return False
    return True
