"""dashboards/fw-grafana.json asks only for metrics, and labels, that fw run --metrics exports.

The exported names are read from a real `fw.metrics.Metrics` (an engine over policies/lab.yaml that
judged a few packets, rendered by prometheus-client as Prometheus scrapes it), not from a list here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from fw.decision import Verdicts
from fw.engine import Engine, EngineConfig
from fw.metrics import Metrics, RuleCounters
from fw.policy import load_policy
from tests.packets import seg, udp_pkt

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((ROOT / "dashboards" / "fw-grafana.json").read_text())
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series


def exported() -> dict[str, set[str]]:
    """{series name: its label names} as a scrape of fw's metrics shows them."""
    engine = Engine(load_policy(str(ROOT / "policies" / "lab.yaml")), EngineConfig(events=False))
    rules, verdicts = RuleCounters(), Verdicts()  # final verdicts are the packet handler's count
    for index, packet in enumerate([seg("198.51.100.10:40000", "203.0.113.10:80", "S", seq=1),
                                    udp_pkt("198.51.100.10:40000", "203.0.113.10:9999", b"x")]):
        decision = engine.process(packet, float(index))
        rules.count(decision)
        verdicts.count(decision.verdict, decision.reason)
    metrics = Metrics(engine, rules=rules, verdicts=verdicts)
    series: dict[str, set[str]] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            series.setdefault(f"{name}_total" if kind == "counter" else name, set())
        elif line and not line.startswith("#"):
            name, _, labels = line.partition("{")
            series.setdefault(name.split()[0], set()).update(re.findall(r'(\w+)="', labels))
    return series


EXPORTED = exported()


def expressions() -> list[tuple[str, str]]:
    found = [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel.get("targets", ())]
    found += [(f"variable {v['name']}", v["query"]["query"]) for v in DASHBOARD["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    return found


def problems(expression: str) -> list[str]:
    """What in one PromQL expression fw does not export (metric names, label names)."""
    text = re.sub(r'"[^"]*"', '""', expression)  # label values out of the way
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    names = set(re.findall(r"\bfw_\w+", text))
    found = [f"metric {name} is not exported" for name in sorted(names - set(EXPORTED))]
    if not names:
        found.append("names no fw metric")
    labels = set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)\s*\"", re.sub(r'"[^"]*"', '"v"', expression)))
    labels |= {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", text) for label in group.split(",")}
    known = set().union(*(EXPORTED.get(name, set()) for name in names)) | SCRAPE_LABELS
    found += [f"label {label} is on none of {sorted(names)}" for label in sorted(labels - known)]
    return found


def test_the_scrape_shows_the_metrics_the_readme_lists() -> None:
    assert {"fw_sessions", "fw_sessions_limit", "fw_packets_total", "fw_rule_packets_total",
            "fw_session_events_total", "fw_policy_info"} <= set(EXPORTED)
    assert {"verdict", "reason"} <= EXPORTED["fw_packets_total"]


@pytest.mark.parametrize("where,expression", expressions(), ids=[title for title, _ in expressions()])
def test_every_expression_names_what_fw_exports(where: str, expression: str) -> None:
    assert not problems(expression), f"{where}: {expression}: {problems(expression)}"


def test_the_check_finds_a_wrong_name_or_label() -> None:
    assert problems("rate(fw_packet_total[5m])") == ["metric fw_packet_total is not exported"]
    assert problems('sum by (colour) (rate(fw_packets_total{verdict="drop"}[5m]))') == \
        ["label colour is on none of ['fw_packets_total']"]
    assert problems("up") == ["names no fw metric"]


def test_the_dashboard_is_importable() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 30
    assert DASHBOARD["__inputs"][0]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
