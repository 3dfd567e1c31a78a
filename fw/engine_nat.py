# cython: annotation_typing=False
"""The engine's NAT: which new sessions translate, the binding they keep, and each packet rewritten.

How it works. The rules decide on the packet as it arrived; for a session they accepted, `Nat.bind`
picks at most one destination translation (a virtual server at the packet's destination address,
proto and port: fw/engine_lb.py picks its real server; else the first matching `dnat` entry: it may
match `iif`, never `oif`) and then at most one source translation (the first matching `snat` entry,
matched on the translated destination; a virtual server with `full_nat` brings its own).
`masquerade` needs the outgoing interface's address, which only the live daemon can give (`routes`,
its route snapshot: a plain mapping read, no I/O; never in replay, as SPEC says). The source port
(an ICMP echo id) comes from the entry's fw.nat.ports.Pool: kept when the translated tuple is free,
else the next free one; none free: the session is refused as `nat:exhausted`. In an active/active HA
cluster (`Nat(node, nodes)`, from EngineConfig.nat_slice) every pool hands out ports from this
node's slice of its range only, so two nodes translating to one address never pick the same port; a
peer's synced session claims its port in our pools only if it lies in our slice (it does not).

A translated session carries a `Binding` in its `extra`: the tuple each direction arrives with
(original: client c:cp -> d:dp; reply: server s:sp -> t:tp), the compiled fw.nat.rewrite
Translation of each direction, the entry names (`translation` in replay), the pool port it holds,
and for FTP the FtpNatSession. The table stores the session under the reply tuple's key too, so a
reply finds it in one lookup; untranslated sessions carry nothing more.

Packets: `Binding.direction` says which way a packet goes (None: it carries neither tuple, for
example a packet captured after translation: dropped as `invalid:state`); the accepted packet leaves
through a RewritePacket effect. ICMP errors quoting a translated packet get the outer and the quoted
header translated (`error_rewrite`), as Linux's nf_nat_icmp_reply_translation. Data sessions an ALG
expects follow their control session (`follow`): an address of one side becomes the same end's
address on the other side; the announced port the one the ALG rewrite chose.

A new translated session is on the new-session path, so its binding is made cheaply: the entries
are sorted by kind when the policy is loaded (`dnats`, `snats`, `sources`; none of a kind: no scan),
the names made without a join, the reply key and orientation written out, both Translations made
at once by fw.nat.rewrite.pair, and `opened` puts it in place in one call. build_compiled.py
compiles this module (fw/engine_nat.pxd: Binding a final cdef class, its `forward` and `backward`
typed Translations, so that fw/engine.py's established TCP path, which types the session's Extra,
the Binding and the Translation, reaches the rewrite in C; Nat a final cdef class whose `bind` and
`opened` Engine.open_session calls in C); it runs unchanged as Python.
"""

from __future__ import annotations

from struct import Struct

from fw import engine_nat_ftp
from fw.conntrack.table import REVERSED, Extra, flow_key, untrack
from fw.decision import DROP
from fw.engine_lb import AllDown, LoadBalancer
from fw.nat.ftp import FtpNatSession
from fw.nat.ports import Pool
from fw.nat.rewrite import Manip, RewriteError, Translation, _made, pair, rewrite

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

_KEEP = Manip()
# A translated direction's new addresses and ports (a Translation's `header`), one pack per family.
_HEADER4 = Struct("!4s4sHH").pack
_HEADER6 = Struct("!16s16sHH").pack

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
EXHAUSTED = "nat:exhausted"
# Binding.kernel: the live daemon's kernel conntrack entry (fw.drivers.nat_kernel) holds the
# binding: not asked yet, asked (a KernelNat effect went out), or held (the engine rewrites nothing).
KERNEL_NO, KERNEL_ASKED, KERNEL_HELD = 0, 1, 2


class _Translated:
    """The fields a nat entry matches, for a packet whose destination a dnat changed."""

    __slots__ = ("proto", "family", "sport", "dport", "icmp_type", "icmp_code")

    def __init__(self, pkt, dport: int):
        self.proto, self.family, self.sport = pkt.proto, pkt.family, pkt.sport
        self.dport = dport
        self.icmp_type, self.icmp_code = pkt.icmp_type, pkt.icmp_code


class Binding:
    """A translated session's two tuples as they arrive, and how each direction is rewritten.

    `orig` = (c, d, cp, dp): the client's packets as they arrive; `reply` = (s, t, sp, tp): the
    server's. A packet of the original direction leaves as (t, s, tp, sp), a reply as (d, c, dp, cp).
    ICMP echo: the id in both port places.
    """

    # What every packet reads first, in the object's first cache line.
    __slots__ = ("ftp", "alias", "alias_side", "forward", "backward", "after", "mid", "proto", "family", "orig",
                 "reply", "names", "held", "ports", "middle", "lb", "kernel")

    def __init__(self, proto: int, family: int, orig: tuple, reply: tuple, names: str, held=None):
        self.proto = proto
        self.family = family
        self.orig = orig
        self.reply = reply
        self.names = names
        self.held = held  # (pool, proto, address, port) the session holds, released when it goes
        self.ftp = None  # fw.nat.ftp.FtpNatSession of a translated FTP control session
        self.ports: dict | None = None  # (dst, dport) a data session arrives for -> (dst, dport) it leaves for
        c, d, cp, dp = orig
        s, t, sp, tp = reply
        # The reply's key (flow_key, orientation written out): the table's second key, unless it is the first.
        if s < t or (s == t and sp <= tp):
            alias, self.alias_side = (proto, s, t, sp, tp), 0  # the engine's `side` of a reply packet
        else:
            alias, self.alias_side = (proto, t, s, tp, sp), REVERSED
        if c < d or (c == d and cp <= dp):
            self.alias = None if alias == (proto, c, d, cp, dp) else alias
        else:
            self.alias = None if alias == (proto, d, c, dp, cp) else alias
        self.forward, self.backward = pair(family, proto, orig, reply)
        self.middle = None  # hairpin: (dict, key) of the tuple between the two passes (fw.engine_nat_passes)
        self.after = None  # two passes (`split`): per direction the source half, or None
        self.mid = None  # two passes: per direction the tuple between the passes
        self.lb: tuple | None = None  # a balanced session: (LoadBalancer, (virtual server, real server))
        self.kernel = KERNEL_NO  # whether the kernel holds the binding (live daemon, node-local)

    @property
    def dnat(self) -> bool:
        """Whether the destination is translated (an echo's id, in both port places, is the source's)."""
        echo = self.proto == ICMP or self.proto == ICMPV6
        return self.orig[1] != self.reply[0] or (not echo and self.orig[3] != self.reply[2])

    @property
    def snat(self) -> bool:
        return self.orig[0] != self.reply[1] or self.orig[2] != self.reply[3]

    def direction(self, src: bytes, dst: bytes, sport: int, dport: int) -> bool | None:
        """True: the original direction as it arrives; False: the reply; None: neither."""
        c, d, cp, dp = self.orig
        if src == c and sport == cp and dst == d and dport == dp:
            return True
        s, t, sp, tp = self.reply
        if src == s and sport == sp and dst == t and dport == tp:
            return False
        return None

    def rewrite(self, data: bytes, pkt, original: bool, partial: bool = False) -> bytes:
        translation = self.forward if original else self.backward
        if translation is None:  # two passes, nothing to change before routing
            return rewrite(data, pkt, _KEEP, partial=True) if partial else data
        return translation.apply(data, pkt, partial)

    def between(self, original: bool) -> tuple:
        """(src, dst, sport, dport) a packet of that direction carries between the two live passes:
        its destination translated (before routing), its source not yet (after routing). ICMP echo:
        the id in both port places."""
        c, d, cp, dp = self.orig
        s, t, sp, tp = self.reply
        echo = self.proto == ICMP or self.proto == ICMPV6
        if original:
            return c, s, cp, cp if echo else sp
        return s, c, cp if echo else sp, cp

    def split(self) -> None:
        """Compile for the live daemon's two passes (fw.engine_nat_passes): `forward`/`backward`
        become the before-routing halves (to `between`; None where nothing changes then), `after`
        the after-routing ones (None where the source does not change: no second pass)."""
        if self.mid is not None:
            return
        family, proto = self.family, self.proto
        self.mid = (self.between(True), self.between(False))
        before, after = [], []
        for original, arriving, source_changes in ((True, self.orig, self.snat), (False, self.reply, self.dnat)):
            middle = self.mid[0 if original else 1]
            before.append(None if middle == arriving else Translation(family, proto, arriving, middle))
            after.append(Translation(family, proto, middle, self.left(original)) if source_changes else None)
        self.forward, self.backward = before
        self.after = tuple(after)

    def left(self, original: bool) -> tuple:
        """(src, dst, sport, dport) a packet of that direction leaves with."""
        if original:
            s, t, sp, tp = self.reply
            return t, s, tp, sp
        c, d, cp, dp = self.orig
        return d, c, dp, cp

    def peers(self):
        """The control session's ends as the server's side sees them (an ALG's `peers.translated`)."""
        from fw.alg import Peers

        s, t, sp, tp = self.reply
        return Peers(self.family, t, s, tp, sp)

    def to_dict(self) -> dict:
        """Plain values for snapshots and HA sync (addresses as hex)."""
        return {"orig": _plain(self.orig), "reply": _plain(self.reply), "names": self.names,
                "pool": self.held[4] if self.held is not None else None,
                "ftp": self.ftp.to_dict() if self.ftp is not None else None,
                "ports": [[a.hex(), p, b.hex(), q] for (a, p), (b, q) in (self.ports or {}).items()],
                **({"lb": list(self.lb[1])} if self.lb is not None else {})}

    @classmethod
    def from_dict(cls, proto: int, family: int, data: dict) -> Binding:
        binding = cls(proto, family, _tuple(data["orig"]), _tuple(data["reply"]), str(data["names"]))
        binding.held = (None, None, None, None, data.get("pool"))  # the engine claims the port again
        if data.get("ftp") is not None:
            binding.ftp = FtpNatSession.from_dict(data["ftp"])
        ports = data.get("ports") or ()
        binding.ports = {(bytes.fromhex(a), int(p)): (bytes.fromhex(b), int(q)) for a, p, b, q in ports} or None
        if data.get("lb") is not None:  # the engine that adopts it links its LoadBalancer
            binding.lb = (None, tuple(str(name) for name in data["lb"]))
        return binding


def _plain(four: tuple) -> list:
    return [four[0].hex(), four[1].hex(), four[2], four[3]]


def _tuple(raw) -> tuple:
    src, dst, sport, dport = raw
    return bytes.fromhex(src), bytes.fromhex(dst), int(sport), int(dport)


class Nat:
    """The policy's nat entries and their pools (kept across reloads while an entry's pool is the same)."""

    def __init__(self, node: int = 0, nodes: int = 1) -> None:
        Pool(4, node=node, nodes=nodes)  # ValueError now for a node that is not among the nodes
        self.node, self.nodes = node, nodes  # this node's slice of every port range (HA active/active)
        self.entries: tuple = ()
        self.dnats: tuple = ()  # the entries by kind, in policy order (what `bind` scans)
        self.snats: tuple = ()
        self.sources: tuple = ()  # snat and masquerade entries
        self.pools: dict[tuple, Pool] = {}
        self.by_name: dict[str, Pool] = {}
        # The live daemon's input (None in replay): a route snapshot, {(family, dst): (oif,
        # preferred source address) as the kernel routes a packet to `dst`, or None: not routed
        # out}, kept by the driver (fw.drivers.routes: the packet's own destination, and
        # `route_targets`, the translated destinations the policy can give). With it, a new
        # session's source translation is decided on the route to its translated destination and
        # `masquerade` entries apply. A plain mapping read: the engine does no I/O.
        self.routes = None
        self.route_targets: frozenset = frozenset()  # (family, address) of every dnat target and real server
        self.middle: dict[tuple, object] = {}  # hairpin sessions by their `between` key (two passes)
        # The key a binding found taken (EXHAUSTED: a destination-only binding's reply key, or the
        # tuple between the live passes, `_between_taken`): the engine retires a finished TCP
        # session holding it for a new SYN (as conntrack reopens from TIME_WAIT).
        self.clash: tuple | None = None
        self.two_passes = False  # the live daemon's NAT (fw.engine_nat_passes.use_two_passes)
        self.lb = LoadBalancer(node, nodes)
        self.active = False  # anything to translate: nat entries or virtual servers
        # The live daemon's input (fw.drivers.nat_kernel): True when the driver can give the kernel
        # a bare session's binding; the two passes then emit KernelNat once it is established.
        self.kernel_bindings = False
        # Per packet (the driver's input, as `Engine.partial`): its kernel conntrack entry holds its
        # session's binding (the packet mark's KERNEL_NAT_MARK). A packet of a session the kernel
        # translates whose entry is another one (queued before the switch) is still rewritten here.
        self.kernel_packet = False

    def configure(self, entries, virtual_servers=()) -> None:
        self.lb.configure(virtual_servers)
        self.entries = tuple(entries)
        self.dnats = tuple(entry for entry in self.entries if entry.type == "dnat")
        self.snats = tuple(entry for entry in self.entries if entry.type == "snat")
        self.sources = tuple(entry for entry in self.entries if entry.type != "dnat")
        self.active = bool(self.entries) or self.lb.active
        pools, by_name = {}, {}
        for entry in self.sources:
            families = (entry.family,) if entry.type == "snat" else (4, 6)
            for family in families:
                spec = (entry.type, family, entry.to_first, entry.to_last, entry.ports)
                pool = self.pools.get(spec) or Pool(family, entry.to_first, entry.to_last, entry.ports,
                                                    node=self.node, nodes=self.nodes)
                pools[spec] = by_name[_pool_name(entry.name, entry.type, family)] = pool
        for spec in self.lb.services.specs.values():
            if spec.full_nat:  # full_nat's pool, found again by this name after a restore
                by_name["lb:" + spec.name] = self.lb.source_pool(spec)
        self.pools, self.by_name = pools, by_name
        self.route_targets = frozenset(
            [(4 if len(entry.to_first) == 4 else 6, entry.to_first) for entry in self.dnats]
            + [(spec.family, server.packed) for name, spec in self.lb.services.specs.items()
               for server in self.lb.services.balancers[name].servers])

    def destination(self, pkt, dport: int, iif, src: int | None = None):
        """The destination decision (SPEC: before routing; `iif` may match, `oif` never): the
        first matching dnat entry -> (entry, new dst, new dport), or (None, dst, dport). The one
        place a dnat destination is chosen; `bind` asks the virtual servers first."""
        if not self.dnats:
            return None, pkt.dst, dport
        if src is None:
            src = int.from_bytes(pkt.src, "big")
        dnat = _first(self.dnats, pkt.family, pkt, src, int.from_bytes(pkt.dst, "big"), iif, None)
        if dnat is None:
            return None, pkt.dst, dport
        return dnat, dnat.to_first, dport if dnat.to_port is None else dnat.to_port

    def bind(self, pkt, sport: int, dport: int, iif, oif, sessions: dict, now: float = 0.0):
        """The binding of a new session the rules accepted, None (nothing applies), EXHAUSTED, or
        an engine_lb.AllDown (a virtual server with no real server available)."""
        lb = self.lb
        choice = lb.choose(pkt, sport, dport, now) if lb.active else None
        dnat = None
        # No entry that could translate the source: a dnat or a virtual server changes the
        # destination only, and its binding is made by `_destination_only`.
        keep_source = not (self.sources if self.routes is not None else self.snats)
        if choice is not None:  # a virtual server at this destination: its real server (SPEC: first)
            if choice.__class__ is AllDown:
                return choice
            picked = choice
            if keep_source and not picked.full_nat:
                binding = _destination_only(pkt, sport, dport, picked.dst, picked.dport, picked.names,
                                            picked.ip_delta, picked.l4_delta, sessions)
                if binding is EXHAUSTED:
                    self.clash = flow_key(pkt.proto, picked.dst, pkt.src, picked.dport, sport)
                elif self.middle and self._between_taken(pkt.proto, pkt.src, picked.dst, sport, picked.dport,
                                                         sessions, False):
                    binding = EXHAUSTED
            else:
                binding = self._source(pkt, sport, dport, iif, oif, sessions, None, picked, picked.dst, picked.dport)
            if binding is EXHAUSTED:
                lb.refused(picked.key)  # not opened after all: neither counted opened nor active
            else:
                bound = binding  # (compiled: a Binding's C field)
                bound.lb = picked.link  # (self.lb, choice.key), one tuple per server
            return binding
        if self.dnats:
            dnat, new_dst, new_dport = self.destination(pkt, dport, iif)
            if dnat is not None and keep_source and (pkt.proto == TCP or pkt.proto == UDP):
                address_delta = int.from_bytes(pkt.dst, "big") - int.from_bytes(new_dst, "big")
                binding = _destination_only(pkt, sport, dport, new_dst, new_dport, "nat:" + dnat.name,
                                            address_delta % 0xFFFF if pkt.family == 4 else 0,
                                            (address_delta + dport - new_dport) % 0xFFFF, sessions)
                if binding is EXHAUSTED:
                    self.clash = flow_key(pkt.proto, new_dst, pkt.src, new_dport, sport)
                elif self.middle and self._between_taken(pkt.proto, pkt.src, new_dst, sport, new_dport, sessions,
                                                         False):
                    return EXHAUSTED
                return binding
        else:
            new_dst, new_dport = pkt.dst, dport
        return self._source(pkt, sport, dport, iif, oif, sessions, dnat, None, new_dst, new_dport)

    def _between_taken(self, proto, c: bytes, s: bytes, cp: int, sp: int, sessions: dict, both: bool) -> bool:
        """Whether another translated session's packets carry (c, s, cp, sp), the tuple a new
        binding's carry between the live passes (client and real server, before the source is
        translated): after routing a marked packet is found by that tuple alone
        (fw.engine_nat_passes), so two sessions sharing it would take each other's source half.
        A binding that keeps one end (`both` False) has it as one of its own keys: only another
        binding's `middle` key can hold it. One that translates both (full_nat, dnat with snat)
        keeps it as a `middle` key, and it may also be the reply key of a session from the same
        client port to the same real server that keeps its source (two-arm). Then the new session
        is refused (`clash` names the tuple; the engine may take it from a finished session).
        Only the live daemon (two passes) has `middle` keys; the table is checked in replay too,
        so that both decide alike. TCP and UDP (an echo's id is in both port places)."""
        if proto != TCP and proto != UDP:
            return False
        key = flow_key(proto, c, s, cp, sp)
        middle = self.middle
        holder = middle.get(key) if middle else None
        if holder is None and both:
            holder = sessions.get(key)
            if holder is not None and (holder.nat is None or _between_key(holder.nat) != key):
                holder = None  # it has the tuple on the wire, not between the passes
        if holder is None:
            return False
        self.clash = key
        return True

    def _source(self, pkt, sport, dport, iif, oif, sessions, dnat, choice, new_dst, new_dport):
        """The source half of `bind`, on the translated destination: a Binding, None or EXHAUSTED."""
        family, proto = pkt.family, pkt.proto
        if choice is not None and choice.spec.full_nat:
            return self._full_nat(pkt, sport, dport, choice, new_dst, new_dport, sessions)
        masquerade = None
        routes = self.routes
        if routes is not None:
            entries = self.sources
            if entries and (new_dst != pkt.dst or oif is None):
                route = routes.get((family, new_dst))
                if route is not None:
                    oif = route[0]
        else:
            entries = self.snats
        snat = None
        if entries:
            view = _Translated(pkt, new_dport) if new_dport != dport else pkt
            snat = _first(entries, family, view, int.from_bytes(pkt.src, "big"), int.from_bytes(new_dst, "big"),
                          iif, oif)
            if snat is not None and snat.type == "masquerade":
                route = routes.get((family, new_dst))
                masquerade = route[1] if route is not None else None
                if masquerade is None:
                    return EXHAUSTED  # no address to masquerade as (no route, or none on its interface)
        echo = proto == ICMP or proto == ICMPV6
        if snat is None:
            if dnat is None and choice is None:
                return None
            address, port, held = pkt.src, sport, None
            if flow_key(proto, new_dst, address, new_dport, port) in sessions:
                return EXHAUSTED  # the untranslated source is in use toward the new destination
            if self.middle and self._between_taken(proto, address, new_dst, port, new_dport, sessions, False):
                return EXHAUSTED
            if choice is not None:
                names = choice.names
            else:
                names = "nat:" + dnat.name
        else:
            name = _pool_name(snat.name, snat.type, family)
            pool = self.by_name[name]

            def taken(candidate: bytes, number: int) -> bool:
                return flow_key(proto, new_dst, candidate, number if echo else new_dport, number) in sessions

            if dnat is not None or choice is not None:  # both ends: (c, s, cp, sp) between the passes
                if self._between_taken(proto, pkt.src, new_dst, sport, new_dport, sessions, True):
                    return EXHAUSTED
            elif self.middle and self._between_taken(proto, pkt.src, new_dst, sport, new_dport, sessions, False):
                return EXHAUSTED
            found = pool.allocate(proto, pkt.src, sport, taken, masquerade)
            if found is None:
                return EXHAUSTED
            address, port = found
            held = (pool, proto, address, port, name)
            names = "nat:" + snat.name if dnat is None else "nat:" + dnat.name + ",nat:" + snat.name
            if choice is not None:
                names = choice.names + "," + names
        reply = (new_dst, address, port if echo else new_dport, port)
        return Binding(proto, family, (pkt.src, pkt.dst, sport, dport), reply, names, held)

    def _full_nat(self, pkt, sport, dport, choice, new_dst, new_dport, sessions):
        """A virtual server's `full_nat`: the source becomes the firewall's address toward the real
        server (the route's preferred source, as masquerade, when the live daemon gives routes; the
        virtual address in replay), its port from the virtual server's pool."""
        address = None
        if self.routes is not None:
            route = self.routes.get((pkt.family, new_dst))
            address = route[1] if route is not None else None
            if address is None:
                return EXHAUSTED
        pool = self.lb.source_pool(choice.spec)
        proto = pkt.proto

        def taken(candidate: bytes, number: int) -> bool:
            return flow_key(proto, new_dst, candidate, new_dport, number) in sessions

        if self._between_taken(proto, pkt.src, new_dst, sport, new_dport, sessions, True):
            return EXHAUSTED
        found = pool.allocate(proto, pkt.src, sport, taken, address)
        if found is None:
            return EXHAUSTED
        held = (pool, proto, found[0], found[1], "lb:" + choice.spec.name)
        reply = (new_dst, found[0], new_dport, found[1])
        return Binding(proto, pkt.family, (pkt.src, pkt.dst, sport, dport), reply, choice.names, held)

    def opened(self, session, binding: Binding, table, sessions: dict | None = None) -> None:
        """A new session's binding in place: in its `extra`, its reply key in the table, its
        passes (`remember`), and an ALG's view of the translated ends (FTP: its rewriting state).
        A session no cycle can pass through is left to reference counting (`settled`)."""
        extra = session.extra
        if extra is None:  # compiled, an Extra's fields start as None without its __init__ call
            extra = session.extra = Extra.__new__(Extra) if cython.compiled else Extra()
        extra.nat = binding
        alias = binding.alias
        if sessions is None:  # (the engine gives table.sessions; compiled: the dict's own setdefault, in C)
            sessions = table.sessions
        if alias is not None and sessions.setdefault(alias, session) is session:  # table.add_alias
            table.aliases += 1
        if self.two_passes:
            self.remember(session, binding)
        alg = extra.alg
        if alg is not None:  # the ALG judges and expects in the server side's terms
            alg.peers.translated = binding.peers()
            if alg.name == "ftp":
                binding.ftp = FtpNatSession(binding.family)
        elif extra.parent is None and binding.middle is None:
            settled(session, extra, binding)

    def remember(self, session, binding: Binding) -> None:
        """A new or adopted session's binding in the live daemon's two passes: split, and for
        hairpin sessions (both halves) a third key to be found by between the passes."""
        if not self.two_passes:
            return
        binding.split()
        if binding.dnat and binding.snat:
            c, s, cp, sp = binding.between(True)
            key = flow_key(binding.proto, c, s, cp, sp)
            self.middle[key] = session
            binding.middle = (self.middle, key)

    def kernel_translates(self, session) -> bool:
        """The driver's word that the kernel conntrack entry of `session` holds its binding (after a
        KernelNat): from now on its packets whose kernel entry is that one (`kernel_packet`) are
        tracked as always but accepted without a rewrite (no RewritePacket, no mark for the second
        pass). Node-local: neither in snapshots nor in HA sync. False when not asked."""
        binding = session.nat
        if binding is None or binding.kernel != KERNEL_ASKED:
            return False
        binding.kernel = KERNEL_HELD
        return True

    def kernel_adopt(self, session) -> bool:
        """A restored session whose kernel entry, kept by the daemon before a restart, still holds
        its binding (fw.drivers.nat_kernel `adopt`): held, as after `kernel_translates`."""
        binding = session.nat
        if binding is None or binding.ftp is not None or binding.kernel == KERNEL_HELD:
            return False
        binding.kernel = KERNEL_HELD
        return True

    def kernel_lost(self, session) -> None:
        """The kernel no longer holds the binding (its entry went away while the session lives): the
        engine rewrites the packets again, and may ask once more."""
        binding = session.nat
        if binding is not None and binding.kernel == KERNEL_HELD:
            binding.kernel = KERNEL_NO

    def claim(self, binding: Binding) -> None:
        """A restored or synced binding: its pool port handed out again (its entry still exists),
        a balanced one counted on its real server."""
        if binding.lb is not None:
            binding.lb = (self.lb, binding.lb[1])
            self.lb.adopted(binding.lb[1])
        name = binding.held[4] if binding.held is not None else None
        pool = self.by_name.get(name) if name is not None else None
        if pool is None and name is not None:  # a snapshot of an snat entry's pool (named as its entry)
            pool = self.by_name.get(_pool_name(name, "snat", binding.family))
        if pool is None:
            binding.held = None
            return
        _s, address, _sp, port = binding.reply
        pool.claim(binding.proto, address, port)
        binding.held = (pool, binding.proto, address, port, name)


def _destination_only(pkt, sport, dport, new_dst: bytes, new_dport, names: str, ip_delta: int, l4_delta: int,
                      sessions: dict):
    """The Binding of a TCP or UDP session whose destination d:dp becomes s:sp, its source c:cp
    kept (a virtual server's real server, a dnat entry without snat), or EXHAUSTED when the reply
    tuple is another session's. The same Binding as `Binding(proto, family, (c, d, cp, dp),
    (s, c, sp, cp), names)`, made without its arithmetic: `ip_delta` and `l4_delta` are the
    original direction's checksum differences (the reply's are their negations; a virtual server
    knows them once per real server), the reply's key is the one the free-tuple check looked up
    (none when nothing changes), each direction's new header one struct pack, and the fields are
    set without an `__init__` call."""
    proto, family, c, d = pkt.proto, pkt.family, pkt.src, pkt.dst
    # The reply's key (flow_key written out) and the side a reply packet is on.
    if new_dst < c or (new_dst == c and new_dport <= sport):
        alias, side = (proto, new_dst, c, new_dport, sport), 0
    else:
        alias, side = (proto, c, new_dst, sport, new_dport), REVERSED
    if alias in sessions:
        return EXHAUSTED  # the untranslated source is in use toward the new destination
    udp = proto == UDP
    bare = 20 if family == 4 else 40
    end = bare + (8 if udp else 18)
    zero = 0xFFFF if udp else 0
    binding = Binding.__new__(Binding)
    binding.proto = proto
    binding.family = family
    binding.orig = (c, d, sport, dport)
    binding.reply = (new_dst, c, new_dport, sport)
    binding.names = names
    binding.held = None
    binding.ftp = None
    binding.ports = None
    binding.alias = None if new_dst == d and new_dport == dport else alias  # the reply's key is the session's own
    binding.alias_side = side
    if cython.compiled and len(new_dst) == len(c) == len(d):  # the two headers made in C
        forward = _c_header(c, new_dst, sport, new_dport)  # noqa: F821 - fw/nat/rewrite.pxd's
        backward = _c_header(d, c, dport, sport)  # noqa: F821
    else:
        pack = _HEADER4 if family == 4 else _HEADER6
        forward, backward = pack(c, new_dst, sport, new_dport), pack(d, c, dport, sport)
    number, number_back = sport, dport  # (compiled: C integers, their sums without int objects)
    binding.forward = _made(family, proto, udp, zero, bare, end, forward, ip_delta, l4_delta, number + number_back)
    number_back = new_dport
    binding.backward = _made(family, proto, udp, zero, bare, end, backward, -ip_delta % 0xFFFF, -l4_delta % 0xFFFF,
                             number_back + number)
    binding.middle = None
    binding.after = None
    binding.mid = None
    binding.lb = None
    binding.kernel = KERNEL_NO
    return binding


def _between_key(binding: Binding) -> tuple:
    """The key of the tuple a TCP or UDP binding's packets carry between the live passes (c, s, cp, sp)."""
    c, _d, cp, _dp = binding.orig
    s, _t, sp, _tp = binding.reply
    return flow_key(binding.proto, c, s, cp, sp)


def settled(session, extra, binding: Binding) -> None:
    """Leave a new translated session without an ALG, a parent or a hairpin key (the common NAT or
    balanced session), its Extra and its Binding to reference counting, as table.untrack does for
    a session without `extra`: none of them can lead back to the session (the binding holds tuples
    of bytes and ints, Translations, its pool and its LoadBalancer, which hold no session; an owner
    set later is a node number), so the cycle collector need not count them towards its next
    collection nor walk them in every full one (the whole table). Its tuples of bytes and ints
    (`orig`, `reply`, the reply's key), which the collector would walk once and then untrack, are
    untracked too. Compiled only, as untrack."""
    if cython.compiled:
        untrack(session)
        PyObject_GC_UnTrack(extra)  # noqa: F821 - engine_nat.pxd's (Python.h)
        PyObject_GC_UnTrack(binding)  # noqa: F821
        PyObject_GC_UnTrack(binding.orig)  # noqa: F821
        PyObject_GC_UnTrack(binding.reply)  # noqa: F821
        if binding.alias is not None:
            PyObject_GC_UnTrack(binding.alias)  # noqa: F821


def _pool_name(name: str, kind: str, family: int) -> str:
    """The pool's key: an snat entry's name; a masquerade entry has one pool per family."""
    return name if kind == "snat" else f"{name}/ipv{family}"


def release(binding: Binding, session_bytes: int = 0) -> None:
    """The session is gone: its pool port is free again (and its hairpin key forgotten), its real
    server one session lighter."""
    if binding.lb is not None:
        balancer, key = binding.lb
        binding.lb = None
        if balancer is not None:
            balancer.closed(key, session_bytes)
    if binding.middle is not None:
        middle, key = binding.middle
        middle.pop(key, None)
        binding.middle = None
    held = binding.held
    if held is not None and held[0] is not None:
        held[0].release(held[1], held[2], held[3])
        binding.held = None


def _first(entries, family, pkt, src, dst, iif, oif):
    for entry in entries:
        if entry.family in (None, family) \
                and entry.selector.matches(pkt, src, dst, iif, oif):
            return entry
    return None


def error_rewrite(binding: Binding, pkt, quoted: tuple) -> tuple[Manip, Manip] | None:
    """(outer, quoted) manips for an ICMP error quoting `quoted` (src, dst, sport, dport) of a
    translated session, or None when the quoted packet is not one that crossed the NAT."""
    c, d, cp, dp = binding.orig
    s, t, sp, tp = binding.reply
    if quoted == (t, s, tp, sp):      # about a packet that left toward the server: back to the client
        inner = Manip(c, d, cp, dp)
        outer = Manip(d if binding.dnat else None, c if pkt.dst == t else None)
    elif quoted == (d, c, dp, cp):    # about a reply that left toward the client: on to the server
        inner = Manip(s, t, sp, tp)
        outer = Manip(t if binding.snat else None, s if pkt.dst == d else None)
    else:
        return None
    return outer, inner


def follow(binding: Binding, src: bytes, dst: bytes, dport: int) -> tuple[bytes, bytes, int] | None:
    """Where a data session an ALG expects (arriving from `src` to `dst`:`dport`) leaves for:
    (new src, new dst, new dport), each end taken to the same end's address on the other side."""
    c, d, cp, dp = binding.orig
    s, t, sp, tp = binding.reply
    mapped = (binding.ports or {}).get((dst, dport))
    if src == s and dst == t:      # from the server's side
        new_dst, new_dport = mapped or ((c, cp) if dport == tp else (c, dport))
        new = (d, new_dst, new_dport)
    elif src == c and dst == d:    # from the client's side
        new_dst, new_dport = mapped or (s, dport)
        new = (t, new_dst, new_dport)
    else:
        return None
    return None if new == (src, dst, dport) else new


def translate(engine, decision, binding: Binding, original: bool, now: float):
    """An accepted packet of a translated session: its ALG fed, the packet rewritten (a
    RewritePacket effect); a packet that cannot be rewritten is dropped (`nat:rewrite`). The TCP
    hot path writes the common case out (fw/engine.py)."""
    if binding.ftp is not None:
        return engine_nat_ftp.segment(engine, decision, binding, original, now)
    pkt = decision.packet
    alg = decision.session.extra.alg  # a translated session has its extra
    if alg is not None and (pkt.payload_len or pkt.proto != TCP):
        decision.effects = decision.effects + engine.feed_alg(decision.session, pkt, original, now)
    translation = binding.forward if original else binding.backward
    if translation is None:  # two passes: nothing to change before routing
        return decision
    if binding.kernel == KERNEL_HELD and engine.nat.kernel_packet:  # the kernel rewrites it (fw.drivers.nat_kernel)
        return decision
    try:
        decision.effects = translation.leave(engine.data, pkt, decision.effects, engine.partial)
    except RewriteError:
        engine.counters["nat_rewrite_errors"] += 1
        decision.verdict, decision.reason = DROP, "nat:rewrite"
    return decision


def follow_session(sessions: dict, parent: Binding, pkt, sport: int, dport: int) -> Binding | None:
    """The binding of a data session an ALG of a translated control session expected: its
    addresses follow the control session's (`follow`), its source port kept when the translated
    tuple is free, else the next free one upward."""
    target = follow(parent, pkt.src, pkt.dst, dport)
    if target is None:
        return None
    new_src, new_dst, new_dport = target
    proto = pkt.proto
    port = sport
    for _ in range(65536):
        if flow_key(proto, new_dst, new_src, new_dport, port) not in sessions:
            break
        port = port + 1 if port < 65535 else 1024
    reply = (new_dst, new_src, new_dport, port)
    return Binding(proto, pkt.family, (pkt.src, pkt.dst, sport, dport), reply, parent.names)
