"""The daemon (`fw run`): one loop that owns the queue, the control socket, signals and the clock.

How it works. Start-up, in this order, undone in reverse on any failure: bind the control name
(the per-namespace lock), remove rules a crashed run left, bind the queue(s) and configure them,
open the raw sockets and the event log, install our iptables rules, listen on the control socket.
Then one poll loop: queue readiness -> a batch of packets through the engine (PacketHandler);
control clients -> answers; a signal (SIGTERM/SIGINT: stop, SIGHUP: reload and reopen the log,
SIGUSR2: stop for a restart) arrives as a byte on a wake-up socket and is handled between two
batches, so a policy swap falls between two packets; once a second `engine.expire(now)` and the
kernel's queue counters.
Stopping removes our rules first (traffic falls back to the host's own ruleset), gives a verdict to
the packets still queued, then closes the rest. Stopping for a restart (SIGUSR2, `fw stop
--keep-rules`: `keep_rules`) leaves the rules in place, fail-closed: with no listener the kernel
drops what they queue (a translating policy never has --queue-bypass) and TCP retransmits it once
the next `fw run` has bound the queue; the services keep what the kernel holds for the next run
(`keep_for_restart`: fw.drivers.nat_kernel's entries) and the snapshot is taken as always. The next
run swaps the kept rules for its own in one transaction per table (fw.drivers.iptables
`install_over_stale`), so no packet crosses unjudged, or untranslated, in between.

Later options slot in as more things the loop watches (`Loop.watch`) or ticks (`Daemon.services`):
a metrics server, a sync socket; `--queues A-B` binds several queues into the same loop.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from fw import compiled_modules
from fw.drivers import iptables
from fw.drivers.control import (
    ControlError,
    ControlServer,
    SessionFilter,
    chunked,
    error_answer,
    select_sessions,
    session_view,
)
from fw.drivers.effects import Effects, RawSender
from fw.drivers.eve import EveLog
from fw.drivers.nfqueue import PacketHandler, Queue, QueueOptions, read_queue_counters, summarize

log = logging.getLogger("fw.daemon")

TICK_SECONDS = 1.0
REPORTS_PER_MINUTE = 20  # error reports of one kind written before the rest are only counted
RESTART_DRAIN = 2048  # packets given a verdict at a stop for a restart (the rules still queue more)
EFFECT_COUNTERS = ("packets_sent", "send_errors", "events_logged", "events_unlogged")


@dataclass
class DaemonConfig:
    """What `fw run` was told. Later issues add fields here (metrics, offload, sync, node_id)."""

    policy_path: str
    queues: tuple[int, int] = (0, 0)
    fail_open: bool = False
    log_path: str | None = None
    hooks: tuple[str, ...] = ("FORWARD",)
    families: tuple[int, ...] = (4, 6)
    backend: str | None = None  # nft | legacy | None: the host's iptables
    mark: int = iptables.DEFAULT_MARK
    queue_options: QueueOptions = field(default_factory=QueueOptions)
    # A queue worker under fw.workers: its own control address, and the parent owns the rules.
    control_address: bytes | None = None
    install_rules: bool = True
    offload: bool = False  # --offload: established TCP flows accepted by the kernel (fw.drivers.offload)
    sync: dict | None = None  # --sync, for the workers of --queues (fw.sync.SyncConfig.for_worker())
    nat_slice: tuple[int, int] = (0, 1)  # (node, nodes): this node's share of NAT port ranges (--sync)
    nat: bool = False  # the policy translates: two passes (mangle PREROUTING/POSTROUTING), fw/engine_nat_passes.py
    # NAT: established bare sessions' bindings held by the kernel's conntrack entries (fw.drivers.nat_kernel)
    kernel_nat: bool = True
    # The NFQUEUE binding: "socket" (fw.drivers.nfqueue_socket), "netfilterqueue" (fw.drivers.nfqueue.Queue),
    # "auto": the cheaper one of this build (queue_class()). NAT always needs the socket binding.
    binding: str = "auto"

    @property
    def mode(self) -> str:
        return "fail-open" if self.fail_open else "fail-closed"


def queue_class_for(binding: str = "auto") -> type:
    """The queue class of a binding (DaemonConfig.binding). "auto": our own netlink binding
    (SocketQueue) when it is compiled, where it costs the least per packet; netfilterqueue's Queue
    in a pure-Python run (FW_PURE=1, no C compiler), where its C parser is cheaper
    (docs/performance.md, "Per-packet cost in instructions")."""
    if binding == "netfilterqueue":
        return Queue
    from fw.drivers import nfqueue_socket  # noqa: PLC0415

    if binding == "socket" or nfqueue_socket.__name__ in compiled_modules():
        return nfqueue_socket.SocketQueue
    return Queue


class DaemonError(Exception):
    """The daemon cannot start; `exit_code` per SPEC (1 runtime, 2 usage or invalid policy)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Loop:
    """A small poll loop: file descriptors and what to call when they are ready."""

    def __init__(self):
        self.poller = select.poll()
        self.handlers: dict[int, object] = {}

    def watch(self, fd: int, mask: int, callback) -> None:
        self.poller.register(fd, mask)
        self.handlers[fd] = callback

    def modify(self, fd: int, mask: int) -> None:
        self.poller.modify(fd, mask)

    def unwatch(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def run_once(self, timeout: float) -> None:
        for fd, events in self.poller.poll(max(0, int(timeout * 1000))):
            callback = self.handlers.get(fd)
            if callback is not None:
                callback(events)


class Throttle:
    """At most `limit` reports per kind per minute; the rest are counted and summed up later."""

    def __init__(self, limit: int = REPORTS_PER_MINUTE):
        self.limit = limit
        self.window = 0.0
        self.sent: Counter = Counter()
        self.suppressed: Counter = Counter()

    def allow(self, kind: str, now: float) -> bool:
        if now - self.window >= 60:
            for k, n in self.suppressed.items():
                log.warning("%d more %s reports suppressed in the last minute", n, k)
            self.window, self.sent, self.suppressed = now, Counter(), Counter()
        if self.sent[kind] < self.limit:
            self.sent[kind] += 1
            return True
        self.suppressed[kind] += 1
        return False


class DaemonBase:
    """What `fw run` is, with one queue (Daemon) or one worker per queue (fw.workers.Supervisor):
    the control socket's commands, signals through a wake-up socket, our iptables rules, the
    policy checked before a reload, services ticked by the loop."""

    def __init__(self, config: DaemonConfig, load_policy):
        self.config = config
        self.load_policy = load_policy  # path -> Policy, raising fw.policy.PolicyError
        self.policy_path = config.policy_path
        self.loop = Loop()
        self.started = time.monotonic()
        self.counters: Counter = Counter()  # reloads, reload_failures, loop_errors
        self.services: list = []  # things with tick(now) and close(): control, metrics, sync, offload
        self.reload_hooks: list = []  # hook(policy or None, path, error or None) after each reload
        self.stats_sections: dict = {}  # name -> () -> dict: more sections of `fw stats` (rules, store)
        self.commands: dict = {}  # more control commands: name -> handler(request) -> answer (`lb`, ...)
        self.wakeups: list = []  # () -> monotonic time (or None) the loop must wake at (health checks)
        self.background: list = []  # () -> more to do?: work in slices between batches (Maglev tables)
        self.control: ControlServer | None = None
        self.rules: iptables.Installation | None = None
        self._stop = False
        self._reload = False
        self.keep_rules = False  # stopping for a restart: our rules (and the kernel's bindings) stay
        self._wake_r, self._wake_w = socket.socketpair()

    @property
    def mode_text(self) -> str:
        return ("fail-open: traffic passes when no daemon listens or the queue is full" if self.config.fail_open
                else "fail-closed: traffic is dropped when no daemon listens or the queue is full")

    def _install_signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        self.loop.watch(self._wake_r.fileno(), select.POLLIN, self._drain_wakeups)

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self.stop(keep_rules=signum == signal.SIGUSR2)

    def _drain_wakeups(self, _events) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _close_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()

    def stop(self, keep_rules: bool = False) -> None:
        """Stop after this batch; `keep_rules`: for a restart (the rules stay, fail-closed)."""
        self.keep_rules = self.keep_rules or keep_rules
        self._stop = True

    def _install_rules(self) -> None:
        config = self.config
        from fw.drivers.nat_kernel import KERNEL_NAT_MARK  # noqa: PLC0415
        from fw.engine_nat_passes import NAT_MARK, ONE_PASS_MARK, UNJUDGED_MARK  # noqa: PLC0415

        nat = bool(config.nat)
        self.rules = iptables.Installation(iptables.Hooking(
            queues=config.queues, hooks=config.hooks, fail_open=config.fail_open, mark=config.mark,
            families=config.families, offload=config.offload, nat_mark=NAT_MARK if nat else 0,
            one_pass_mark=ONE_PASS_MARK if nat else 0, unjudged_mark=UNJUDGED_MARK if nat else 0,
            kernel_nat_mark=KERNEL_NAT_MARK if nat and config.kernel_nat else 0),
            config.backend)
        kept_by = iptables.kept_by()  # the last run stopped for a restart (`fw stop --keep-rules`)
        stale = self.rules.install_over_stale()  # no moment without rules (fail-closed stays so)
        if stale and kept_by is not None:
            log.info("took over the %d rules and chains fw (pid %d) kept for this restart, in one commit per table",
                     len(stale), kept_by)
        elif stale:
            log.warning("removed %d rules and chains left by an earlier run", len(stale))

    def _remove_rules(self) -> None:
        if self.rules is not None and self.keep_rules:
            log.info("stopping for a restart: our rules stay (fail-closed: what they queue is dropped "
                     "until `fw run` takes them over, or `fw cleanup` removes them)")
            self.rules = None
            try:
                iptables.note_kept(os.getpid())
            except OSError as exc:
                log.error("cannot note the rules kept for a restart: %s", exc)
        if self.rules is not None:
            try:
                self.rules.remove()
            except iptables.IptablesError as exc:
                log.error("removing our iptables rules failed: %s (run `fw cleanup`)", exc)
            self.rules = None

    def handle(self, request: dict):
        """Answer one control request (the shapes are in README.md)."""
        command = request.get("command")
        if command == "stats":
            return {"ok": True, "stats": self.stats(zero=bool(request.get("zero")))}
        if command == "sessions":
            return self.sessions(request)
        if command == "events":
            return self.events(request)
        if command == "kill":
            try:
                selected = SessionFilter(request.get("filter") or {})
            except ValueError as exc:
                return error_answer(f"bad filter: {exc}", 2)
            return {"ok": True, "killed": self.kill(selected, request.get("filter"))}
        if command == "reload":
            return self.reload(request.get("path"), dry_run=bool(request.get("dry_run")))
        if command == "stop":
            self.stop(keep_rules=bool(request.get("keep_rules")))
            return {"ok": True, **self.pid_info(), "keep_rules": self.keep_rules}
        if command in self.commands:
            return self.commands[command](request)
        return error_answer(f"unknown command {command!r}", 2)

    def _load_for_reload(self, path: str):
        """(policy, None), or (None, the error answer) with the failure counted and logged."""
        from fw.policy import PolicyError  # noqa: PLC0415

        try:
            return self.load_policy(path), None
        except PolicyError as exc:
            lines = [d.format() for d in exc.diagnostics]
            log.error("reload of %s failed, the running policy stays:\n%s", path, "\n".join(lines))
            answer = error_answer(f"{path}: invalid policy, the running policy stays", 2, diagnostics=lines)
            error = "invalid policy"
        except Exception as exc:  # noqa: BLE001
            log.error("reload of %s failed, the running policy stays: %r", path, exc)
            answer = error_answer(f"{path}: cannot load the policy ({exc}); the running policy stays", 1)
            error = str(exc)
        self.counters["reload_failures"] += 1
        self._after_reload(None, path, error)
        return None, answer

    def _after_reload(self, policy, path: str, error: str | None) -> None:
        for hook in self.reload_hooks:
            try:
                hook(policy, path, error)
            except Exception as exc:  # noqa: BLE001  (a record of the reload must not undo it)
                log.error("after the reload of %s: %r", path, exc)

    def pid_info(self) -> dict:
        return {"pid": os.getpid(), "uptime": round(time.monotonic() - self.started, 3)}


class Daemon(DaemonBase):
    """One daemon in this network namespace. `start()`, `run()` until a signal, `close()`."""

    def __init__(self, config: DaemonConfig, engine, load_policy):
        super().__init__(config, load_policy)
        self.engine = engine
        self.throttle = Throttle()
        self.queues: list[Queue] = []
        self.effects: Effects | None = None
        self.handler: PacketHandler | None = None
        self.feed = None  # fw.feed.EventFeed once attached: `fw events`, `fw top`
        self.routes = None  # fw.drivers.routes.Routes of a daemon that translates
        self._baseline: dict[int, Counter] = {}  # kernel queue counters at start or at --zero

    # -- start and stop -------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        try:
            self._install_signals()  # first: a SIGTERM during start-up stops us cleanly, not midway
            self.control = ControlServer(self.handle, config.control_address)
            eve = EveLog(config.log_path) if config.log_path else None
            self.effects = Effects(RawSender(config.mark), eve)
            queue_class = queue_class_for(config.binding)
            if config.nat:  # the NAT passes need the hook and the checksum state: our own binding
                from fw.drivers.nat_queue import NatPacketHandler  # noqa: PLC0415
                from fw.drivers.nfqueue_socket import SocketQueue  # noqa: PLC0415
                from fw.drivers.routes import Routes  # noqa: PLC0415

                self.routes = Routes()
                self.handler = NatPacketHandler(self.engine, config.fail_open, self.effects, self._packet_error,
                                                self.routes)
                if config.kernel_nat:  # the kernel holds established sessions' bindings
                    from fw.drivers.nat_kernel import KernelBindings  # noqa: PLC0415

                    self.handler.bindings = KernelBindings(self.engine)
                    self.handler.bindings.attach(self.effects)
                    self.services.append(self.handler.bindings)
                    self.engine.nat.kernel_bindings = True
                    if self.handler.bindings.adopt():  # a restart: the entries the last run kept
                        log.info("the kernel still holds the bindings of %d restored sessions",
                                 self.handler.bindings.counters["adopted"])
                self.stats_sections["nat"] = self.handler.stats
                queue_class = SocketQueue
            else:
                self.handler = PacketHandler(self.engine, config.fail_open, self.effects, self._packet_error)
            options = QueueOptions(**{**config.queue_options.__dict__, "fail_open": config.fail_open})
            self.handler.accept_later = options.verdict_batch > 1  # accepts go out in batches
            first, last = config.queues
            for number in range(first, last + 1):
                self.queues.append(queue_class(number, self.handler, options))
                self.loop.watch(self.queues[-1].fileno(), select.POLLIN,
                                lambda events, q=self.queues[-1]: self._drain(q))
            counters = read_queue_counters()
            self._baseline = {q.number: Counter(counters.get(q.number, {})) for q in self.queues}
            if config.install_rules:
                self._install_rules()
            self.control.listen(self.loop)
            self.services.append(self.control)
        except (ControlError, iptables.IptablesError, OSError) as exc:
            self.close()
            raise DaemonError(str(exc)) from None
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        """The start-up line: what is in force."""
        config, first, last = self.config, *self.config.queues
        queues = f"queue {first}" if first == last else f"queues {first}-{last}"
        families = "+".join(f"IPv{f}" for f in config.families)
        nat = " (NAT: two passes, or one after routing)" if config.nat else ""
        return (f"fw running ({self.mode_text}); {queues}, hooks {','.join(config.hooks)}{nat}, {families}, "
                f"iptables-{self.rules.backend}; policy {self.policy_path} "
                f"({self.engine.policy.summary()}); control {self.control.name}")

    def close(self) -> None:
        """Remove our rules (not for a restart), give the packets still queued a verdict, close everything."""
        self._remove_rules()
        for service in self.services:  # packets a service keeps (fw.sync's hold): verdicts while the queue is open
            release = getattr(service, "release_held", None)
            if release is not None:
                release()
            keep = getattr(service, "keep_for_restart", None)
            if keep is not None and self.keep_rules:
                keep()
        for queue in self.queues:
            # With our rules gone nothing more arrives; kept (a restart), packets go on arriving:
            # only what waits now, the rest is dropped by the kernel once we unbind (fail-closed).
            self._drain(queue, budget=RESTART_DRAIN if self.keep_rules else 100_000)
            queue.close()
        self.queues = []
        for service in reversed(self.services):
            service.close()
        self.services = []
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.effects is not None:
            self.effects.close()
            self.effects = None
        if self.routes is not None:
            self.routes.close()
            self.routes = None
        self._close_signals()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        next_tick = time.monotonic() + TICK_SECONDS
        pending = False
        while not self._stop:
            try:
                wake = next_tick
                for due in self.wakeups:
                    when = due()
                    if when is not None and when < wake:
                        wake = when
                self.loop.run_once(0 if pending else wake - time.monotonic())
                pending = False
                for work in self.background:  # one slice each, between two batches
                    pending = work() or pending
                if self._reload:
                    self._reload = False
                    self.reload()
                    if self.effects.log is not None:
                        self.effects.log.reopen()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_SECONDS
                    self.tick(now)
                if self.effects.log is not None:
                    self.effects.log.flush()
            except Exception as exc:  # noqa: BLE001  (the loop survives everything)
                self.counters["loop_errors"] += 1
                if self.throttle.allow("loop", time.monotonic()):
                    log.exception("the loop failed, and goes on: %r", exc)

    def _drain(self, queue: Queue, budget: int | None = None) -> None:
        try:
            queue.drain(budget)
        except Exception as exc:  # noqa: BLE001  (the loop survives everything)
            self.counters["loop_errors"] += 1
            if self.throttle.allow("queue", time.monotonic()):
                log.error("queue %d: reading failed: %r", queue.number, exc)

    def tick(self, now: float) -> None:
        try:
            effects = self.engine.expire(now)
            if effects:
                self.effects(effects)
        except Exception as exc:  # noqa: BLE001
            self.counters["expire_errors"] += 1
            if self.throttle.allow("expire", now):
                log.error("expiring sessions failed: %r", exc)
        self.handler.forget_interfaces()
        self._check_overflows(now)
        for service in self.services:
            service.tick(now)

    def _check_overflows(self, now: float) -> None:
        counters = read_queue_counters()
        for queue in self.queues:
            seen = counters.get(queue.number, {})
            lost = seen.get("queue_dropped", 0) + seen.get("user_dropped", 0) + queue.enobufs
            reported = self.counters[f"reported_overflows:{queue.number}"]
            if lost > reported:
                self.counters[f"reported_overflows:{queue.number}"] = lost
                if self.throttle.allow("overflow", now):
                    log.warning("queue %d overflowed: %d packets dropped by the kernel (queue full: %d, "
                                "socket buffer full: %d, ENOBUFS seen: %d)", queue.number, lost - reported,
                                seen.get("queue_dropped", 0), seen.get("user_dropped", 0), queue.enobufs)
                self._event("anomaly", {"type": "queue", "event": "overflow", "queue": queue.number,
                                        "lost": lost - reported})

    def _packet_error(self, where: str, exc: BaseException, data: bytes) -> None:
        if not self.throttle.allow(where, time.monotonic()):
            return
        verdict = "accepted" if self.config.fail_open else "dropped"
        summary = summarize(data)
        log.error("%s failed on a packet (%s, %s): %r", where, summary, verdict, exc)
        self._event("anomaly", {"type": "packet", "event": f"{where}_error", "message": repr(exc),
                                "packet": summary, "verdict": verdict})

    def _event(self, event_type: str, body: dict) -> None:
        if self.effects is not None and self.effects.log is not None:
            self.effects.log.write({"event_type": event_type, event_type: body})

    # -- what the control socket asks for -------------------------------------------------------

    def sessions(self, request: dict | None = None):
        """The session table (filtered, sorted, limited as asked) as a JSON document, built a few
        hundred sessions per loop turn."""
        from fw.events import flow_id  # noqa: PLC0415

        request = request or {}
        now, snapshot = time.monotonic(), list(self.engine.sessions)
        if request.get("filter") or request.get("sort") or request.get("limit") is not None:
            try:
                snapshot = select_sessions(snapshot, request.get("filter"), request.get("sort"), request.get("limit"))
            except ValueError as exc:
                yield json.dumps(error_answer(f"bad request: {exc}", 2)) + "\n"
                return
        head = {"ok": True, "version": 1, "count": len(snapshot), "total": len(self.engine.sessions)}
        yield json.dumps(head)[:-1] + ', "sessions": ['
        yield from chunked(snapshot, lambda s: session_view(s, now, flow_id))
        yield "]}\n"

    def events(self, request: dict):
        """`fw events`: the feed's recent events, and with `follow` the new ones as they come."""
        from fw.feed import parse_request  # noqa: PLC0415

        if self.feed is None:
            return error_answer("this daemon keeps no event feed", 1)
        try:
            follow, types, since = parse_request(request)
        except ValueError as exc:
            return error_answer(f"bad request: {exc}", 2)
        return self.feed.stream(follow, types, since)

    def kill(self, selected: SessionFilter, _spec=None) -> int:
        now, killed = time.monotonic(), 0
        for session in list(self.engine.sessions):
            if selected.all or selected(session):
                self.effects(self.engine.kill(session, now))  # its SessionClosed reaches the feed too
                killed += 1
        if killed:
            log.info("killed %d sessions on request", killed)
        return killed

    def stats(self, zero: bool = False) -> dict:
        engine, handler = self.engine, self.handler
        by_verdict = {"accept": dict(handler.verdicts.accepted), "drop": dict(handler.verdicts.dropped)}
        accepted, dropped = sum(by_verdict["accept"].values()), sum(by_verdict["drop"].values())
        counters = engine.counters
        result = {
            "version": 1,
            **self.pid_info(),
            "mode": self.config.mode,
            "policy": {"path": self.policy_path, "summary": engine.policy.summary(),
                       "reloads": self.counters["reloads"],
                       "reload_failures": self.counters["reload_failures"]},
            "packets": {"total": accepted + dropped, "accept": accepted, "drop": dropped,
                        "by_verdict": by_verdict},
            "drops": dict(by_verdict["drop"]),
            "sessions": {"active": len(engine.sessions), "inserts": counters["inserts"],
                         "expiries": counters["expiries"], "killed": counters["killed"],
                         "limit": engine.max_sessions, "expectations": len(engine.expectations)},
            "queues": self.queue_stats(zero),
            "errors": {"engine": handler.errors["engine"], "effects": handler.errors["effects"],
                       "verdict": handler.errors["verdict"], "loop": self.counters["loop_errors"],
                       "expire": self.counters["expire_errors"]},
            "effects": {**{key: 0 for key in EFFECT_COUNTERS}, **self.effects.counters},
            "engine": dict(counters),
            "limits": engine.rule_limits.usage(),
        }
        for name, section in self.stats_sections.items():
            result[name] = section()
        if zero:
            handler.verdicts.clear()
            for counter in (counters, handler.errors, self.effects.counters):
                counter.clear()
            for key in ("loop_errors", "expire_errors", "reloads", "reload_failures"):
                self.counters[key] = 0
        return result

    def reload(self, path: str | None = None, dry_run: bool = False) -> dict:
        """Load the policy (from `path`, else where it came from); swap it in, or keep the old one.
        With `options.reload_recheck` the sessions it refuses are closed; `dry_run` only names them."""
        path = path or self.policy_path
        policy, failure = self._load_for_reload(path)
        if policy is None:
            return failure
        if dry_run:
            return self._recheck_plan(policy, path)
        self.engine.swap_policy(policy)
        closed = self._recheck() if policy.options.get("reload_recheck") else None
        gc.freeze()  # a large policy's objects out of the collector's way (gc pauses slowed packets)
        self.policy_path = path
        self.counters["reloads"] += 1
        warnings = [w.format() for w in getattr(policy, "warnings", ())]
        log.info("policy %s loaded (%s)", path, policy.summary())
        self._event("engine", {"message": f"policy {path} loaded ({policy.summary()})", "module": "reload"})
        self._after_reload(policy, path, None)
        return {"ok": True, "policy": path, "summary": policy.summary(), "warnings": warnings, "closed": closed}

    def _recheck(self) -> int:
        """Close the sessions the new policy refuses (reset where rst_on_timeout says); how many."""
        before = self.engine.counters["recheck_closed"]
        effects = self.engine.recheck(time.monotonic())
        if effects:
            self.effects(effects)
        closed = self.engine.counters["recheck_closed"] - before
        log.info("reload re-check closed %d sessions", closed)
        return closed

    def _recheck_plan(self, policy, path: str) -> dict:
        """`fw reload --dry-run`: the sessions a re-check against `policy` would close; nothing changes."""
        from fw.events import flow_id  # noqa: PLC0415
        from fw.policy.recheck import refused_by  # noqa: PLC0415

        now = time.monotonic()
        refused = refused_by(policy, list(self.engine.sessions))
        return {"ok": True, "dry_run": True, "policy": path, "summary": policy.summary(),
                "warnings": [w.format() for w in policy.warnings],
                "recheck": bool(policy.options.get("reload_recheck")),
                "would_close": [session_view(s, now, flow_id) for s in refused]}

    def queue_stats(self, zero: bool = False) -> dict:
        counters = read_queue_counters()
        result = {}
        for queue in self.queues:
            now = Counter(counters.get(queue.number, {}))
            now["enobufs"] = queue.enobufs
            now["verdict_batches"] = queue.batches
            base = self._baseline.setdefault(queue.number, Counter())
            row = {key: now[key] - base[key] for key in ("queue_dropped", "user_dropped", "enobufs")}
            row["overflows"] = sum(row.values())
            row["verdict_batches"] = now["verdict_batches"] - base["verdict_batches"]
            row["waiting"] = now["queue_total"]
            row["netlink_errors"] = dict(queue.netlink_errors)
            result[str(queue.number)] = row
            if zero:
                self._baseline[queue.number] = now
        return result

