"""Replay of the third-party captures in ../shared/corpus with an expected verdict for every packet.

The per-packet expectations live in tests/corpus/expected/NAME.jsonl (exactly `fw replay --json`'s
output). They were derived by running the engine and then checked packet by packet against what
nf_conntrack does and what the capture's MANIFEST entry says it holds; the reasoning for each
capture is in the test below that names it, which asserts the packets that matter by hand, so a
golden file regenerated from a broken engine does not pass silently.
Regenerate the golden files (after a deliberate change) with FW_REGEN=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fw.drivers.replay import replay
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy

HERE = Path(__file__).parent / "corpus"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"  # ../shared/corpus from the repo
CAPTURES = sorted(p.name for p in CORPUS.glob("*.pcap")) if CORPUS.is_dir() else []

pytestmark = pytest.mark.skipif(not CAPTURES, reason=f"no corpus at {CORPUS}")


def run(name: str, policy: str = "policy.yaml") -> list[dict]:
    engine = Engine(load_policy(HERE / policy), EngineConfig(events=False))
    return [record.to_json() for record in replay(str(CORPUS / name), engine)]


@pytest.mark.parametrize("name", CAPTURES)
def test_every_packet_as_expected(name):
    got = run(name)
    golden = HERE / "expected" / (name.removesuffix(".pcap") + ".jsonl")
    if os.environ.get("FW_REGEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text("".join(json.dumps(row) + "\n" for row in got))
    expected = [json.loads(line) for line in golden.read_text().splitlines()]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == want, f"packet {row['index']}"


def reasons(rows):
    return [(r["verdict"], r["reason"], r["state"]) for r in rows]


def test_out_of_window_data_is_the_one_drop():
    # SYN, SYN/ACK, then data ~100 KB past the window: Suricata drops exactly that packet;
    # we drop it too and the session stays in SYN_RECV (an out-of-window packet changes nothing).
    for name in ("sv-tcp-out-of-window.pcap", "sv-tcp-ipv6-out-of-window.pcap"):
        assert reasons(run(name)) == [
            ("accept", "rule:web", "SYN_SENT"),
            ("accept", "established", "SYN_RECV"),
            ("drop", "invalid:out-of-window", "SYN_RECV"),
        ]


def test_midstream_is_dropped_without_loose_pickup():
    assert {r["reason"] for r in run("sv-tcp-midstream.pcap")} == {"invalid:no-session"}


def test_split_handshake_goes_through_syn_sent2():
    # Client SYN, server SYN (simultaneous open: SYN_SENT2), client SYN/ACK, server ACK, data, RST.
    states = [r["state"] for r in run("sv-tcp-split-handshake-4whs.pcap")]
    assert states == ["SYN_SENT", "SYN_SENT2", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED", "CLOSE"]


def test_fin_in_syn_sent_is_invalid():
    rows = run("zeek-tcp-fin-in-syn-sent.pcap")
    assert reasons(rows)[1] == ("drop", "invalid:flags", "SYN_SENT")  # a bare FIN without ACK


def test_injected_reset_before_syn_ack_is_refused():
    # RFC 9293 3.10.7.3: in SYN-SENT a reset is acceptable only if it acknowledges the SYN;
    # this one carries ack 0, so it is out of window and the handshake goes on.
    rows = run("zeek-tcp-rst-inject.pcap")
    assert reasons(rows)[1] == ("drop", "invalid:out-of-window", "SYN_SENT")
    assert rows[2]["state"] == "SYN_RECV" and rows[3]["state"] == "ESTABLISHED"
    assert rows[6]["state"] == "CLOSE"  # the server's real reset closes


def test_retransmission_is_accepted_and_reset_closes():
    rows = run("sv-tcp-retrans-then-rst.pcap")
    assert all(r["verdict"] == "accept" for r in rows)
    assert rows[-1]["state"] == "CLOSE"


def test_reordered_handshake_does_not_open_the_flow_backwards():
    # The SYN/ACK was captured before the SYN: it matches no session. The client's ACK that
    # follows the SYN acknowledges a SYN/ACK the firewall never passed: invalid (nf_conntrack:
    # ACK in SYN_SENT is sIV). Server packets in SYN_SENT are "ignored" (sIG) and pass, as in
    # nf_conntrack, which lets them resynchronise a table that missed packets.
    rows = run("zeek-tcp-handshake-reorder-fin-teardown.pcap")
    assert reasons(rows)[0] == ("drop", "invalid:no-session", None)
    assert reasons(rows)[1] == ("accept", "rule:web", "SYN_SENT")
    assert ("drop", "invalid:state", "SYN_SENT") in reasons(rows)


FTP_DATA_FLOWS = {
    "sv-ftp-download-active.pcap": 3,
    "sv-ftp-download-passive.pcap": 3,
    "sv-ftp-upload-active.pcap": 3,
    "sv-ftp-upload-passive.pcap": 3,
    "sv-ftp-all-data-ipv4.pcap": 14,
    "sv-ftp-all-data-ipv6.pcap": 14,
    "zeek-ftp-ipv4.pcap": 4,
    "zeek-ftp-ipv6.pcap": 5,
    "sv-ftp-bounce.pcap": 0,
    "sv-ftp-eprt-ipv6-over-ipv4.pcap": 0,
}


@pytest.mark.parametrize("name", sorted(FTP_DATA_FLOWS))
def test_ftp_data_flows_come_in_as_related(name):
    # Every data connection the MANIFEST lists is opened by an expectation of the ALG and nothing
    # else: the policy allows only port 21. The bounce and the IPv6-over-IPv4 EPRT open nothing.
    rows = run(name)
    assert sum(r["reason"] == "related:ftp" for r in rows) == FTP_DATA_FLOWS[name]
    assert all(r["verdict"] == "accept" for r in rows)


@pytest.mark.parametrize("name", ["sv-ftp-download-active.pcap", "zeek-ftp-ipv6.pcap"])
def test_without_the_alg_data_connections_are_dropped(name):
    rows = run(name, "policy-no-alg.yaml")
    assert not any(r["reason"] == "related:ftp" for r in rows)
    assert sum(r["reason"] == "default" for r in rows) >= FTP_DATA_FLOWS[name]
