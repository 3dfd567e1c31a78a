"""The `daemon` fixture end to end: `fw run` in the lab's fw namespace filters client -> server."""

from __future__ import annotations

import pytest

from fw.cli import main
from fw.lab import Lab
from tests import netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.root,
    pytest.mark.skipif("run" not in main.commands, reason="`fw run` is not registered yet"),
]

WEB_ONLY = """\
version: 1
defaults: {action: drop, log: false}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - name: allow-web
    action: accept
    proto: tcp
    src: $clients
    dport: 8080
"""


@pytest.fixture
def web_and_other(lab: Lab, tmp_path):
    """http.server on 8080 (allowed) and on 8081 (not), serving one file."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("through the firewall\n")
    with netns.http_server(lab, tmp_path / "www", 8080), netns.http_server(lab, tmp_path / "www", 8081):
        yield


@pytest.mark.parametrize("address", ["203.0.113.10", "2001:db8:2::10"])
def test_the_daemon_passes_what_the_policy_allows_and_drops_the_rest(
        lab: Lab, daemon, web_and_other, tmp_path, address: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(WEB_ONLY)
    firewall = daemon(policy)
    allowed = netns.curl(lab, netns.url(address, 8080, "/index.html"))
    assert (allowed.returncode, allowed.stdout) == (0, "through the firewall\n")
    dropped = netns.curl(lab, netns.url(address, 8081, "/index.html"), max_time=2)
    assert dropped.returncode == 28  # curl: timed out, the SYN was dropped
    assert firewall.fw("stats").returncode == 0
