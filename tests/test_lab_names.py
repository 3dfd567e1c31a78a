"""The lab's naming and addressing, which need no kernel: namespaces, ports, gateways, refusals."""

from __future__ import annotations

import pytest

from fw.lab import ATTACKER, CLIENT, SERVER, Host, Lab, LabError, run_dir
from tests import netns


def test_names_carry_the_prefix() -> None:
    lab = Lab("fwlab-")
    assert lab.namespaces == ["fwlab-fw", "fwlab-client", "fwlab-server"]
    assert lab.namespace("client") == "fwlab-client"
    assert lab.command("server", ["nc", "-l", 80]) == [
        "ip", "netns", "exec", "fwlab-server", "nc", "-l", "80"]
    assert run_dir("fwlab-").as_posix() == "/run/fw/lab-fwlab-"


def test_hosts_route_through_the_firewall_on_their_segment() -> None:
    lab = Lab(hosts=(CLIENT, SERVER, ATTACKER))
    assert [lab.gateway(name, 4) for name in ("client", "server", "attacker")] == [
        "198.51.100.1", "203.0.113.1", "198.51.100.1"]
    assert [lab.gateway(name, 6) for name in ("client", "server", "attacker")] == [
        "2001:db8:1::1", "2001:db8:2::1", "2001:db8:1::1"]
    assert [Lab.port_name(host) for host in (CLIENT, SERVER, ATTACKER)] == [
        "lan-client", "wan-server", "lan-attacker"]
    assert (ATTACKER.address4, ATTACKER.address6) == ("198.51.100.66", "2001:db8:1::66")


@pytest.mark.parametrize(("host", "message"), [
    (Host("Client", "lan", "198.51.100.20/24", "2001:db8:1::20/64"), "bad host name 'Client'"),
    (Host("fw", "lan", "198.51.100.20/24", "2001:db8:1::20/64"), "bad host name 'fw'"),
    (Host("attacker2345", "lan", "198.51.100.20/24", "2001:db8:1::20/64"), "bad host name"),
    (Host("peer", "dmz", "192.0.2.20/24", "2001:db8:3::20/64"), "host 'peer': no segment 'dmz'"),
])
def test_bad_hosts_are_refused(host: Host, message: str) -> None:
    with pytest.raises(LabError, match=message):
        Lab(hosts=(CLIENT, SERVER, host))


@pytest.mark.parametrize("prefix", ["", "has space-", "slash/", "x" * 41])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(LabError, match="bad lab prefix"):
        Lab(prefix)


def test_an_unknown_host_is_named_in_the_error() -> None:
    with pytest.raises(LabError, match=r"no host 'attacker' in this lab \(hosts: client, server\)"):
        Lab().namespace("attacker")


def test_urls_bracket_ipv6() -> None:
    assert netns.url("203.0.113.10", 8080, "/a") == "http://203.0.113.10:8080/a"
    assert netns.url("2001:db8:2::10", 80) == "http://[2001:db8:2::10]:80/"
