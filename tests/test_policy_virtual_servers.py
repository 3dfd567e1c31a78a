"""The `virtual_servers` list (fw/policy/virtual_servers.py): golden files and parsed values.

`tests/lb_golden/bad-N.yaml` beside `bad-N.err` (the exact diagnostics expected, every error at
once, as tests/policy_golden does for whole policies); `good-N.yaml` parse without a diagnostic.
The files are composed and the list parsed directly; whole policies are loaded at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from yaml.nodes import MappingNode

from fw.lb.schedulers import SCHEDULERS
from fw.packet.constants import PROTO_TCP, PROTO_UDP
from fw.policy import load_policy_sources
from fw.policy.diagnostics import PolicyError, Reporter
from fw.policy.fields import INVALID
from fw.policy.source import compose
from fw.policy.virtual_servers import HealthSpec, RealServerSpec, VirtualServer, virtual_servers

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path("tests/lb_golden")
CASES = sorted(p.stem for p in (ROOT / GOLDEN).glob("*.yaml"))


def parse(case: str):
    """(parsed list or INVALID, formatted diagnostics)."""
    text = (ROOT / GOLDEN / f"{case}.yaml").read_text()
    sink: list = []
    rep = Reporter(str(GOLDEN / f"{case}.yaml"), text, sink)
    root = compose(rep, text)
    assert isinstance(root, MappingNode) and not sink
    node = next(value for key, value in root.value if key.value == "virtual_servers")
    result = virtual_servers(rep, node)
    ordered = sorted(sink, key=lambda d: d.sort_key({}))  # by line and column, as the loader does
    return result, "".join(d.format() + "\n" for d in ordered)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("bad-")])
def test_bad_virtual_servers_report_every_error_exactly(case):
    result, text = parse(case)
    assert result is INVALID
    assert text == (ROOT / GOLDEN / f"{case}.err").read_text()


def test_every_bad_case_has_its_expected_text():
    bad = {c for c in CASES if c.startswith("bad-")}
    assert bad == {p.stem for p in (ROOT / GOLDEN).glob("*.err")} and len(bad) >= 5


def test_good_virtual_servers_parse_with_their_defaults():
    result, text = parse("good-1")
    assert text == ""
    web, dns6, api = result
    assert web == VirtualServer(
        "web", "203.0.113.100", 4, PROTO_TCP, 80,
        (RealServerSpec("203.0.113.21", 8080, 1), RealServerSpec("203.0.113.22", 8080, 2)),
        scheduler="maglev", maglev_table_size=65537, persistence=0, full_nat=False, when_all_down="reject",
        health=HealthSpec("tcp", 2.0, 1.0, 2, 2), file="tests/lb_golden/good-1.yaml", line=3)
    assert (dns6.family, dns6.proto, dns6.scheduler, dns6.maglev_table_size, dns6.health) == (6, PROTO_UDP, "wlc",
                                                                                             None, None)
    assert [s.name for s in dns6.real_servers] == ["[2001:db8::21]:53", "[2001:db8::22]:53"]
    assert [s.weight for s in dns6.real_servers] == [1, 0]
    assert api.maglev_table_size == 65537 and api.full_nat and api.when_all_down == "drop"
    assert api.health == HealthSpec("http", 0.5, 0.25, 3, 1, "/healthz?full=1", 204)


def test_the_default_table_size_grows_with_the_real_servers():
    servers = "\n".join(f"      - {{address: 198.51.{100 + i // 250}.{i % 250 + 1}}}" for i in range(1000))
    text = (f"virtual_servers:\n  - name: big\n    address: 203.0.113.100\n    proto: tcp\n    port: 80\n"
            f"    scheduler: maglev\n    real_servers:\n{servers}\n")
    sink: list = []
    rep = Reporter("big.yaml", text, sink)
    [big] = virtual_servers(rep, compose(rep, text).value[0][1])
    assert big.maglev_table_size == 100003 and not sink


def test_the_schedulers_are_the_balancers():
    from fw.policy.virtual_servers import SCHEDULERS as NAMES
    assert NAMES == tuple(SCHEDULERS)


def test_the_policy_takes_virtual_servers_from_every_file_of_a_folder():
    """`virtual_servers` lists concatenate across files (as `nat`); names and addresses stay unique."""
    text = (ROOT / GOLDEN / "good-1.yaml").read_text()
    other = ("virtual_servers:\n  - {name: web2, address: 203.0.113.101, proto: tcp, port: 80,\n"
             "     real_servers: [{address: 203.0.113.40}]}\n")
    policy = load_policy_sources([("a.yaml", "version: 1\n" + text), ("b.yaml", other)])
    assert [vs.name for vs in policy.virtual_servers] == ["web", "dns6", "api", "web2"]
    assert policy.translates
    again = other.replace("web2", "web")
    with pytest.raises(PolicyError) as caught:
        load_policy_sources([("a.yaml", "version: 1\n" + text), ("b.yaml", again)])
    assert "'web'" in caught.value.diagnostics[0].message and caught.value.diagnostics[0].file == "b.yaml"
