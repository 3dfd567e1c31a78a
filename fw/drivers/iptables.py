"""The daemon's iptables rules: install them, remove them, clean up what a crashed run left.

How it works: the daemon owns the filter-table chains FW-FORWARD, FW-INPUT and FW-OUTPUT and, for a
policy that translates (NAT), the mangle-table chains FW-PREROUTING and FW-POSTROUTING (IPv4 and
IPv6), and one jump rule into each from its built-in chain, inserted first. With NAT the first pass
is FW-PREROUTING (before routing: every packet that arrives, but loopback and the replies of the
firewall's own connections), replacing FW-FORWARD; FW-POSTROUTING queues only the packets the first
pass marked (`Hooking.nat_mark`), the second pass of translated sessions (fw/engine_nat_passes.py);
with `Hooking.one_pass_mark` FW-POSTROUTING saves that bit into the connmark when the first pass
asked, and FW-PREROUTING lets the later packets of such a connection by, marked for FW-POSTROUTING
only (`unjudged_mark`: the engine judges them there, in one trip). Every rule it writes carries
the comment `fw-daemon` (the tag). With `Hooking.kernel_nat_mark` (fw.drivers.nat_kernel: the kernel
holds established sessions' bindings) the `nat` table gets FW-NAT-PREROUTING, -INPUT, -OUTPUT and
-POSTROUTING (one tagged RETURN each, jumped to from the built-ins): they only register the kernel's
nat hooks in the namespace; entries without a binding get the kernel's null binding (no change).
Each change is one `iptables-restore -w --noflush` transaction
per family, built from what `iptables-save` shows at that moment: a restore that deletes a missing
rule fails whole, so only rules that are there are deleted, verbatim as saved.

Ownership: a rule is ours if it carries the tag and jumps to one of our chains (or sits in one); a
chain is ours if it has one of our names, is not empty and every rule in it carries the tag. A chain
with one of our names that is not ours is foreign: it is never touched, and the install refuses.

Backends: install uses the host's `iptables` (nft or legacy, as `iptables -V` says) unless told;
cleanup looks at both. iptables-nft creates the `filter` table and base chains on first use; what
we caused to be created is written to a state file under /run/fw/<netns inode>/ and deleted again
once empty, so that the ruleset is exactly as it was before.

A restart (`fw stop --keep-rules`): the stopping daemon leaves its rules and notes that it did
(`note_kept`: kept.json beside the state file, with its pid); the next run's `install_over_stale`
takes them over as it does a crashed run's (one commit per table: no moment without our jumps) and
forgets the note; `fw cleanup` leaves them while the note is there (it is systemd's stop hook),
`fw cleanup --all` removes them and the note.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

TAG = "fw-daemon"
NAT_HOOKS = ("NAT-PREROUTING", "NAT-INPUT", "NAT-OUTPUT", "NAT-POSTROUTING")  # the kernel's nat hooks
HOOKS = ("FORWARD", "INPUT", "OUTPUT", "PREROUTING", "POSTROUTING", "ERRORS", *NAT_HOOKS)
CHAIN_OF_HOOK = {hook: f"FW-{hook}" for hook in HOOKS}
# the firewall's own ICMP errors, in mangle OUTPUT (NAT); the nat table's chains
BUILTIN_OF_HOOK = {"ERRORS": "OUTPUT", **{hook: hook[4:] for hook in NAT_HOOKS}}
OUR_CHAINS = frozenset(CHAIN_OF_HOOK.values())
TABLES = ("filter", "mangle", "nat")
TABLE_OF_HOOK = {"FORWARD": "filter", "INPUT": "filter", "OUTPUT": "filter",
                 "PREROUTING": "mangle", "POSTROUTING": "mangle", "ERRORS": "mangle",
                 **{hook: "nat" for hook in NAT_HOOKS}}
ICMP_ERROR_TYPES = {4: ("icmp", "icmp", (3, 11, 12)), 6: ("ipv6-icmp", "icmp6", (1, 2, 3, 4))}
BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
           "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
           "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
CHAINS_OF_TABLE = {table: frozenset(CHAIN_OF_HOOK[h] for h in HOOKS if TABLE_OF_HOOK[h] == table)
                   for table in TABLES}
BACKENDS = ("nft", "legacy")
FAMILIES = (4, 6)
DEFAULT_MARK = 0x6677  # "fw": SO_MARK of the daemon's own packets, exempt from the queue
ND_TYPES = (133, 134, 135, 136, 137)  # RFC 4861: router/neighbour solicitation/advert, redirect
NFT_FAMILY = {4: "ip", 6: "ip6"}
RUN_DIR = Path("/run/fw")


class IptablesError(Exception):
    """An iptables command failed, or the ruleset holds something we must not touch."""


@dataclass(frozen=True)
class Hooking:
    """What to install: which hooks, which queue(s), fail-open or closed, the exempt mark."""

    queues: tuple[int, int] = (0, 0)  # first, last (a range balances flows over the queues)
    hooks: tuple[str, ...] = ("FORWARD",)
    fail_open: bool = False
    mark: int = DEFAULT_MARK
    families: tuple[int, ...] = FAMILIES
    offload: bool = False  # the fast path of fw.drivers.offload before the queue
    offload_mark: int = 0x40000000  # connmark bit of offloaded connections
    nat_mark: int = 0  # NAT: the packet mark bit of the second pass (FW-POSTROUTING queues only those)
    one_pass_mark: int = 0  # NAT: connmark bit "after routing only" (packet mark: save it), 0: off
    unjudged_mark: int = 0  # NAT: packet mark bit of a packet let by before routing, not judged yet
    kernel_nat_mark: int = 0  # NAT: connmark bit of entries holding a binding (fw.drivers.nat_kernel), 0: off

    @property
    def installed(self) -> tuple[str, ...]:
        """The hooks whose chains are installed: `hooks`, and with kernel bindings the nat table's."""
        return self.hooks + NAT_HOOKS if self.kernel_nat_mark else self.hooks

    @property
    def first_pass(self) -> str:
        """The hook where packets are judged: FORWARD, or PREROUTING with NAT."""
        return "PREROUTING" if "PREROUTING" in self.hooks else "FORWARD"


def host_backend() -> str:
    """The backend the host's `iptables` uses: 'nft' or 'legacy'."""
    try:
        out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise IptablesError(f"cannot run iptables -V: {exc}") from exc
    return "legacy" if "legacy" in out else "nft"


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


# -- the rules ---------------------------------------------------------------------------------


ALL_CTSTATES = "INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED"


def _queue_target(hooking: Hooking) -> str:
    first, last = hooking.queues
    target = f"--queue-num {first}" if first == last else f"--queue-balance {first}:{last}"
    target = "-j NFQUEUE " + target
    return target + (" --queue-bypass" if hooking.fail_open else "")


def chain_rules(hooking: Hooking, hook: str, family: int) -> list[str]:
    """The rules of our chain for `hook`, as restore lines."""
    chain, tag, mark = CHAIN_OF_HOOK[hook], f"-m comment --comment {TAG}", f"0x{hooking.mark:x}"
    rules = []
    if hook == "POSTROUTING":  # the second pass: only what the first marked, never the daemon's own
        nat = f"0x{hooking.nat_mark:x}"
        rules = [f"-A {chain} -m mark --mark {mark} {tag} -j RETURN"]
        if hooking.one_pass_mark:  # the first pass asked: this direction's next packets skip it
            one = f"0x{hooking.one_pass_mark:x}"
            rules.append(f"-A {chain} -m mark --mark {one}/{one} {tag} -j CONNMARK --or-mark {one}")
        return rules + [f"-A {chain} -m mark --mark {nat}/{nat} {tag} {_queue_target(hooking)}"]
    if hook in NAT_HOOKS:  # only there to register the kernel's nat hooks (fw.drivers.nat_kernel)
        return [f"-A {chain} {tag} -j RETURN"]
    if hook == "ERRORS":  # the firewall's own ICMP errors (quoting a packet between the NAT passes)
        proto, match, types = ICMP_ERROR_TYPES[family]
        # The kernel will not queue an error whose conntrack entry (its packet's) is unconfirmed and
        # shared (nf_ct_drop_unconfirmed: the error of a flow's first packet, a traceroute probe):
        # those pass as they are (they quote the packet's source as it arrived: right for snat).
        # The daemon's own packets (sockets with SO_MARK: health checks, sync, the forward link,
        # resets) pass, their connection marked so that FW-PREROUTING lets its replies by.
        return [f"-A {chain} -m mark --mark {mark} {tag} -j CONNMARK --set-mark {mark}",
                f"-A {chain} -m mark --mark {mark} {tag} -j RETURN",
                f"-A {chain} -m conntrack ! --ctstatus CONFIRMED {tag} -j RETURN"] + [
            f"-A {chain} -p {proto} -m {match} --{match.replace('6', 'v6')}-type {t} {tag} {_queue_target(hooking)}"
            for t in types]
    if hook == "PREROUTING" and hooking.kernel_nat_mark:
        # A packet whose kernel entry holds its NAT binding says so in its mark (fw.drivers.nat_kernel:
        # fw rewrites a packet of such a session whose entry is another one, queued before the switch).
        kernel = f"0x{hooking.kernel_nat_mark:x}"
        rules.append(f"-A {chain} -m connmark --mark {kernel}/{kernel} {tag} -j MARK --or-mark {kernel}")
    if hook == "PREROUTING":
        rules.append(f"-A {chain} -i lo {tag} -j RETURN")
        rules.append(f"-A {chain} -m connmark --mark {mark} {tag} -j RETURN")
        # The firewall's own connections (kernel conntrack saw both directions): not NAT's. A
        # translated flow never is ESTABLISHED to the kernel (it never sees its translated tuple
        # leave), and ICMP errors about one are RELATED in the ORIGINAL direction: only those in
        # the REPLY direction (about the firewall's own packets) skip the queue.
        local = f"-A {chain} -m addrtype --dst-type LOCAL -m conntrack"
        if hooking.kernel_nat_mark:  # an entry holding a NAT binding is ESTABLISHED too: still queued
            kernel = f"0x{hooking.kernel_nat_mark:x}"
            local = f"-A {chain} -m addrtype --dst-type LOCAL -m connmark ! --mark {kernel}/{kernel} -m conntrack"
        rules.append(f"{local} --ctstate ESTABLISHED {tag} -j RETURN")
        rules.append(f"{local} --ctstate RELATED --ctdir REPLY {tag} -j RETURN")
    if hook == "INPUT":
        rules.append(f"-A {chain} -i lo {tag} -j RETURN")
        rules.append(f"-A {chain} -m connmark --mark {mark} {tag} -j RETURN")
    if hook == "OUTPUT":
        rules.append(f"-A {chain} -o lo {tag} -j RETURN")
        rules.append(f"-A {chain} -m mark --mark {mark} {tag} -j CONNMARK --set-mark {mark}")
        rules.append(f"-A {chain} -m mark --mark {mark} {tag} -j RETURN")
    if family == 6:
        rules += [f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} {tag} -j RETURN" for t in ND_TYPES]
    # A conntrack match (no target: it only counts) makes the kernel track this namespace and so
    # reassemble fragments (nf_defrag) before they reach our queue: the engine sees whole packets.
    rules.append(f"-A {chain} -m conntrack --ctstate {ALL_CTSTATES} {tag}")
    if hooking.offload and hook == hooking.first_pass:
        # The fast path (fw.drivers.offload): an offloaded connection's packets, as long as the kernel's
        # own tracker finds them valid, skip the queue; SYN and FIN still reach the engine, and so do
        # RSTs the kernel finds out of window (a valid RST ends the flow; the daemon reads that back).
        # Before the one-pass rules: a translated session whose kernel entry holds its binding may be
        # offloaded (fw.drivers.nat_kernel) while its client's direction has the one-pass bit.
        off = f"-m connmark --mark 0x{hooking.offload_mark:x}/0x{hooking.offload_mark:x}"
        rules.append(f"-A {chain} -p tcp {off} -m conntrack --ctstate ESTABLISHED "
                     f"-m tcp --tcp-flags SYN,FIN,RST NONE {tag} -j ACCEPT")
        rules.append(f"-A {chain} -p tcp {off} -m conntrack --ctstate ESTABLISHED "
                     f"-m tcp --tcp-flags SYN,FIN,RST RST {tag} -j ACCEPT")
    if hooking.one_pass_mark and hook == "PREROUTING":
        # A session direction that needs only the after-routing half (its connmark bit, saved by
        # FW-POSTROUTING when the engine asked): not queued here, but marked for the queue after
        # routing, where the engine does the whole job once (fw.engine_nat_passes ONE_PASS). Not
        # ICMP errors (RELATED) and never a packet for the firewall itself (it would reach no queue).
        one, bits = f"0x{hooking.one_pass_mark:x}", f"0x{hooking.nat_mark | hooking.unjudged_mark:x}"
        skip = (f"-A {chain} -m connmark --mark {one}/{one} -m conntrack --ctstate NEW,ESTABLISHED "
                f"--ctdir ORIGINAL -m addrtype ! --dst-type LOCAL {tag}")
        rules += [f"{skip} -j MARK --or-mark {bits}", f"{skip} -j RETURN"]
    rules.append(f"-A {chain} {tag} {_queue_target(hooking)}")
    return rules


def builtin_of(hook: str) -> str:
    """The built-in chain that jumps to our chain for `hook`."""
    return BUILTIN_OF_HOOK.get(hook, hook)


def install_script(hooking: Hooking, family: int, replacing: FilterTable | dict | None = None) -> str:
    """Our chains and jumps, a section per table; `replacing` a crashed run's (a table, or tables
    by name), whose jumps and chains go in the same commit."""
    if isinstance(replacing, FilterTable):
        replacing = {replacing.name: replacing}
    lines: list[str] = []
    chains = {CHAIN_OF_HOOK[hook] for hook in hooking.installed}
    for table in TABLES:
        hooks = [hook for hook in hooking.installed if TABLE_OF_HOOK[hook] == table]
        old_table = (replacing or {}).get(table)
        jumps = old_table.our_jumps() if old_table is not None else []
        old = sorted(c for c in old_table.ours() if c not in chains) if old_table is not None else []
        if not hooks and not jumps and not old:
            continue
        lines.append(f"*{table}")
        lines += ["-D" + rule[2:] for rule in jumps]
        lines += [f"-F {c}" for c in old] + [f"-X {c}" for c in old]  # those we declare again are flushed
        lines += [f":{CHAIN_OF_HOOK[hook]} - [0:0]" for hook in hooks]
        for hook in hooks:
            lines += chain_rules(hooking, hook, family)
        lines += [f"-I {builtin_of(hook)} 1 -m comment --comment {TAG} -j {CHAIN_OF_HOOK[hook]}" for hook in hooks]
        lines.append("COMMIT")
    return "\n".join(lines + [""])


# -- reading what is there ---------------------------------------------------------------------


@dataclass
class FilterTable:
    """One table (filter, or mangle) as iptables-save prints it: chains and their rules (restore lines)."""

    present: bool = False
    policies: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)
    name: str = "filter"

    @classmethod
    def parse(cls, text: str, name: str = "filter") -> FilterTable:
        table, current = cls(name=name), None
        for line in text.splitlines():
            if line.startswith("*"):
                current = line[1:].strip()
                table.present = table.present or current == name
            elif current != name or not line or line.startswith("#"):
                continue
            elif line.startswith(":"):
                chain, policy = line[1:].split()[:2]
                table.policies[chain] = policy
                table.rules.setdefault(chain, [])
            elif line.startswith("-A "):
                table.rules.setdefault(line.split()[1], []).append(line)
        return table

    def ours(self) -> list[str]:
        """Our chains present here (their name is ours and every rule is tagged)."""
        return [c for c in CHAINS_OF_TABLE[self.name] if self.rules.get(c) and all(_tagged(r) for r in self.rules[c])]

    def foreign_with_our_name(self) -> list[str]:
        ours = self.ours()
        return sorted(c for c in OUR_CHAINS if c in self.rules and c not in ours)

    def our_jumps(self) -> list[str]:
        ours = set(self.ours())
        return [
            rule
            for chain, rules in self.rules.items()
            if chain not in ours
            for rule in rules
            if _tagged(rule) and _jump_target(rule) in ours
        ]

    def is_empty(self) -> bool:
        """Only built-in chains, all without rules and with policy ACCEPT."""
        builtin = BUILTIN[self.name]
        return all(c in builtin and not self.rules[c] and self.policies[c] == "ACCEPT" for c in self.rules)


def _tagged(rule: str) -> bool:
    words = shlex.split(rule)
    return any(a == "--comment" and b == TAG for a, b in zip(words, words[1:], strict=False))


def _jump_target(rule: str) -> str | None:
    words = shlex.split(rule)
    for a, b in zip(words, words[1:], strict=False):
        if a in ("-j", "-g"):
            return b
    return None


def removal_script(table: FilterTable) -> str | None:
    """Delete our jumps, then flush and delete our chains; None when there is nothing of ours."""
    jumps, chains = table.our_jumps(), sorted(table.ours())
    if not jumps and not chains:
        return None
    lines = [f"*{table.name}"] + ["-D" + rule[2:] for rule in jumps]
    lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
    return "\n".join(lines + ["COMMIT", ""])


# -- running the tools -------------------------------------------------------------------------


class Tool:
    """iptables or ip6tables of one backend."""

    def __init__(self, backend: str, family: int):
        self.backend, self.family = backend, family
        self.base = ("iptables" if family == 4 else "ip6tables") + "-" + backend

    def __str__(self) -> str:
        return self.base

    def available(self) -> bool:
        return shutil.which(self.base + "-save") is not None and (
            self.family == 4 or os.path.exists("/proc/sys/net/ipv6")
        )

    def save(self, table: str = "filter") -> FilterTable:
        return self.save_all()[table]

    def save_all(self) -> dict[str, FilterTable]:
        """Our tables (filter, mangle, nat) from one iptables-save."""
        # Not `-t filter`: iptables-legacy-save would instantiate a missing table and
        # iptables-nft-save would print one that is not there.
        text = self._run([self.base + "-save"])
        return {name: FilterTable.parse(text, name) for name in TABLES}

    def restore(self, script: str) -> None:
        self._run([self.base + "-restore", "-w", "5", "--noflush"], script)

    def delete_base_chain(self, chain: str, table: str = "filter") -> None:
        self._run([self.base, "-w", "5", "-t", table, "-X", chain])

    def nft_base_chains(self, table: str = "filter") -> set[str] | None:
        """Base chains of the nft table that exist (None: no table, or no `nft` to ask)."""
        if self.backend != "nft" or not shutil.which("nft"):
            return None
        proc = subprocess.run(["nft", "list", "table", NFT_FAMILY[self.family], table],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        return {hook for hook in BUILTIN[table] if f"chain {hook} {{" in proc.stdout}

    def delete_nft_table(self, table: str = "filter") -> None:
        self._run(["nft", "delete", "table", NFT_FAMILY[self.family], table])

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise IptablesError(f"{argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            message = " ".join(line for line in proc.stderr.splitlines() if not line.startswith("#"))
            raise IptablesError(f"{argv[0]} failed: {message.strip() or f'exit {proc.returncode}'}")
        return proc.stdout


# -- install, remove, clean up -----------------------------------------------------------------


def state_path() -> Path:
    return RUN_DIR / str(netns_inode()) / "iptables.json"


def _read_state() -> dict:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def kept_path() -> Path:
    return RUN_DIR / str(netns_inode()) / "kept.json"


def note_kept(pid: int) -> None:
    """A daemon stops for a restart: its rules stay, for the next run to take over."""
    path = kept_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({"pid": pid}))


def kept_by() -> int | None:
    """The pid of the daemon that stopped for a restart and kept its rules here, or None."""
    try:
        return int(json.loads(kept_path().read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _forget_state() -> None:
    kept_path().unlink(missing_ok=True)
    path = state_path()
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # not there, or holds other files


class Installation:
    """Our rules for one run: `install()` them for every family, `remove()` exactly them."""

    def __init__(self, hooking: Hooking, backend: str | None = None):
        self.hooking = hooking
        self.backend = backend or host_backend()
        self.tools = [Tool(self.backend, f) for f in hooking.families]
        self.tools = [t for t in self.tools if t.family == 4 or t.available()]
        self.created: dict[str, dict] = {}  # family -> what iptables-nft created for us
        self.installed: list[Tool] = []

    def install(self, replace_stale: bool = False) -> list[str]:
        """Install for every family; returns the stale rules and chains replaced (with `replace_stale`).

        Without `replace_stale`, rules of another run refuse the install. With it, they are swapped
        for ours in the same transaction: there is no moment without a rule (fail-closed stays closed).
        """
        previous = _read_state()
        replaced: list[str] = []
        try:
            for tool in self.tools:
                replaced += self._install_family(tool, replace_stale, previous)
        except BaseException:
            self.remove()
            raise
        return replaced

    def install_over_stale(self) -> list[str]:
        """Install in place of whatever a crashed run left (the daemon's start): the host backend's
        leftovers go in our install's commit, the other backend's after. Returns what was removed."""
        stale = self.install(replace_stale=True)
        kept_path().unlink(missing_ok=True)  # a restart's rules: taken over
        return stale + cleanup(tuple(b for b in BACKENDS if b != self.backend))

    def _install_family(self, tool: Tool, replace_stale: bool, previous: dict) -> list[str]:
        tables = tool.save_all()
        foreign = sorted({c for table in tables.values() for c in table.foreign_with_our_name()})
        if foreign:
            raise IptablesError(f"{tool}: chain {', '.join(foreign)} exists and was not created by fw; "
                                "rename or delete it")
        stale = [f"{tool}: rule {r}" for t in tables.values() for r in t.our_jumps()]
        stale += [f"{tool}: chain {c}" for t in tables.values() for c in t.ours()]
        if stale and not replace_stale:
            raise IptablesError(f"{tool}: rules of another fw run are installed (run `fw cleanup`)")
        if self.backend == "nft":
            for name in sorted({TABLE_OF_HOOK[hook] for hook in self.hooking.installed}):
                self._note_created(tool, tables[name], stale, previous)
            _write_state({"backend": self.backend, "created": self.created})
        self.installed.append(tool)  # before the restore: a half-done install is still removed
        tool.restore(install_script(self.hooking, tool.family, replacing=tables if stale else None))
        return stale

    def _note_created(self, tool: Tool, table: FilterTable, stale: list, previous: dict) -> None:
        """What iptables-nft will create for our jumps in `table` (and a crashed run had created)."""
        key = state_key(tool.family, table.name)
        hooks = {builtin_of(hook) for hook in self.hooking.installed if TABLE_OF_HOOK[hook] == table.name}
        base = tool.nft_base_chains(table.name) if table.present else set()
        created = {"table": not table.present, "chains": sorted(hooks - base) if base is not None else []}
        if stale and previous.get("backend") == self.backend:
            before = previous.get("created", {}).get(key) or {}
            created = {"table": created["table"] or bool(before.get("table")),
                       "chains": sorted(set(created["chains"]) | set(before.get("chains", ())))}
        self.created[key] = created

    def remove(self) -> list[str]:
        """Remove our rules (and what nft created for them); returns what was removed."""
        removed, errors = [], []
        for tool in reversed(self.installed):
            try:
                removed += remove_ours(tool, self.created)
            except IptablesError as exc:
                errors.append(str(exc))
        self.installed = []
        if errors:
            raise IptablesError("; ".join(errors))
        _forget_state()
        return removed


def state_key(family: int, table: str) -> str:
    """Where the state file notes what nft created: "4" for filter (as before NAT), "4/mangle"."""
    return str(family) if table == "filter" else f"{family}/{table}"


def remove_ours(tool: Tool, created: dict | None = None) -> list[str]:
    """Remove every rule and chain of ours that `tool` shows, in every table; tidy up what nft
    made for them (`created`: the state file's, by state_key)."""
    removed = []
    for name, table in tool.save_all().items():
        removed += [f"{tool}: rule {r}" for r in table.our_jumps()] + [f"{tool}: chain {c}" for c in table.ours()]
        script = removal_script(table)
        if script:
            tool.restore(script)
        made = (created or {}).get(state_key(tool.family, name))
        if made and tool.backend == "nft":
            removed += _tidy_nft(tool, made, name)
    return removed


def _tidy_nft(tool: Tool, created: dict, name: str) -> list[str]:
    removed = []
    table = tool.save(name)
    existing = tool.nft_base_chains(name) or set()
    for chain in created.get("chains", ()):
        if chain in existing and not table.rules.get(chain) and table.policies.get(chain) == "ACCEPT":
            tool.delete_base_chain(chain, name)
            removed.append(f"{tool}: empty base chain {chain} it had created")
    if created.get("table") and tool.nft_base_chains(name) is not None and tool.save(name).is_empty():
        tool.delete_nft_table(name)
        removed.append(f"{tool}: empty table {NFT_FAMILY[tool.family]} {name} it had created")
    return removed


def cleanup(backends: tuple[str, ...] = BACKENDS) -> list[str]:
    """Remove every rule a crashed daemon left in this network namespace, on both backends."""
    state = _read_state()
    removed, errors = [], []
    for backend in backends:
        for family in FAMILIES:
            tool = Tool(backend, family)
            if not tool.available():
                continue
            created = state.get("created", {}) if state.get("backend") == backend else None
            try:
                removed += remove_ours(tool, created)
            except IptablesError as exc:
                errors.append(str(exc))
    if errors:
        raise IptablesError("; ".join(errors))
    if state.get("backend") in backends or not state:
        _forget_state()
    return removed
