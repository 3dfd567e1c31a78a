"""The lab as SPEC draws it: addresses, routes, forwarding without a firewall, clean build and removal."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from fw.lab import ATTACKER, Lab, LabError, ip, list_namespaces
from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

# (namespace, interface) -> its global addresses, exactly SPEC's "The lab".
SPEC_ADDRESSES = {
    ("client", "eth0"): {"198.51.100.10/24", "2001:db8:1::10/64"},
    ("fw", "lan"): {"198.51.100.1/24", "2001:db8:1::1/64"},
    ("fw", "wan"): {"203.0.113.1/24", "2001:db8:2::1/64"},
    ("server", "eth0"): {"203.0.113.10/24", "2001:db8:2::10/64"},
}


def global_addresses(lab: Lab, name: str) -> dict[str, set[str]]:
    """Interface -> {"address/prefixlen"} of global scope in `name`'s namespace."""
    found: dict[str, set[str]] = {}
    for link in lab.addresses(name):
        for info in link.get("addr_info", []):
            if info.get("scope") == "global":
                found.setdefault(link["ifname"], set()).add(f"{info['local']}/{info['prefixlen']}")
    return found


def sysctl(lab: Lab, name: str, key: str) -> str:
    return lab.run(name, ["sysctl", "-n", key]).stdout.strip()


def snapshot(lab: Lab) -> dict:
    """Everything up() configures, per namespace: links (name, master, state), addresses, routes."""
    state = {}
    for name in ("fw", *lab.hosts):
        links = sorted((link["ifname"], link.get("master"), "UP" in link["flags"])
                       for link in lab.links(name))
        routes = [lab.run(name, ["ip", f"-{family}", "route", "show"]).stdout for family in (4, 6)]
        state[name] = (links, global_addresses(lab, name), routes)
    return state


# -- addresses and routes ------------------------------------------------------------------------


def test_addresses_are_specs(lab: Lab) -> None:
    for (name, interface), expected in SPEC_ADDRESSES.items():
        assert global_addresses(lab, name).get(interface) == expected, (name, interface)


def test_namespaces_carry_the_prefix(lab: Lab) -> None:
    assert lab.namespaces == [f"{lab.prefix}fw", f"{lab.prefix}client", f"{lab.prefix}server"]
    assert set(lab.namespaces) <= set(list_namespaces())


def test_default_routes_lead_through_the_firewall(lab: Lab) -> None:
    for name, gateway4, gateway6 in (("client", "198.51.100.1", "2001:db8:1::1"),
                                     ("server", "203.0.113.1", "2001:db8:2::1")):
        assert lab.run(name, ["ip", "-4", "route", "show", "default"]).stdout.split()[:5] == [
            "default", "via", gateway4, "dev", "eth0"]
        assert lab.run(name, ["ip", "-6", "route", "show", "default"]).stdout.split()[:5] == [
            "default", "via", gateway6, "dev", "eth0"]


def test_firewall_forwards_both_families_with_rp_filter_off(lab: Lab) -> None:
    assert sysctl(lab, "fw", "net.ipv4.ip_forward") == "1"
    assert sysctl(lab, "fw", "net.ipv6.conf.all.forwarding") == "1"
    for name in ("fw", "client", "server"):
        assert sysctl(lab, name, "net.ipv4.conf.all.rp_filter") == "0"
        assert sysctl(lab, name, "net.ipv4.conf.default.rp_filter") == "0"


def test_ipv6_addresses_are_usable_at_once(lab: Lab) -> None:
    flags = {(name, link["ifname"], info["local"]): info
             for name in ("fw", "client", "server") for link in lab.addresses(name)
             for info in link.get("addr_info", []) if info["family"] == "inet6"}
    assert not [where for where, info in flags.items() if info.get("tentative") or info.get("dadfailed")]
    # No settling pause: the lab fixture has only just built the namespaces.
    assert netns.ping(lab, "2001:db8:2::10", timeout=2) == 1


# -- traffic with no firewall running -------------------------------------------------------------


@pytest.mark.parametrize("address", ["198.51.100.1", "2001:db8:1::1"])
def test_client_pings_the_firewall(lab: Lab, address: str) -> None:
    assert netns.ping(lab, address, count=2) == 2


def test_ping_of_an_absent_host_gets_no_reply(lab: Lab) -> None:
    assert netns.ping(lab, "203.0.113.99", timeout=1) == 0


@pytest.mark.parametrize("address", ["203.0.113.10", "2001:db8:2::10"])
def test_client_reaches_the_server_over_http(lab: Lab, tmp_path, address: str) -> None:
    (tmp_path / "index.html").write_text("hello from the server\n")
    with netns.http_server(lab, tmp_path, port=8080):
        done = netns.curl(lab, netns.url(address, 8080, "/index.html"))
    assert (done.returncode, done.stdout) == (0, "hello from the server\n")


def test_tcp_sink_hashes_what_crossed_the_firewall(lab: Lab) -> None:
    with netns.tcp_sink(lab, 9000) as sink:
        sent = netns.tcp_send(lab, "203.0.113.10", 9000, nbytes=2_000_000, seed=7)
        received = sink.json()
    assert sent["bytes"] == 2_000_000
    assert received == sent


@pytest.mark.parametrize("address", ["203.0.113.10", "2001:db8:2::10"])
def test_udp_echo_through_the_firewall(lab: Lab, address: str) -> None:
    with netns.udp_echo(lab, 5353, count=3) as echo:
        replies = netns.udp_exchange(lab, address, 5353, [b"one", b"two", b"three"])
        assert echo.json() == {"echoed": 3}
    assert replies == [b"one", b"two", b"three"]


def test_nc_listener_gets_what_nc_sent(lab: Lab) -> None:
    with netns.nc_listen(lab, 7000) as listener:
        assert netns.nc_send(lab, "203.0.113.10", 7000, b"hello over nc\n").returncode == 0
        listener.wait(5)
    assert listener.stdout == b"hello over nc\n"


def test_wait_for_port_times_out_when_nothing_listens(lab: Lab) -> None:
    with pytest.raises(TimeoutError, match="port 9 in server"):
        netns.wait_for_port(lab, "server", 9, timeout=0.2)


def test_run_raises_with_the_commands_message(lab: Lab) -> None:
    with pytest.raises(LabError, match="client: ls /nonexistent: exit 2: .*No such file"):
        lab.run("client", ["ls", "/nonexistent"])
    assert lab.run("client", ["false"], check=False).returncode == 1
    with pytest.raises(LabError, match="no host 'nobody'"):
        lab.run("nobody", ["true"])


# -- extra hosts ---------------------------------------------------------------------------------


def test_an_attacker_joins_the_client_side(lab: Lab, tmp_path) -> None:
    lab.add_host(ATTACKER)
    assert global_addresses(lab, "attacker")["eth0"] == {"198.51.100.66/24", "2001:db8:1::66/64"}
    assert netns.ping(lab, "198.51.100.1", name="attacker") == 1
    assert netns.ping(lab, "198.51.100.10", name="attacker") == 1  # same segment: bridged
    (tmp_path / "index.html").write_text("served\n")
    with netns.http_server(lab, tmp_path, port=8080):
        for name in ("attacker", "client"):
            assert netns.curl(lab, netns.url("2001:db8:2::10", 8080, "/index.html"), name=name).stdout == (
                "served\n")
    lab.down()
    assert not [name for name in list_namespaces() if name.startswith(lab.prefix)]


# -- building and removing -----------------------------------------------------------------------


def test_up_again_changes_nothing(lab: Lab) -> None:
    before = snapshot(lab)
    lab.up()
    assert snapshot(lab) == before


def test_up_repairs_a_partial_lab(lab: Lab) -> None:
    ip("netns", "delete", lab.namespace("server"))
    ip("-n", lab.namespace("fw"), "addr", "flush", "dev", "lan")
    lab.up()
    assert global_addresses(lab, "fw")["lan"] == SPEC_ADDRESSES["fw", "lan"]
    assert netns.ping(lab, "203.0.113.10") == 1


def test_down_removes_every_namespace_and_is_safe_twice(lab: Lab) -> None:
    lab.down()
    assert not [name for name in list_namespaces() if name.startswith(lab.prefix)]
    assert not lab.is_up()
    lab.down()


def test_down_after_a_partial_up(lab_prefix) -> None:
    partial = Lab(lab_prefix())
    ip("netns", "add", partial.namespace("fw"))
    ip("netns", "add", partial.namespace("client"))
    partial.down()
    assert not [name for name in list_namespaces() if name.startswith(partial.prefix)]


def test_context_manager_builds_and_removes(lab_prefix) -> None:
    with Lab(lab_prefix()) as built:
        assert built.is_up()
    assert not [name for name in list_namespaces() if name.startswith(built.prefix)]


def test_down_ends_processes_left_in_the_lab(lab: Lab) -> None:
    sleeper = lab.popen("server", ["sleep", "60"], stdout=subprocess.DEVNULL)
    time.sleep(0.1)
    lab.down()
    assert sleeper.wait(timeout=5) == -15  # SIGTERM


def peer_namespaces(*namespace: str) -> dict[int, str | None]:
    """nsid -> namespace name, as seen from `namespace` (the host's own when none is given)."""
    listing = ip(*(("-n", namespace[0]) if namespace else ()), "-j", "netns", "list-id").stdout
    return {entry["nsid"]: entry.get("name") for entry in json.loads(listing or "[]")}


def test_the_lab_is_not_linked_to_the_hosts_interfaces(lab: Lab) -> None:
    mine = set(lab.namespaces)
    for namespace in lab.namespaces:
        names = peer_namespaces(namespace)
        for link in json.loads(ip("-n", namespace, "-j", "link", "show", "type", "veth").stdout):
            assert names[link["link_netnsid"]] in mine, (namespace, link["ifname"])
    host_names = peer_namespaces()
    host_links = json.loads(ip("-j", "link", "show").stdout)
    assert not [link["ifname"] for link in host_links if host_names.get(link.get("link_netnsid")) in mine]
    assert not [link["ifname"] for link in host_links if link["ifname"] in ("lan", "wan", "lan-client")]
