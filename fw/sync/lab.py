"""The HA lab: two firewalls sharing the traffic on asymmetric paths, and Redis on a sync link.

```
               (switch namespace: bridges lan, wan, sync)
  client ----lan----+---- fw1 (.1) ----+----wan---- server
  198.51.100.10     |                  |            203.0.113.10
  default via fw1   +---- fw2 (.2) ----+            default via fw2
                           |  fw1 192.0.2.1, fw2 192.0.2.2
                          sync ---- redis 192.0.2.100
```

The client's default route is fw1 (198.51.100.1, 2001:db8:1::1), the server's is fw2
(203.0.113.2, 2001:db8:2::2): a request goes through fw1, its reply through fw2, so each firewall
sees one direction of every flow. Each firewall's interfaces are named `lan`, `wan` and `sync`
(policies may use them in iif/oif); hosts have `eth0`. The three networks are bridges in a switch
namespace of their own, since two firewalls share each; both ends of every veth are created
inside lab namespaces, nothing touches the host's. Built on fw.lab.Lab (run, popen, down, the
sysctls: forwarding, no DAD, no rp_filter); `view("fw2")` is the same lab seen with fw2 as `the`
firewall, for helpers that start a daemon in `lab.firewall`.
"""

from __future__ import annotations

import copy

from fw.lab import (
    COMMON_SYSCTLS,
    FIREWALL_SYSCTLS,
    HOST_INTERFACE,
    Host,
    Lab,
    LabError,
    Segment,
    ip,
    list_namespaces,
)

SWITCH = "sw"
FIREWALLS = {  # name -> segment -> (IPv4, IPv6 or None), the interface named as the segment
    "fw1": {"lan": ("198.51.100.1/24", "2001:db8:1::1/64"), "wan": ("203.0.113.1/24", "2001:db8:2::1/64"),
            "sync": ("192.0.2.1/24", None)},
    "fw2": {"lan": ("198.51.100.2/24", "2001:db8:1::2/64"), "wan": ("203.0.113.2/24", "2001:db8:2::2/64"),
            "sync": ("192.0.2.2/24", None)},
}  # fmt: skip
SEGMENTS = (Segment("lan", "198.51.100.1/24", "2001:db8:1::1/64"), Segment("wan", "203.0.113.2/24", "2001:db8:2::2/64"),
            Segment("sync", "192.0.2.100/24", ""))  # the hosts' gateways (none on sync)  # fmt: skip
CLIENT = Host("client", "lan", "198.51.100.10/24", "2001:db8:1::10/64")
SERVER = Host("server", "wan", "203.0.113.10/24", "2001:db8:2::10/64")
REDIS = Host("redis", "sync", "192.0.2.100/24", "")
REDIS_PORT = 6379
SWITCH_SYSCTLS = ("net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0",
                  "net.bridge.bridge-nf-call-arptables=0")  # fmt: skip
HA_FIREWALL_SYSCTLS = ("net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")


class HaLab(Lab):
    """Namespaces PREFIX + fw1, fw2, sw, client, server, redis; up(), down(), or `with`."""

    def __init__(self, prefix: str):
        super().__init__(prefix, hosts=(CLIENT, SERVER, REDIS), segments=SEGMENTS, firewall="fw1")

    @property
    def namespaces(self) -> list[str]:
        return [self.prefix + name for name in (*FIREWALLS, SWITCH, *self.hosts)]

    def namespace(self, name: str) -> str:
        if name not in FIREWALLS and name != SWITCH and name not in self.hosts:
            raise LabError(f"no {name!r} in the HA lab (fw1, fw2, {SWITCH}, {', '.join(self.hosts)})")
        return self.prefix + name

    def gateway(self, name: str, family: int) -> str:
        segment = self.segments[self.hosts[name].segment]
        return (segment.ipv4 if family == 4 else segment.ipv6).split("/")[0]

    def view(self, firewall: str) -> HaLab:
        """This lab with `firewall` (fw1 or fw2) as `lab.firewall`."""
        if firewall not in FIREWALLS:
            raise LabError(f"no firewall {firewall!r} (fw1, fw2)")
        seen = copy.copy(self)
        seen.firewall = firewall
        return seen

    @property
    def redis_address(self) -> str:
        return REDIS.address4

    def up(self) -> HaLab:
        existing = set(list_namespaces())
        self._ensure_namespace(SWITCH, existing, COMMON_SYSCTLS + SWITCH_SYSCTLS)
        switch = self.namespace(SWITCH)
        for segment in self.segments:
            if not self._has_link(switch, segment):
                ip("-n", switch, "link", "add", "name", segment, "type", "bridge", "forward_delay", "0",
                   "mcast_snooping", "0")  # fmt: skip
            ip("-n", switch, "link", "set", "dev", segment, "addrgenmode", "none", "up")
        for name, interfaces in FIREWALLS.items():
            self._ensure_namespace(name, existing, COMMON_SYSCTLS + FIREWALL_SYSCTLS + HA_FIREWALL_SYSCTLS)
            for segment, (ipv4, ipv6) in interfaces.items():
                self._plug(name, segment, segment, ipv4, ipv6)
        for host in self.hosts.values():
            self._ensure_namespace(host.name, existing, COMMON_SYSCTLS)
            self._plug(host.name, host.segment, HOST_INTERFACE, host.ipv4, host.ipv6 or None)
            if host.segment != "sync":
                namespace = self.namespace(host.name)
                ip("-n", namespace, "route", "replace", "default", "via", self.gateway(host.name, 4))
                ip("-n", namespace, "-6", "route", "replace", "default", "via", self.gateway(host.name, 6))
        return self

    def _plug(self, name: str, segment: str, interface: str, ipv4: str, ipv6: str | None) -> None:
        """A veth from `name`'s namespace (as `interface`) to the switch's bridge `segment`."""
        switch, namespace, port = self.namespace(SWITCH), self.namespace(name), f"{segment}-{name}"
        if not self._has_link(switch, port):
            if self._has_link(namespace, interface):
                ip("-n", namespace, "link", "delete", interface)
            ip("-n", switch, "link", "add", "name", port, "type", "veth", "peer", "name", interface,
               "netns", namespace)  # fmt: skip
        ip("-n", switch, "link", "set", "dev", port, "master", segment, "addrgenmode", "none", "up")
        ip("-n", namespace, "addr", "replace", ipv4, "dev", interface)
        if ipv6:
            ip("-n", namespace, "addr", "replace", ipv6, "dev", interface, "nodad")
        ip("-n", namespace, "link", "set", "dev", interface, "up")

    def redis_argv(self, password: str) -> list[str]:
        """redis-server for the redis namespace: on the sync address only, a password, no files."""
        return ["redis-server", "--bind", self.redis_address, "--port", str(REDIS_PORT), "--requirepass", password,
                "--save", "", "--appendonly", "no", "--dir", "/tmp", "--protected-mode", "yes"]  # fmt: skip

    def redis_url(self, password: str, db: int = 0) -> str:
        return f"redis://:{password}@{self.redis_address}:{REDIS_PORT}/{db}"
