"""`fw run --offload`: established TCP flows pass in the kernel, the engine keeps their sessions.

The lab tests count what reaches the engine (its packet counters) while a transfer stays intact,
check that the close (FIN) still reaches the engine, that the kernel's timeout read back keeps a
busy offloaded session alive and lets an idle one expire (its mark then cleared, so its packets meet
the engine again), and that cleanup leaves no rule behind.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fw.drivers import offload
from fw.drivers.offload import OFFLOAD_MARK, Entry, mark_message
from fw.lab import Lab, fw_argv
from tests import netns

POLICY = """\
version: 1
defaults: {action: drop, log: false}
timeouts: {tcp_established: 4}
rules:
  - {name: bulk, action: accept, proto: tcp, src: 198.51.100.0/24, dport: 8080}
  - {name: exact-resets, action: accept, proto: tcp, dport: 8081, rst_on_timeout: true}
"""

# In the client namespace: connect, then for each number in argv[3] send 1 KiB and sleep that long;
# print how many bytes went out.
TRICKLE = """
import json, socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
    sent = 0
    for pause in map(float, sys.argv[3].split(",")):
        sent += sock.send(b"x" * 1024)
        time.sleep(pause)
    print(json.dumps({"sent": sent}))
"""


class FakeSession:
    family, proto = 4, 6
    src, dst = bytes([198, 51, 100, 10]), bytes([203, 0, 113, 10])
    sport, dport = 40000, 8080


def test_the_mark_update_names_the_flow_and_the_bit():
    message = mark_message(FakeSession(), OFFLOAD_MARK, OFFLOAD_MARK, seq=7)
    length, kind, flags, seq = struct.unpack_from("=IHHI", message)
    assert length == len(message) and kind == (1 << 8) | 0 and flags == 1 and seq == 7  # CT_NEW: an update
    assert message[16] == 2  # AF_INET
    body = offload.attributes(message, 20)
    assert struct.unpack("!I", body[offload.CTA_MARK]) == (0x40000000,)
    assert struct.unpack("!I", body[offload.CTA_MARK_MASK]) == (0x40000000,)
    # A dump answer carries the same tuple: Entry reads it back to the session's key.
    reply = struct.pack("!BBH", 2, 0, 0) + message[20:] + offload._attr(offload.CTA_TIMEOUT, struct.pack("!I", 299))
    entry = Entry.parse(reply)
    assert (entry.family, entry.proto, entry.sport, entry.dport, entry.timeout) == (4, 6, 40000, 8080, 299)
    assert (entry.src, entry.dst, entry.mark) == (FakeSession.src, FakeSession.dst, OFFLOAD_MARK)
    assert entry.key == (6, FakeSession.src, FakeSession.dst, 40000, 8080)


def stats(fw) -> dict:
    return json.loads(fw.fw("stats", "--json").stdout)


def sessions(fw) -> list[dict]:
    return json.loads(fw.fw("sessions", "--json").stdout)["sessions"]


def kernel_offloaded(lab: Lab) -> int:
    done = lab.run("fw", ["conntrack", "-L", "-p", "tcp", "--mark", f"{OFFLOAD_MARK}/{OFFLOAD_MARK}"], check=False)
    return sum(1 for line in done.stdout.splitlines() if line.startswith("tcp"))


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.netns
@pytest.mark.root
def test_an_offloaded_transfer_stays_intact_and_skips_the_queue(lab: Lab, daemon, policy: Path):
    fw = daemon(policy, "--offload")
    size = 20 << 20
    with netns.tcp_sink(lab, 8080) as sink:
        sent = netns.tcp_send(lab, "203.0.113.10", 8080, size, seed=3)
        assert sink.json() == sent and sent["bytes"] == size
    figures = stats(fw)
    accepted = figures["packets"]["by_verdict"]["accept"]
    assert figures["offload"]["offloaded"] == 1
    # The handshake, the FINs and their neighbours: a handful, where 20 MiB is thousands of segments.
    assert accepted["rule:bulk"] == 1 and accepted["established"] < 20, accepted
    assert figures["packets"]["drop"] == 0
    (session,) = sessions(fw)
    assert "OFFLOADED" in session["flags"] and session["rule"] == "bulk"
    # The FINs reached the engine: the session left ESTABLISHED (the last ACK stays in the kernel).
    assert session["state"] in ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE")
    assert kernel_offloaded(lab) == 1


@pytest.mark.netns
@pytest.mark.root
def test_a_busy_offloaded_session_lives_and_an_idle_one_expires(lab: Lab, daemon, policy: Path):
    """tcp_established is 4 s. A flow that sends every second for 8 s lives on through the kernel's
    timeouts read back; one that then stays idle expires, its mark is cleared, and its next segment
    meets the engine, which has no session for it."""
    fw = daemon(policy, "--offload")
    with netns.tcp_sink(lab, 8080, lifetime=40):
        client = subprocess.Popen(lab.command("client", [sys.executable, "-c", TRICKLE, "203.0.113.10", 8080,
                                                         "1,1,1,1,1,1,1,1,9,0.5"]),
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(8.5)  # 8 KiB sent a second apart: all offloaded, the session alive throughout
        figures = stats(fw)
        assert figures["offload"]["offloaded"] == 1 and figures["sessions"]["expiries"] == 0
        assert figures["offload"]["syncs"] >= 4
        assert figures["packets"]["by_verdict"]["accept"]["established"] <= 3  # only the handshake's ACK
        assert kernel_offloaded(lab) == 1
        time.sleep(7.5)  # idle past 4 s (+ up to a read interval and a tick)
        figures = stats(fw)
        assert figures["sessions"]["expiries"] == 1 and figures["offload"]["released"] == 1
        assert kernel_offloaded(lab) == 0
        out, _ = client.communicate(timeout=30)
        assert json.loads(out)["sent"] == 10 * 1024
        time.sleep(1)
        drops = stats(fw)["packets"]["by_verdict"]["drop"]
        assert drops.get("invalid:no-session", 0) >= 1  # the 10th KiB, after expiry, reached the engine


@pytest.mark.netns
@pytest.mark.root
def test_sessions_with_exact_resets_on_expiry_are_not_offloaded(lab: Lab, daemon, policy: Path):
    fw = daemon(policy, "--offload")
    with netns.tcp_sink(lab, 8081) as sink:
        sent = netns.tcp_send(lab, "203.0.113.10", 8081, 1 << 20)
        assert sink.json() == sent
    figures = stats(fw)
    assert figures["offload"].get("offloaded", 0) == 0 and kernel_offloaded(lab) == 0
    assert figures["packets"]["by_verdict"]["accept"]["established"] > 20  # every segment judged


@pytest.mark.netns
@pytest.mark.root
def test_killing_an_offloaded_session_clears_its_mark(lab: Lab, daemon, policy: Path):
    fw = daemon(policy, "--offload")
    with netns.tcp_sink(lab, 8080, lifetime=20):
        client = subprocess.Popen(lab.command("client", [sys.executable, "-c", TRICKLE, "203.0.113.10", 8080,
                                                         "1,1,1"]), stdout=subprocess.DEVNULL)
        time.sleep(1.5)
        assert kernel_offloaded(lab) == 1
        assert fw.fw("sessions", "kill", "all").stdout.strip() == "1 sessions killed"
        deadline = time.monotonic() + 5
        while kernel_offloaded(lab) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kernel_offloaded(lab) == 0
        assert stats(fw)["offload"]["released"] == 1
        client.wait(20)


@pytest.mark.netns
@pytest.mark.root
def test_the_fast_path_rules_go_with_the_daemon_and_with_cleanup(lab: Lab, policy: Path, tmp_path: Path):
    def fast_path_rules() -> list[str]:
        return [line for line in lab.run("fw", ["iptables-save"]).stdout.splitlines() if "connmark" in line]

    for ending in ("SIGTERM", "SIGKILL then fw cleanup"):
        process = netns.Daemon(lab, policy, tmp_path / "daemon.log", "--offload")
        process.wait_ready()
        assert len(fast_path_rules()) == 2
        if ending == "SIGTERM":
            assert process.stop() == 0
        else:
            process.process.send_signal(signal.SIGKILL)
            process.process.wait(10)
            assert len(fast_path_rules()) == 2
            done = lab.run("fw", fw_argv("cleanup"))
            assert "FW-FORWARD" in done.stdout
        assert fast_path_rules() == [], ending
        assert "FW-" not in lab.run("fw", ["iptables-save"]).stdout
