"""The `nat` key in a whole policy (merged across files, in the revision) and what `fw run` refuses
with a translating policy (SPEC: `--fail-open`; `--queues` for now; a reload into one when the
daemon was started without NAT's hooks)."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from fw.cli import main
from fw.cli.daemon import NAT_NOT_HOOKED, _without_translation
from fw.policy import PolicyError, load_policy

BASE = """
version: 1
rules: [{name: out, action: accept}]
"""
NAT = """
nat:
  - {name: outbound, type: snat, src: 198.51.100.0/24, to: 203.0.113.1, ports: "20000-29999"}
"""


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_nat_entries_merge_across_files_in_order(tmp_path):
    write(tmp_path, "10-base.yaml", BASE + NAT)
    write(tmp_path, "20-more.yaml", """
        nat:
          - {name: web, type: dnat, proto: tcp, dport: 8080, to: "198.51.100.10:80"}
    """)
    policy = load_policy(tmp_path)
    assert [(e.name, e.index, e.type) for e in policy.nat] == [("outbound", 0, "snat"), ("web", 1, "dnat")]
    assert policy.translates
    write(tmp_path, "30-dup.yaml", "nat: [{name: web, type: masquerade}]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)
    assert "duplicate nat entry name 'web' (first at " in caught.value.format()


def test_the_revision_changes_with_nat_only_when_there_is_some(tmp_path):
    plain = load_policy(write(tmp_path, "a.yaml", BASE))
    empty = load_policy(write(tmp_path, "b.yaml", BASE + "nat: []\n"))
    with_nat = load_policy(write(tmp_path, "c.yaml", BASE + NAT))
    assert not plain.translates and not empty.translates
    assert plain.revision != with_nat.revision


@pytest.mark.parametrize("extra, message", [
    (["--queues", "0-1"], "--queues is refused with a policy that translates addresses (nat): "
                          "use one queue (--queue N)"),
    (["--fail-open"], "--fail-open is refused with a policy that translates addresses (nat): "
                      "untranslated traffic would leak while no daemon listens"),
])
def test_fw_run_refuses_a_translating_policy_in_one_line(tmp_path, extra, message):
    path = write(tmp_path, "p.yaml", BASE + NAT)
    result = CliRunner().invoke(main, ["run", "--policy", str(path), *extra])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]


def test_a_reload_into_a_translating_policy_is_refused(tmp_path):
    load = _without_translation(load_policy)
    assert load(write(tmp_path, "plain.yaml", BASE)).rules
    with pytest.raises(PolicyError) as caught:
        load(write(tmp_path, "nat.yaml", BASE + NAT))
    assert NAT_NOT_HOOKED in caught.value.format()
