"""The FTP ALG with real programs: vsftpd in the server namespace, lftp and curl in the client's,
`fw run` in between with a policy that allows nothing but TCP port 21 (default drop).

With `alg: ftp` on that rule, downloads and uploads pass in passive (PASV, EPSV) and active (PORT,
EPRT) mode, over IPv4 and IPv6, byte for byte (sha256 of random files on both sides). Each data
connection is a session of its own, RELATED, whose parent is its control session, and it is exactly
the connection the conversation announced (vsftpd's protocol log says which). Without the ALG the
login still works, but each data connection's SYN falls through to the default drop. With it, a 227
or a PORT that names a host other than the two ends is refused (a bounce) and opens nothing, and
`fw reload` between two transfers keeps the control session and what its ALG knows.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import ftp_lab
from tests.ftp_lab import PASSIVE_PORTS, FtpServer, random_bytes, sha256

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {{action: drop, log: true}}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
  servers: [203.0.113.10, "2001:db8:2::10"]
rules:
  - name: ftp-control
    action: accept
    proto: tcp
    src: $clients
    dst: $servers
    dport: 21
{alg}"""
WITH_ALG = "    alg: ftp\n"

CLIENT4, CLIENT6 = "198.51.100.10", "2001:db8:1::10"
SERVER4, SERVER6 = "203.0.113.10", "2001:db8:2::10"


@dataclass(frozen=True)
class Case:
    family: int
    passive: bool
    port_20: bool = True  # active mode: vsftpd connects from port 20 (else from any port)

    @property
    def client(self) -> str:
        return CLIENT4 if self.family == 4 else CLIENT6

    @property
    def server(self) -> str:
        return SERVER4 if self.family == 4 else SERVER6

    @property
    def verb(self) -> str:
        """What lftp sends for a data connection: PASV/PORT over IPv4, EPSV/EPRT over IPv6."""
        return {(4, True): "PASV", (4, False): "PORT", (6, True): "EPSV", (6, False): "EPRT"}[
            (self.family, self.passive)]


class Firewall:
    """The daemon of the `daemon` fixture, its counters, sessions and EVE events as data."""

    def __init__(self, daemon, eve: Path):
        self.daemon, self.eve = daemon, eve

    def stats(self) -> dict:
        return json.loads(self.daemon.fw("stats", "--json").stdout)

    def sessions(self) -> list[dict]:
        return json.loads(self.daemon.fw("sessions", "--json").stdout)["sessions"]

    def events(self, event_type: str) -> list[dict]:
        lines = self.eve.read_text().splitlines() if self.eve.exists() else []
        return [event for event in map(json.loads, lines) if event["event_type"] == event_type]


@pytest.fixture
def firewall(daemon, tmp_path: Path):
    """`firewall(alg=True)`: `fw run` with the port-21-only policy, events logged to a file."""

    def start(alg: bool) -> Firewall:
        policy = tmp_path / ("ftp-alg.yaml" if alg else "ftp-no-alg.yaml")
        policy.write_text(POLICY.format(alg=WITH_ALG if alg else ""))
        eve = tmp_path / "eve.json"
        return Firewall(daemon(policy, "--log", str(eve)), eve)

    return start


@pytest.fixture
def ftp_server(lab: Lab, tmp_path: Path):
    """`ftp_server(port_20=True, **vsftpd_options)`: vsftpd in the server namespace until the test ends."""
    servers: list[FtpServer] = []

    def start(port_20: bool = True, **options: str) -> FtpServer:
        servers.append(FtpServer(lab, tmp_path / f"ftp-{len(servers)}", port_20=port_20, **options))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()


def data_sessions(sessions: list[dict]) -> list[dict]:
    return [session for session in sessions if "RELATED" in session["flags"]]


def control_sessions(sessions: list[dict]) -> list[dict]:
    return [session for session in sessions if session["original"].get("dport") == 21]


# -- with the ALG: every transfer passes, byte for byte ------------------------------------------

LFTP_CASES = [
    pytest.param(Case(4, passive=True), id="ipv4-pasv"),
    pytest.param(Case(4, passive=False), id="ipv4-port-from-20"),
    pytest.param(Case(4, passive=False, port_20=False), id="ipv4-port-from-any"),
    pytest.param(Case(6, passive=True), id="ipv6-epsv"),
    pytest.param(Case(6, passive=False), id="ipv6-eprt-from-20"),
    pytest.param(Case(6, passive=False, port_20=False), id="ipv6-eprt-from-any"),
]


@pytest.mark.parametrize("case", LFTP_CASES)
def test_lftp_downloads_and_uploads_through_the_alg(lab, ftp_server, firewall, tmp_path, case: Case):
    server = ftp_server(port_20=case.port_20)
    served = server.publish("download.bin", random_bytes(case.family, 3 * 2**20 + 12345))
    upload = tmp_path / "upload.bin"
    upload.write_bytes(random_bytes(100 + case.family, 2 * 2**20 + 54321))
    received = tmp_path / "received"
    received.mkdir()
    running = firewall(alg=True)

    done = ftp_lab.lftp(lab, ftp_lab.ftp_url(case.server), [
        f"get -O {received} download.bin",
        f"put -O pub {upload} -o upload.bin",
    ], passive=case.passive)

    assert done.returncode == 0, f"lftp failed: {done.stdout}{done.stderr}"
    assert sha256(received / "download.bin") == sha256(served)
    assert sha256(server.uploaded("upload.bin")) == sha256(upload)
    announced = server.data_commands()
    assert [command.split(" ")[0] for command in announced] == [case.verb, case.verb]
    if not case.passive:  # the client announced its own address
        assert all(case.client.replace(".", ",") in command or f"|{case.client}|" in command
                   for command in announced)

    stats = running.stats()
    accepted = stats["packets"]["by_verdict"]["accept"]
    assert (accepted["rule:ftp-control"], accepted["related:ftp"]) == (1, 2)
    assert stats["drops"] == {}
    assert stats["engine"]["expectations"] == 2

    sessions = running.sessions()
    [control] = control_sessions(sessions)
    assert (control["rule"], control["alg"], control["parent"]) == ("ftp-control", "ftp", None)
    data = data_sessions(sessions)
    assert len(data) == 2 == len(sessions) - 1
    for session in data:
        assert (session["parent"], session["rule"], session["alg"]) == (control["id"], "ftp-control", None)
        assert session["family"] == case.family
        assert session["reply"]["packets"] > 0
        original = session["original"]
        if case.passive:  # the client connects to the port the server's 227/229 named
            assert (original["src"], original["dst"]) == (case.client, case.server)
            assert PASSIVE_PORTS[0] <= original["dport"] <= PASSIVE_PORTS[1]
        else:  # the server connects to the port the client's PORT/EPRT named
            assert (original["src"], original["dst"]) == (case.server, case.client)
            assert (original["sport"] == 20) == case.port_20
    assert sorted(s["original"]["dport"] for s in data) == sorted(server.announced_ports())
    related = [event for event in running.events("flow") if event["fw"]["reason"] == "related:ftp"]
    assert sorted(event["flow_id"] for event in related) == sorted(session["id"] for session in data)
    assert {event["fw"]["parent_flow_id"] for event in related} == {control["id"]}
    transferred = sorted(max(s["original"]["bytes"], s["reply"]["bytes"]) for s in data)
    assert transferred[0] > upload.stat().st_size and transferred[1] > served.stat().st_size


def test_curl_uses_epsv_and_eprt_over_ipv4_through_the_alg(lab, ftp_server, firewall, tmp_path):
    server = ftp_server()
    served = server.publish("download.bin", random_bytes(7, 4 * 2**20 + 777))
    upload = tmp_path / "upload.bin"
    upload.write_bytes(random_bytes(8, 1 * 2**20 + 888))
    running = firewall(alg=True)

    got = ftp_lab.curl(lab, ftp_lab.ftp_url(SERVER4, "download.bin"), "--ftp-pasv",
                       "-o", str(tmp_path / "download.bin"))
    put = ftp_lab.curl(lab, ftp_lab.ftp_url(SERVER4, "pub/upload.bin"), "--ftp-port", "-", "-T", str(upload))

    assert (got.returncode, put.returncode) == (0, 0), got.stderr + put.stderr
    assert sha256(tmp_path / "download.bin") == sha256(served)
    assert sha256(server.uploaded("upload.bin")) == sha256(upload)
    assert [c.split(" ")[0] for c in server.data_commands()] == ["EPSV", "EPRT"]
    assert server.data_commands()[1].startswith(f"EPRT |1|{CLIENT4}|")
    stats = running.stats()
    assert stats["packets"]["by_verdict"]["accept"]["related:ftp"] == 2
    assert stats["drops"] == {}
    sessions = running.sessions()
    controls = {session["id"] for session in control_sessions(sessions)}
    assert len(controls) == 2  # curl opens one control connection per command line
    assert {session["parent"] for session in data_sessions(sessions)} == controls


# -- without the ALG: the login works, the data connection does not -----------------------------

NO_ALG_CASES = [
    pytest.param(Case(4, passive=True), id="ipv4-pasv"),
    pytest.param(Case(4, passive=False), id="ipv4-port"),
    pytest.param(Case(6, passive=True), id="ipv6-epsv"),
    pytest.param(Case(6, passive=False), id="ipv6-eprt"),
]


@pytest.mark.parametrize("case", NO_ALG_CASES)
def test_without_the_alg_the_login_works_and_the_data_syn_is_dropped(
        lab, ftp_server, firewall, tmp_path, case: Case):
    server = ftp_server()
    server.publish("download.bin", random_bytes(1, 2**20))
    received = tmp_path / "received"
    received.mkdir()
    running = firewall(alg=False)

    done = ftp_lab.lftp(lab, ftp_lab.ftp_url(case.server), [
        "quote PWD",
        f"get -O {received} download.bin",
    ], passive=case.passive, net_timeout=2, timeout=20)

    assert done.returncode != 0
    assert '257 "/" is the current directory' in done.stdout  # the control connection works
    assert "230 Login successful." in server.responses()
    assert not (received / "download.bin").exists() or (received / "download.bin").stat().st_size == 0
    assert {command.split(" ")[0] for command in server.data_commands()} == {case.verb}

    stats, drops = settled_drops(running)
    assert "related:ftp" not in stats["packets"]["by_verdict"]["accept"]
    assert stats["drops"]["default"] >= 1
    assert set(stats["drops"]) == {"default"}
    assert stats["engine"].get("expectations", 0) == 0
    # Every packet dropped is the SYN of an announced data connection, in its direction.
    assert len(drops) == stats["drops"]["default"]
    source, destination = (case.client, case.server) if case.passive else (case.server, case.client)
    announced = set(server.announced_ports())
    for event in drops:
        assert event["fw"]["reason"] == "default"
        assert event["drop"]["syn"] is True and event["drop"]["tcpack"] == 0  # a SYN, not a SYN-ACK
        assert (event["src_ip"], event["dest_ip"]) == (source, destination)
        assert event["dest_port"] in announced
    assert data_sessions(running.sessions()) == []


# -- the ALG admits only what was announced, by and to the ends of the control connection -------

ELSEWHERE4 = "203.0.113.11"  # an address of the server's network that is not the server
OTHER_CLIENT4 = "198.51.100.66"  # an address of the client's network that is not the client


def settled_drops(running: Firewall) -> tuple[dict, list]:
    """The daemon's stats and its drop events, read in a moment when they agree: a data connection's
    sender may still be retrying its SYN (backing off), and a retry between the two reads would
    count in one and not the other."""
    deadline = time.monotonic() + 10
    while True:
        stats = running.stats()
        drops = running.events("drop")
        if running.stats()["drops"] == stats["drops"] == {"default": len(drops)} or time.monotonic() > deadline:
            return stats, drops
        time.sleep(0.2)


def assert_refused_and_dropped(running: Firewall, command: str, source: str, destination: str) -> None:
    """The ALG refused each announcement as a bounce (RFC 2577) and each data SYN hit the default."""
    stats, drops = settled_drops(running)
    refused = stats["engine"].get("alg_refused:bounce", 0)
    assert refused >= 1 and stats["engine"].get("expectations", 0) == 0
    assert [(event["ftp"]["refused"], event["ftp"]["command"]) for event in running.events("ftp")] == [
        ("bounce", command)] * refused
    assert "related:ftp" not in stats["packets"]["by_verdict"]["accept"]
    assert set(stats["drops"]) == {"default"}
    assert len(drops) == stats["drops"]["default"] >= 1
    for event in drops:
        assert (event["src_ip"], event["dest_ip"], event["fw"]["reason"]) == (source, destination, "default")
        assert event["drop"]["syn"] is True and event["drop"]["tcpack"] == 0
    assert data_sessions(running.sessions()) == []


def test_a_227_naming_another_host_opens_nothing(lab, ftp_server, firewall, tmp_path):
    # A server that announces a third address (IPv4 only: vsftpd's dual-stack socket would say 0,0,0,0).
    server = ftp_server(listen="YES", listen_ipv6="NO", pasv_address=ELSEWHERE4)
    server.publish("download.bin", random_bytes(2, 2**20))
    running = firewall(alg=True)

    done = ftp_lab.lftp(lab, ftp_lab.ftp_url(SERVER4), [f"get -O {tmp_path} download.bin"],
                        passive=True, net_timeout=2, timeout=20)

    assert done.returncode != 0
    assert any(reply.startswith("227 ") and "(203,0,113,11," in reply for reply in server.responses())
    assert_refused_and_dropped(running, "PASV", CLIENT4, ELSEWHERE4)


def test_a_port_naming_another_host_opens_nothing(lab, ftp_server, firewall, tmp_path):
    # A server that connects wherever PORT says (from any port: vsftpd 3.0.3 fails to bind port 20
    # for an address other than the client's, "500 OOPS: vsf_sysutil_bind").
    server = ftp_server(port_20=False, port_promiscuous="YES")
    server.publish("download.bin", random_bytes(3, 2**20))
    running = firewall(alg=True)

    done = ftp_lab.lftp(lab, ftp_lab.ftp_url(SERVER4), [
        f"set ftp:port-ipv4 {OTHER_CLIENT4}",  # lftp announces an address that is not its own
        f"get -O {tmp_path} download.bin",
    ], passive=False, net_timeout=2, timeout=20)

    assert done.returncode != 0
    assert any(command.startswith("PORT 198,51,100,66,") for command in server.commands())
    assert_refused_and_dropped(running, "PORT", SERVER4, OTHER_CLIENT4)


# -- a reload keeps the sessions, the control session's ALG included ----------------------------


def test_a_transfer_after_a_reload_passes_on_the_same_control_connection(lab, ftp_server, firewall, tmp_path):
    server = ftp_server()
    first = server.publish("first.bin", random_bytes(21, 2**20 + 21))
    second = server.publish("second.bin", random_bytes(22, 2**20 + 22))
    received = tmp_path / "received"
    received.mkdir()
    running = firewall(alg=True)
    argv = ftp_lab.lftp_argv(ftp_lab.ftp_url(SERVER4), [
        f"get -O {received} first.bin",
        "sleep 3",  # lftp's own command: the control connection stays open and idle meanwhile
        f"get -O {received} second.bin",
    ], passive=True)

    client = lab.popen("client", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        got = received / "first.bin"
        wait_for(lambda: got.exists() and sha256(got) == sha256(first), "the first download", 10)
        reloaded = running.daemon.fw("reload")
        output, errors = client.communicate(timeout=40)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()

    assert "loaded" in reloaded.stdout
    assert client.returncode == 0, output + errors
    assert sha256(received / "second.bin") == sha256(second)
    stats = running.stats()
    assert stats["policy"]["reloads"] == 1
    accepted = stats["packets"]["by_verdict"]["accept"]
    assert (accepted["rule:ftp-control"], accepted["related:ftp"]) == (1, 2)
    assert stats["drops"] == {}
    [control] = control_sessions(running.sessions())
    assert [s["parent"] for s in data_sessions(running.sessions())] == [control["id"]] * 2


def wait_for(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)
