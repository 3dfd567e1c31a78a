"""NAT source ports against the host's ip_local_port_range (fw/drivers/local_ports.py), and the
warning `fw run` prints for them."""

from fw.drivers.local_ports import local_port_range, overlaps
from fw.policy import load_policy

POLICY = """\
version: 1
defaults: {action: drop}
rules:
  - {name: out, action: accept, src: 198.51.100.0/24}
nat:
  - {name: home, type: masquerade, src: 198.51.100.0/24}
  - {name: narrow, type: masquerade, src: 198.51.100.0/25, ports: 1024-32767}
  - {name: pool, type: snat, src: 198.51.100.0/24, to: 203.0.113.5}
  - {name: mine, type: snat, src: 198.51.100.0/24, to: 192.0.2.1, ports: 40000-40100}
"""


def test_the_range_is_read_from_proc_and_a_missing_file_is_none(tmp_path):
    (tmp_path / "range").write_text("32768\t60999\n")
    assert local_port_range(tmp_path / "range") == (32768, 60999)
    assert local_port_range(tmp_path / "missing") is None
    first, last = local_port_range()
    assert 0 < first <= last <= 65535


def test_only_entries_on_the_firewalls_own_addresses_whose_ports_overlap_are_named(tmp_path):
    path = tmp_path / "nat.yaml"
    path.write_text(POLICY)
    entries = load_policy(path).nat
    own = {bytes([192, 0, 2, 1])}
    lines = overlaps(entries, (32768, 60999), local=lambda address: address in own)
    assert [line.split("'")[1] for line in lines] == ["home", "mine"]
    assert lines[0].startswith(f"nat entry 'home' ({path}:6): its ports 1024-65535 overlap this host's "
                               "ip_local_port_range 32768-60999 and masquerade uses the firewall's own address")
    assert "e.g. ports: 1024-32767" in lines[0]
    assert "snat to 192.0.2.1, one of the firewall's own addresses" in lines[1]
    assert [line.split("'")[1] for line in overlaps(entries, (61000, 65000), local=lambda address: False)] \
        == ["home"]  # narrow's 1024-32767 is clear of 61000-65000; the snat pools are not local


def test_an_address_of_this_host_is_local_and_a_documentation_address_is_not():
    from fw.drivers.local_ports import is_local

    assert is_local(bytes([127, 0, 0, 1]))
    assert not is_local(bytes([203, 0, 113, 254]))
