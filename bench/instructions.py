"""Instructions per packet under callgrind: figures that do not move with the machine's load.

How it works: `python -m bench.instructions WORKLOAD COUNT` builds a fixed workload (always the
same packets, whatever COUNT) and then runs COUNT of its packets through one part of the per-packet
path. `python -m bench.instructions --callgrind WORKLOAD COUNT` runs that twice under
`valgrind --tool=callgrind`, with COUNT and with 0 packets (the packets built beforehand,
outside valgrind, and read from a pickle), and prints the difference divided by COUNT: the
instructions the part costs per packet, set-up and interpreter start excluded. The figures are
user-space instructions (the kernel's side of a syscall is not counted) and repeat
to a few per mille whatever else runs on the machine.

Workloads (the established ones: 500 TCP flows after their handshakes, data and ACK in turn):
- `parse`: fw.packet.parse alone, established TCP packets;
- `established`: Engine.process, established TCP (bench/engine_bench.py's loop);
- `nat-established`: the same with a source translation (engine_bench's NAT_ENTRY: the replies go
  to the translated address, every packet leaves through a RewritePacket): against `established`,
  what translating an established packet costs;
- `new`: Engine.process, SYNs each opening a session through a policy of 10 rules;
- `new-web`, `new-dnat`, `new-maglev`: SYNs to the web rule's port 80 each opening a session: as
  they are, through a `dnat` entry (a port forward) and through a maglev virtual server of 100
  real servers (bench/lb_bench.py's `bench_balanced_new_sessions`): what making a NAT binding costs;
- `driver`, `socket-driver`: the daemon's whole per-packet path in user space for established TCP
  packets: netlink messages as the kernel sends them (NFQUEUE packet messages) go through the
  NFQUEUE driver (netfilterqueue's, fw.drivers.nfqueue; or fw.drivers.nfqueue_socket), a
  PacketHandler, the engine, and the batched accept verdicts sent to a real queue bound in a
  private network namespace (root; run under `unshare -n`, which --callgrind does);
- `driver-stub`, `socket-driver-stub`: the same with an engine that accepts every packet at once
  (bench/replay_queue.StubEngine): the driver, the PacketHandler and the verdicts without the engine;
- `driver-bare`, `socket-driver-bare`: the driver and its verdicts alone (a callback that leaves
  every packet to the batch accept, no PacketHandler);
- `socket-driver-udp`: the live bench's small-packet flood as `fw run` handles it: 64-byte UDP
  datagrams of 500 established flows (one way, as the bench's server never answers) through
  SocketQueue, the PacketHandler with `fw run`'s per-rule counters (fw.metrics.RuleCounters as its
  `observe`, which fw.records hooks in) and the engine's UDP path;
- `socket-driver-nat`: the NAT daemon's per-packet path for translated established packets
  (`nat-established`'s source translation): SocketQueue, fw.drivers.nat_queue's NatPacketHandler
  with fw.drivers.routes (the kernel's answers, in the private namespace: the translated address is
  the firewall's own) and the engine's passes, each packet with the hook and mark the kernel gives
  it: the clients' packets after routing only (the one pass, mark NAT_MARK | UNJUDGED_MARK), the
  replies to the translated address before routing (for the firewall: its destination rewritten);
  each leaves with a verdict carrying its new payload. The handshakes go through the handler too;
- `socket-driver-nat-gso`: the same with 64,000 bytes of data per client packet, GSO with a partial
  checksum (NFQA_SKB_GSO | CSUMNOTREADY) as iperf3's bulk reaches the queue (at most 200 packets):
  what the copies of a 64 KiB translated packet cost in user space;
- `socket-driver-nat-udp`: 64-byte UDP datagrams of 500 flows to the server (the live bench's flood),
  after each flow's first datagram: all after routing only (the one pass), each translated.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FLOWS = 500
UDP_PORT, UDP_PAYLOAD = 9000, 64  # the live bench's flood (bench/live_bench.py)
UDP_RULE = f"  - {{name: bench-udp, action: accept, proto: udp, src: 198.51.100.0/24, dport: {UDP_PORT}}}\n"
POOL = 12_000  # packets built for every run, whatever COUNT
GSO_PAYLOAD = 64_000  # a GSO packet's data (the copy range is 65,535 bytes with the headers)


# The packets, built once per --callgrind run for its two child runs (a file of this process's own).
CACHE_ENV = "FW_INSTRUCTIONS_PACKETS"


def build_packets() -> dict:
    """Every workload's packets (built with fw.packet.build: slow under valgrind, so built once)."""
    from bench.engine_bench import NAT_ADDRESS, SERVER, SYN, client_address, established_stream  # noqa: PLC0415
    from fw.packet import build  # noqa: PLC0415

    setup, traffic = established_stream(flows=FLOWS, rounds=POOL // (2 * FLOWS))
    nat_setup, nat_traffic = established_stream(flows=FLOWS, rounds=POOL // (2 * FLOWS), seen=NAT_ADDRESS)
    from bench.engine_bench import established_stream as stream  # noqa: PLC0415

    udp = [build.udp(client_address(i % FLOWS), SERVER, 10000 + i % FLOWS, 5201, b"u" * 64) for i in range(POOL // 2)]
    gso_setup, gso_traffic = stream(flows=10, rounds=10, seen=NAT_ADDRESS, payload=b"x" * GSO_PAYLOAD)
    syns = [build.tcp(client_address(i), SERVER, 1024 + i % 60000, 80 if i % 2 else 443, 1000, 0, SYN)
            for i in range(POOL // 2)]
    web_syns = [build.tcp(client_address(i), SERVER, 1024 + i % 60000, 80, 1000, 0, SYN) for i in range(POOL // 2)]
    udp_setup = [build.udp(client_address(i), SERVER, 1024 + i, UDP_PORT, bytes(UDP_PAYLOAD)) for i in range(FLOWS)]
    udp_traffic = udp_setup * (POOL // FLOWS)
    return {"setup": setup, "traffic": traffic, "syns": syns, "nat_setup": nat_setup, "nat_traffic": nat_traffic,
            "web_syns": web_syns, "udp_setup": udp_setup, "udp_traffic": udp_traffic,
            "gso_setup": gso_setup, "gso_traffic": gso_traffic,
            "nat_udp_setup": udp[:FLOWS], "nat_udp_traffic": udp[FLOWS:]}


def packets() -> dict:
    cache = os.environ.get(CACHE_ENV)
    if cache:
        return pickle.loads(Path(cache).read_bytes())
    return build_packets()


def established_packets() -> tuple[list[bytes], list[bytes]]:
    built = packets()
    return built["setup"], built["traffic"]


def engine(rules: int = 10, extra: str = ""):
    from bench.engine_bench import policy_with_rules  # noqa: PLC0415
    from fw.engine import Engine, EngineConfig  # noqa: PLC0415
    from fw.policy import load_policy  # noqa: PLC0415

    policy = load_policy(policy_with_rules(rules, Path(tempfile.mkdtemp()), extra))
    return Engine(policy, EngineConfig(events=False))


def run_parse(count: int) -> None:
    from fw.packet import parse  # noqa: PLC0415

    _, traffic = established_packets()
    for data in traffic[:count]:
        parse(data)


def run_established(count: int) -> None:
    setup, traffic = established_packets()
    eng = engine()
    for data in setup:
        eng.process(data, 1000.0)
    process = eng.process
    for data in traffic[:count]:
        process(data, 1000.0)
    counted = sum(s.orig_packets + s.reply_packets for s in eng.table.values())
    assert counted == len(setup) + count, "established packets were not all accepted"


def run_nat_established(count: int) -> None:
    from bench.engine_bench import NAT_ENTRY  # noqa: PLC0415

    built = packets()
    eng = engine(extra=NAT_ENTRY)
    for data in built["nat_setup"]:
        eng.process(data, 1000.0)
    process = eng.process
    for data in built["nat_traffic"][:count]:
        assert process(data, 1000.0).effects, "a translated packet left untranslated"


def run_new(count: int) -> None:
    syns = packets()["syns"]
    eng = engine()
    process = eng.process
    for data in syns[:count]:
        process(data, 1000.0)
    assert len(eng.table) == count, "SYNs did not all open a session"


def run_new_web(count: int, extra: str = "", policy=None) -> None:
    from fw.engine import Engine, EngineConfig  # noqa: PLC0415

    syns = packets()["web_syns"]
    eng = engine(extra=extra) if policy is None else Engine(policy, EngineConfig(events=False))
    process = eng.process
    for data in syns[:count]:
        process(data, 1000.0)
    assert len(eng.table) == count, "SYNs did not all open a session"


def run_new_dnat(count: int) -> None:
    from bench.engine_bench import SERVER  # noqa: PLC0415

    run_new_web(count, f"nat:\n  - {{name: fwd, type: dnat, dst: {SERVER}, to: 10.0.0.5}}\n")


def run_new_maglev(count: int) -> None:
    from bench.lb_bench import vs_policy  # noqa: PLC0415
    from fw.policy import load_policy  # noqa: PLC0415

    run_new_web(count, policy=load_policy(vs_policy(100, Path(tempfile.mkdtemp()))))


def run_driver(count: int, kind: str, part: str = "") -> None:
    from bench import replay_queue  # noqa: PLC0415

    setup, traffic = established_packets()
    if part:  # "stub": an engine that accepts at once; "bare": no handler either
        replay_queue.run(kind, replay_queue.StubEngine(), traffic, count, bare=part == "bare")
        return
    eng = engine()
    for data in setup:
        eng.process(data, 1000.0)
    replay_queue.run(kind, eng, traffic, count)


def run_socket_driver_udp(count: int) -> None:
    from bench import replay_queue  # noqa: PLC0415
    from fw.metrics import RuleCounters  # noqa: PLC0415

    built = packets()
    eng = engine(extra=UDP_RULE)  # the rule after the others: the policy's rules list goes on
    for data in built["udp_setup"]:
        eng.process(data, 1000.0)
    replay_queue.run("socket", eng, built["udp_traffic"], count, observe=RuleCounters().count)


def run_nat_driver(count: int, kind: str = "") -> None:
    """`socket-driver-nat(-gso, -udp)` (module docstring)."""
    import subprocess  # noqa: PLC0415

    from bench import replay_queue  # noqa: PLC0415
    from bench.engine_bench import NAT_ADDRESS, NAT_ENTRY, SERVER  # noqa: PLC0415
    from fw.drivers.nat_queue import NatPacketHandler  # noqa: PLC0415
    from fw.drivers.nfqueue_socket import NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO, NfPacket  # noqa: PLC0415
    from fw.drivers.routes import Routes  # noqa: PLC0415
    from fw.engine_nat_passes import NAT_MARK, UNJUDGED_MARK  # noqa: PLC0415

    for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{NAT_ADDRESS}/32", "dev", "lo"],
                    ["ip", "route", "add", f"{SERVER}/32", "dev", "lo"]):  # private namespace (unshare -n)
        subprocess.run(command, check=True, capture_output=True)
    built = packets()
    prefix = {"": "nat", "gso": "gso", "udp": "nat_udp"}[kind]
    setup, traffic = built[f"{prefix}_setup"], built[f"{prefix}_traffic"]
    udp_rule = "  - {name: udp, action: accept, proto: udp, src: 198.51.100.0/24, dport: 5201}\n"
    eng = engine(extra=udp_rule + NAT_ENTRY if kind == "udp" else NAT_ENTRY)
    routes = Routes()
    handler = NatPacketHandler(eng, False, lambda effects: None, replay_queue.failed, routes)
    handler.accept_later = True
    server = bytes(int(part) for part in SERVER.split("."))
    for data in setup:  # the handshakes: the first pass before routing, as the kernel queues them
        packet = NfPacket()
        packet.hook, packet.indev, packet.payload = 0, 1, data
        packet.mark = packet.outdev = packet.skb_info = 0
        packet.cap_len = None
        handler.judge(packet, data)
    from_client = {"hook": 4, "mark": NAT_MARK | UNJUDGED_MARK,
                   "skb_info": NFQA_SKB_GSO | NFQA_SKB_CSUMNOTREADY if kind == "gso" else 0}
    messages = [(data, from_client if data[16:20] == server else {"hook": 0, "outdev": 0}) for data in traffic]
    replay_queue.run("socket", eng, messages, count, handler=handler)
    routes.close()


WORKLOADS = {
    "parse": run_parse,
    "established": run_established,
    "nat-established": run_nat_established,
    "new": run_new,
    "new-web": run_new_web,
    "new-dnat": run_new_dnat,
    "new-maglev": run_new_maglev,
    "driver": lambda count: run_driver(count, "netfilterqueue"),
    "socket-driver": lambda count: run_driver(count, "socket"),
    "driver-stub": lambda count: run_driver(count, "netfilterqueue", "stub"),
    "socket-driver-stub": lambda count: run_driver(count, "socket", "stub"),
    "driver-bare": lambda count: run_driver(count, "netfilterqueue", "bare"),
    "socket-driver-bare": lambda count: run_driver(count, "socket", "bare"),
    "socket-driver-udp": run_socket_driver_udp,
    "socket-driver-nat": run_nat_driver,
    "socket-driver-nat-gso": lambda count: run_nat_driver(count, "gso"),
    "socket-driver-nat-udp": lambda count: run_nat_driver(count, "udp"),
}


def instructions(workload: str, count: int, cache: Path) -> int:
    """Instructions of one run of `workload` with `count` packets, counted by callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                sys.executable, "-m", "bench.instructions", workload, str(count)]
        if "driver" in workload:
            argv = ["unshare", "-n", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                              env={**os.environ, "PYTHONHASHSEED": "0", CACHE_ENV: str(cache)})
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode or not found:
            raise SystemExit(f"callgrind run failed:\n{done.stderr[-2000:]}")
        return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true", help="count under callgrind, print per packet")
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("count", type=int, help=f"packets (at most {POOL // 2})")
    args = parser.parse_args(argv)
    if not args.callgrind:
        WORKLOADS[args.workload](args.count)
        return
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "packets.pickle"
        cache.write_bytes(pickle.dumps(build_packets()))
        base = instructions(args.workload, 0, cache)
        total = instructions(args.workload, args.count, cache)
    print(f"{args.workload}: {(total - base) / args.count:,.0f} instructions per packet "
          f"({total - base:,} for {args.count} packets)")


if __name__ == "__main__":
    main()
