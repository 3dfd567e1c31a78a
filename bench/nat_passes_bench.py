"""The live daemon's two NAT passes offline: established TCP per packet, CPU time, no kernel.

How it works: bench.engine_bench's established loop (1,000 flows, 100-byte segments and their
ACKs, a source translation) runs through one engine as replay drives it (one pass) and through
another as the NAT daemon drives it (every packet at the before-routing hook, the packets marked
for the second pass again at the after-routing one, with the bytes the first pass gave), and the
same loop without NAT; best of three, `time.process_time`. A fourth engine is driven as the daemon
with the one-pass rules drives it: a packet whose first pass asked for one pass (ONE_PASS_MARK, the
kernel entry's bit, kept here in a set by IPv4 addresses and ports) comes next time at the
after-routing hook alone (`ONE_PASS`). What it leaves out: the queue trips themselves (the
kernel's share of a second pass). Run: `python -m bench.nat_passes_bench`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.engine_bench import NAT_ADDRESS, NAT_ENTRY, established_stream, policy_with_rules
from fw.decision import RewritePacket, SetMark
from fw.engine import Engine, EngineConfig
from fw.engine_nat_passes import AFTER_ROUTING, BEFORE_ROUTING, ONE_PASS, ONE_PASS_MARK
from fw.policy import load_policy

_BITS: dict[int, set] = {}  # engine id -> the kernel entries (IPv4 addresses and ports) with the bit


def one_pass(engine: Engine, packets: list[bytes]) -> int:
    for data in packets:
        engine.process(data, 1000.0)
    return 0


def two_passes(engine: Engine, packets: list[bytes]) -> int:
    """Each packet as the NAT daemon gives it; returns how many took the second pass."""
    process, second = engine.process, 0
    for data in packets:
        decision = process(data, 1000.0, None, None, BEFORE_ROUTING)
        out, marked = data, False
        for effect in decision.effects:
            if type(effect) is RewritePacket:
                out = effect.data
            elif type(effect) is SetMark:
                marked = True
        if marked:
            second += 1
            process(out, 1000.0, None, None, AFTER_ROUTING)
    return second


def passes_with_one_pass(engine: Engine, packets: list[bytes]) -> int:
    """As two_passes, with the kernel's one-pass bit; returns how many took two trips."""
    process, second = engine.process, 0
    bits = _BITS.setdefault(id(engine), set())
    for data in packets:
        entry = data[12:24]
        if entry in bits:
            process(data, 1000.0, None, None, ONE_PASS)
            continue
        decision = process(data, 1000.0, None, None, BEFORE_ROUTING)
        out, mark = data, 0
        for effect in decision.effects:
            if type(effect) is RewritePacket:
                out = effect.data
            elif type(effect) is SetMark:
                mark = effect.mark
        if mark:
            second += 1
            if mark & ONE_PASS_MARK:
                bits.add(entry)
            process(out, 1000.0, None, None, AFTER_ROUTING)
    return second


def figures(rounds: int = 3) -> dict:
    nat = load_policy(policy_with_rules(10, Path(tempfile.mkdtemp()), NAT_ENTRY))
    plain = load_policy(policy_with_rules(10, Path(tempfile.mkdtemp())))
    cases = {"without NAT": (plain, established_stream(1000, 50), one_pass),
             "NAT, one pass (replay)": (nat, established_stream(1000, 50, seen=NAT_ADDRESS), one_pass),
             "NAT, two passes (fw run)": (nat, established_stream(1000, 50, seen=NAT_ADDRESS), two_passes),
             "NAT, one pass after routing (fw run)": (nat, established_stream(1000, 50, seen=NAT_ADDRESS),
                                                      passes_with_one_pass)}
    best: dict[str, float] = {}
    second: dict[str, int] = {}
    for _ in range(rounds):
        for name, (policy, (setup, traffic), drive) in cases.items():
            engine = Engine(policy, EngineConfig(events=False))
            drive(engine, setup)
            start = time.process_time()
            second[name] = drive(engine, traffic)
            _BITS.pop(id(engine), None)
            best[name] = min(best.get(name, float("inf")), time.process_time() - start)
    packets = len(cases["without NAT"][1][1])
    result = {name: {"us_per_packet": round(seconds / packets * 1e6, 2),
                     "packets_per_second": round(packets / seconds)} for name, seconds in best.items()}
    result["second passes"] = {"packets": second["NAT, two passes (fw run)"], "of": packets,
                               "with one pass after routing": second["NAT, one pass after routing (fw run)"]}
    return result


if __name__ == "__main__":
    print(json.dumps(figures(), indent=1))
