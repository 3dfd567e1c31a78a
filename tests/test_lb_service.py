"""All of a policy's virtual servers in one worker (fw/lb/service.py): lookup, health, drain, status.

The specs come from the golden good file (tests/lb_golden/good-1.yaml), parsed as the policy will.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from fw.lb.health import HealthChange
from fw.lb.service import VirtualServers
from fw.packet.constants import PROTO_TCP, PROTO_UDP
from tests.test_policy_virtual_servers import parse


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


@pytest.fixture
def services() -> VirtualServers:
    specs, diagnostics = parse("good-1")
    assert diagnostics == ""
    return VirtualServers(specs)


def test_a_destination_finds_its_virtual_server(services):
    spec, balancer = services.lookup(packed("203.0.113.100"), PROTO_TCP, 443)
    assert spec.name == "api" and balancer.name == "api"
    assert services.lookup(packed("2001:db8::53"), PROTO_UDP, 53)[0].name == "dns6"
    assert services.lookup(packed("203.0.113.100"), PROTO_UDP, 80) is None
    assert services.lookup(packed("203.0.113.101"), PROTO_TCP, 80) is None
    assert len(services) == 3


def test_health_targets_are_per_virtual_server(services):
    targets = services.health_targets()
    assert [(key, address, port) for key, address, port, _ in targets] == [
        (("web", "203.0.113.21:8080"), "203.0.113.21", 8080),
        (("web", "203.0.113.22:8080"), "203.0.113.22", 8080),
        (("api", "203.0.113.31:8443"), "203.0.113.31", 8443),
    ]
    assert targets[2][3].type == "http" and targets[2][3].path == "/healthz?full=1"


def test_health_changes_reach_the_balancer(services):
    _, web = services.lookup(packed("203.0.113.100"), PROTO_TCP, 80)
    assert services.apply(HealthChange(("web", "203.0.113.22:8080"), "up", "down", "connection refused"))
    services.work(1 << 30)
    picks = {web.choose(bytes([198, 51, 100, i]), 1000 + i, 0).name for i in range(200)}
    assert picks == {"203.0.113.21:8080"}
    assert not services.apply(HealthChange(("gone", "203.0.113.22:8080"), "down", "up", "HTTP 200"))
    assert not services.apply(HealthChange(("web", "203.0.113.99:8080"), "down", "up", "HTTP 200"))
    services.apply(HealthChange(("web", "203.0.113.22:8080"), "down", "up", "connected"))
    while not services.work(500):
        pass
    assert web.server("203.0.113.22:8080").available


def test_drain_enable_and_status(services):
    services.drain("web", "203.0.113.21:8080")
    _, web = services.lookup(packed("203.0.113.100"), PROTO_TCP, 80)
    web.opened(web.server("203.0.113.21:8080"))
    rows = services.status({("web", "203.0.113.22:8080"): (12.5, True, "connected")})
    json.dumps(rows)  # plain data
    assert rows[0] == {
        "name": "web", "address": "203.0.113.100", "proto": "tcp", "port": 80, "scheduler": "maglev",
        "real_servers": [
            {"server": "203.0.113.21:8080", "health": "drained", "weight": 0, "active": 1, "opened": 1,
             "last_check": None},
            {"server": "203.0.113.22:8080", "health": "up", "weight": 2, "active": 0, "opened": 0,
             "last_check": {"at": 12.5, "ok": True, "why": "connected"}},
        ],
    }
    assert [s["server"] for s in rows[1]["real_servers"]] == ["[2001:db8::21]:53", "[2001:db8::22]:53"]
    assert rows[1]["real_servers"][1]["health"] == "drained"
    services.enable("web", "203.0.113.21:8080")
    assert services.status()[0]["real_servers"][0]["weight"] == 1
    with pytest.raises(KeyError, match="no virtual server 'www'"):
        services.drain("www", "203.0.113.21:8080")


def test_persistence_tables_expire_together(services):
    _, api = services.lookup(packed("203.0.113.100"), PROTO_TCP, 443)
    api.choose(b"\xc0\x00\x02\x01", 1000, 0.0)
    assert services.expire(599.0) == 0 and services.expire(600.0) == 1
