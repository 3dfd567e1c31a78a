"""Multi-queue: `fw run --queues A-B` runs one worker process per queue under a supervisor.

How it works. Python runs one packet loop per core at best, so the queues are spread over
processes. The supervisor (this process, a fw.daemon.DaemonBase like the single-queue Daemon)
takes the namespace's control name (the lock), starts a worker per queue (`python -m fw.workers
SPEC`: a fw.daemon.Daemon bound to its one queue, built by fw.runner as a single-queue daemon is:
its own Engine, store records and snapshot file `sessions-<netns>-q<queue>.jsonl`, offload; its own
control socket `@fw/<netns inode>/worker/<queue>`, and no iptables rules),
waits until each answers, then installs the one NFQUEUE rule `--queue-balance A:B`. The kernel hashes
a packet's address pair and protocol, the same in both directions, so a session, its replies and
its FTP data sessions (same addresses, TCP) meet the same worker; ports are not hashed, so one
client spreads over the workers only with many client addresses. `--queue-cpu-fanout` (queue by
the CPU that received the packet) is not used: the two directions of a flow arrive on different
NICs and so CPUs, and a reply would meet a worker without its session.

An ICMP error (fragmentation needed from a router, port unreachable) hashes by its own addresses
and protocol, so it may reach a worker that does not hold the session it quotes. That worker hands
it on (IcmpForwarder): its verdict is NF_QUEUE to the next queue, and the packet's mark records the
queue it came to first (FORWARD_MARK | queue); the kernel queues it again at the same hook, and the
worker that holds the session accepts it (`related:icmp`). When it comes round to its first queue,
nobody holds the session: it is dropped as `invalid:no-session`. A forwarded packet keeps that mark.

With `--metrics` the supervisor serves the workers' `fw stats` summed
(fw.metrics.Metrics.from_stats). The supervisor answers `fw stats` (every worker's counters summed,
per-queue rows side by side, a `workers` list), `fw sessions` (the workers' tables one after
another, each session with its `queue`), `fw lb` (each worker's virtual servers with its `queue`;
drain and enable go to all), `fw sessions kill` and `fw reload` (checked here first, then sent to
every worker; SIGHUP is passed on to the workers, which also reopen their logs). A worker that dies
is started again (its sessions are lost; after 1 s, doubling up to 30 s while it keeps dying);
workers die with the supervisor (PR_SET_PDEATHSIG). Stopping removes the rules first, then stops the
workers, which give their queued packets a verdict.

With `--sync` each worker runs its own sync service (`_attach_sync`): it announces the sessions it
opens (owned by the node's id, sent as a sender of its own: fw.sync.codec's `w`) and applies every
peer's session, since which worker a peer's flow reaches here is the kernel's hash, seeded at
random at boot. A restarted worker loads the cluster's snapshot, its own lost sessions included.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from fw.daemon import DaemonBase, DaemonConfig, DaemonError
from fw.decision import ACCEPT
from fw.drivers import iptables
from fw.drivers.control import VIEW_SORT_KEYS, ControlError, ControlServer, call, error_answer
from fw.drivers.nfqueue import NF_QUEUE, verdict_message

log = logging.getLogger("fw.workers")

FORWARD_MARK, FORWARD_MASK = 0x66770000, 0xFFFF0000  # mark of a forwarded ICMP error: | first queue
READY_SECONDS = 15.0
RESTART_DELAYS = (1.0, 30.0)  # first delay, longest
STOP_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


def worker_address(queue: int, inode: int | None = None) -> bytes:
    """The control address of the worker on `queue` in this network namespace."""
    return b"\0fw/%d/worker/%d" % (inode if inode is not None else iptables.netns_inode(), queue)


# -- ICMP errors for another worker ---------------------------------------------------------------


def next_queue(number: int, first: int, last: int) -> int:
    return first + (number - first + 1) % (last - first + 1)


class IcmpForwarder:
    """PacketHandler.redirect of a worker: an ICMP error without a session here goes to the next queue.

    `send(bytes)` writes to the queue's netlink socket. Returns True when it gave the verdict."""

    def __init__(self, number: int, first: int, last: int, send):
        self.number, self.first, self.last = number, first, last
        self.send = send
        self.counters: Counter = Counter()  # forwarded, unclaimed, errors: `fw stats` section "forwarding"

    def target(self, mark: int) -> tuple[int, int] | None:
        """(next queue, first queue) for a packet with `mark`, or None: it has been round them all."""
        origin = mark & 0xFFFF if mark & FORWARD_MASK == FORWARD_MARK else self.number
        if not self.first <= origin <= self.last:
            origin = self.number
        target = next_queue(self.number, self.first, self.last)
        return None if target == origin else (target, origin)

    def __call__(self, packet, decision) -> bool:
        pkt = decision.packet
        if decision.reason != "invalid:no-session" or pkt is None or getattr(pkt, "inner", None) is None:
            return False
        try:
            hop = self.target(packet.get_mark())
            if hop is None:
                self.counters["unclaimed"] += 1  # round every queue: this worker's drop is final
                return False
            target, origin = hop
            self.send(verdict_message(self.number, packet.id, NF_QUEUE | target << 16, FORWARD_MARK | origin))
        except Exception:  # noqa: BLE001  (the packet then gets the plain drop)
            self.counters["errors"] += 1
            return False
        self.counters["forwarded"] += 1  # no verdict counted here: the worker that decides counts it
        return True


# -- a worker -------------------------------------------------------------------------------------


def worker_spec(config: DaemonConfig, queue: int, policy_path: str, store_url: str | None = None) -> dict:
    return {"policy": policy_path, "queue": queue, "first": config.queues[0], "last": config.queues[1],
            "fail_open": config.fail_open, "log": config.log_path, "offload": config.offload,
            "queue_options": dict(config.queue_options.__dict__), "db": store_url, "sync": config.sync,
            "nat_slice": list(config.nat_slice)}


def worker_main(spec: dict) -> int:
    """One worker: a Daemon on one queue, without iptables rules, its control socket of its own;
    the same engine, records and services as a single-queue daemon (fw.runner)."""
    from fw import runner  # noqa: PLC0415
    from fw.daemon import Daemon  # noqa: PLC0415
    from fw.drivers.nfqueue import QueueOptions  # noqa: PLC0415
    from fw.policy import PolicyError  # noqa: PLC0415
    from fw.store import Store, StoreError, policy_loader  # noqa: PLC0415

    _die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s fw[%(process)d] queue {spec['queue']} %(levelname)s: %(message)s")
    number = spec["queue"]
    store = Store(spec.get("db"))
    loader = policy_loader(store)  # the store's label loads its active revision (fw run --db)
    try:
        policy = loader(spec["policy"])
    except PolicyError as exc:
        log.error("invalid policy %s: %s", spec["policy"], "; ".join(d.format() for d in exc.diagnostics))
        return 2
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    engine, records = runner.build(policy, store, spec["offload"], queue=number,
                                   nat_slice=tuple(spec.get("nat_slice", (0, 1))))
    config = DaemonConfig(policy_path=spec["policy"], queues=(number, number), fail_open=spec["fail_open"],
                          log_path=spec["log"], queue_options=QueueOptions(**spec["queue_options"]),
                          control_address=worker_address(number), install_rules=False, offload=spec["offload"])
    daemon = Daemon(config, engine, loader)
    try:
        daemon.start()
    except DaemonError as exc:
        log.error("%s", exc)
        return exc.exit_code
    try:
        queue = daemon.queues[0]
        send = queue._sock.send  # noqa: SLF001  (the queue's own netlink socket: verdicts go there)
        forwarder = IcmpForwarder(number, spec["first"], spec["last"], send)
        daemon.handler.redirect = forwarder
        daemon.stats_sections["forwarding"] = lambda: dict(forwarder.counters)
        runner.attach(daemon, records)
        if spec.get("sync"):
            try:
                _attach_sync(daemon, spec["sync"], number, forwarder)
            except (OSError, ValueError) as exc:  # the key file went away since fw run read it
                log.error("--sync: %s", exc)
                return 2
        daemon.run()
    finally:
        daemon.close()
    return 0


def _attach_sync(daemon, sync: dict, number: int, forwarder: IcmpForwarder) -> None:
    """--sync in a worker: a sync service of its own (a sender of its own in the cluster, owner of
    its sessions under the node's id), which applies every peer's session, since the kernel's
    balancing hash (seeded at random at boot) does not tell which worker a peer's flow will reach
    here. An ICMP error is handed round the queues before sync may hold it: the worker holding its
    session is first looked for, and only the last worker of the round holds it for a peer's news."""
    from fw.sync import SyncConfig, attach_sync  # noqa: PLC0415

    service = attach_sync(daemon, SyncConfig.in_worker(sync, number))
    daemon.handler.redirect = None
    daemon.handler.defer = round_then_hold(forwarder, service.on_decision)
    log.info("%s", service.describe())


def round_then_hold(forwarder, hold):
    """PacketHandler.defer for a worker with sync: a dropped packet the forwarder hands to the next
    queue (an ICMP error whose session is not here) goes; anything else is sync's to hold or not."""

    def defer(packet, data: bytes, decision) -> bool:
        if decision.verdict != ACCEPT and forwarder(packet, decision):
            return True
        return hold(packet, data, decision)

    return defer


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the supervisor is already gone
        sys.exit(1)


# -- the supervisor -------------------------------------------------------------------------------


class Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, queue: int):
        self.queue = queue
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.delay = RESTART_DELAYS[0]
        self.restart_at: float | None = None
        self.started = 0.0

    @property
    def address(self) -> bytes:
        return worker_address(self.queue)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None


class Supervisor(DaemonBase):
    """`fw run --queues A-B`: start(), run() until a signal, close(). `store_url`: the store the
    workers record to (events, rule counters; each keeps its own snapshot file)."""

    def __init__(self, config: DaemonConfig, load_policy, store_url: str | None = None):
        super().__init__(config, load_policy)
        self.store_url = store_url
        self.workers = [Worker(n) for n in range(config.queues[0], config.queues[1] + 1)]
        self.summary = ""
        self.commands.update({"lb": self.lb_status, "lb-drain": self.lb_change, "lb-enable": self.lb_change})

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._install_signals()
            self.control = ControlServer(self.handle)
            self.summary = self.load_policy(self.policy_path).summary()
            for worker in self.workers:
                self._spawn(worker)
            for worker in self.workers:
                self._wait_ready(worker)
            self._install_rules()
            self.control.listen(self.loop)
        except (ControlError, iptables.IptablesError, OSError) as exc:
            self.close()
            raise DaemonError(str(exc)) from None
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        config = self.config
        pids = ", ".join(f"queue {w.queue}: pid {w.pid}" for w in self.workers)
        return (f"fw running ({self.mode_text}); queues {config.queues[0]}-{config.queues[1]} balanced over "
                f"{len(self.workers)} workers ({pids}), hooks {','.join(config.hooks)}"
                f"{', offload' if config.offload else ''}, iptables-{self.rules.backend}; policy "
                f"{self.policy_path} ({self.summary}); control {self.control.name}")

    def _spawn(self, worker: Worker) -> None:
        spec = worker_spec(self.config, worker.queue, self.policy_path, self.store_url)
        worker.process = subprocess.Popen([sys.executable, "-m", "fw.workers", json.dumps(spec)],
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        worker.started = time.monotonic()
        worker.restart_at = None

    def _wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if worker.process.poll() is not None:
                raise DaemonError(f"the worker for queue {worker.queue} exited with status "
                                  f"{worker.process.returncode}", 2 if worker.process.returncode == 2 else 1)
            try:
                call({"command": "stats"}, timeout=2.0, address=worker.address)
                return
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise DaemonError(f"the worker for queue {worker.queue} did not answer within {READY_SECONDS:g} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Remove the rules (traffic falls back to the host's ruleset), then stop the workers."""
        self._remove_rules()
        running = [w.process for w in self.workers if w.process is not None and w.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for service in reversed(self.services):
            service.close()
        self.services = []
        if self.control is not None:
            self.control.close()
            self.control = None
        self._close_signals()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop:
            try:
                self.loop.run_once(0.5)
                if self._reload:
                    self._reload = False
                    for worker in self.workers:
                        if worker.pid is not None:
                            os.kill(worker.pid, signal.SIGHUP)
                now = time.monotonic()
                self.supervise(now)
                self.control.tick(now)
                for service in self.services:  # the metrics endpoint (--metrics)
                    service.tick(now)
            except Exception as exc:  # noqa: BLE001  (the supervisor survives everything)
                self.counters["loop_errors"] += 1
                log.exception("the supervisor's loop failed, and goes on: %r", exc)

    def supervise(self, now: float) -> None:
        """Start again the workers that died (after a delay that grows while they keep dying)."""
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                log.error("the worker for queue %d (pid %d) exited with status %s; its sessions are lost; "
                          "starting it again in %g s", worker.queue, process.pid, process.returncode, worker.delay)
                worker.process = None
                worker.restart_at = now + worker.delay
                lived = now - worker.started
                worker.delay = RESTART_DELAYS[0] if lived > 60 else min(worker.delay * 2, RESTART_DELAYS[1])
            if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)
                worker.restarts += 1
                self.counters["worker_restarts"] += 1

    # -- the control socket -----------------------------------------------------------------------

    def kill(self, selected, spec) -> int:
        answers = self.ask_all({"command": "kill", "filter": spec})
        return sum(a.get("killed", 0) for a in answers.values())

    def events(self, request: dict):
        return error_answer("fw events does not work with fw run --queues yet: each worker keeps its own "
                            "sessions; use `fw run --log` for the events of every worker", 1)

    def ask_all(self, request: dict) -> dict[int, dict]:
        """Each running worker's answer to `request`, by queue (a worker that fails is left out)."""
        answers = {}
        for worker in self.workers:
            if worker.pid is None:
                continue
            try:
                answers[worker.queue] = call(request, timeout=10.0, address=worker.address)
            except ControlError as exc:
                if exc.answer:
                    answers[worker.queue] = exc.answer
                else:
                    log.warning("worker %d did not answer %s: %s", worker.queue, request.get("command"), exc)
        return answers

    def lb_status(self, request: dict) -> dict:
        """`fw lb`: every worker's virtual servers (each balances on its own), with its queue."""
        rows = []
        for queue, answer in sorted(self.ask_all({"command": "lb"}).items()):
            if not answer.get("ok"):
                return answer
            rows.extend({**row, "queue": queue} for row in answer.get("virtual_servers", ()))
        return {"ok": True, "virtual_servers": rows}

    def lb_change(self, request: dict) -> dict:
        """`fw lb drain|enable`: sent to every worker; the first refusal is the answer."""
        answers = self.ask_all(request)
        for _queue, answer in sorted(answers.items()):
            if not answer.get("ok"):
                return answer
        return {"ok": True, "workers": sorted(answers), **{k: request.get(k) for k in ("name", "server")}}

    def stats(self, zero: bool = False) -> dict:
        answers = self.ask_all({"command": "stats", "zero": zero})
        return merge_stats([a["stats"] for a in answers.values() if a.get("ok")], self.summary_fields(answers))

    def summary_fields(self, answers: dict[int, dict]) -> dict:
        rows = []
        for worker in self.workers:
            stats = answers.get(worker.queue, {}).get("stats", {})
            rows.append({"queue": worker.queue, "pid": worker.pid, "restarts": worker.restarts,
                         "packets": stats.get("packets", {}).get("total"),
                         "sessions": stats.get("sessions", {}).get("active")})
        return {"pid": os.getpid(), "uptime": round(time.monotonic() - self.started, 3), "mode": self.config.mode,
                "policy": {"path": self.policy_path, "summary": self.summary,
                           "reloads": self.counters["reloads"], "reload_failures": self.counters["reload_failures"]},
                "workers": rows}

    def sessions(self, request: dict | None = None) -> dict:
        """Every worker's sessions (each filtered, sorted and limited as asked), merged, sorted, limited."""
        asked = {key: value for key, value in (request or {}).items() if key in ("filter", "sort", "limit")}
        answers = self.ask_all({"command": "sessions", **asked})
        for answer in answers.values():
            if not answer.get("ok"):
                return answer
        sessions = []
        for queue, answer in sorted(answers.items()):
            for session in answer.get("sessions", ()):
                session["queue"] = queue
                sessions.append(session)
        if asked.get("sort"):
            sessions.sort(key=VIEW_SORT_KEYS[asked["sort"]])
        if asked.get("limit") is not None:
            sessions = sessions[:asked["limit"]]
        return {"ok": True, "version": 1, "count": len(sessions), "sessions": sessions}

    def reload(self, path: str | None = None, dry_run: bool = False) -> dict:
        """Check the policy here (errors as `fw policy check` shows them), then reload every worker
        (`dry_run`: ask each what a re-check would close, and put their answers together)."""
        path = path or self.policy_path
        policy, failure = self._load_for_reload(path)
        if policy is None:
            return failure
        answers = self.ask_all({"command": "reload", "path": path, "dry_run": dry_run})
        if dry_run:
            return {"ok": True, "dry_run": True, "policy": path, "summary": policy.summary(),
                    "warnings": [w.format() for w in policy.warnings],
                    "recheck": bool(policy.options.get("reload_recheck")),
                    "would_close": [s for _q, a in sorted(answers.items()) for s in a.get("would_close", ())]}
        failed = [q for w in self.workers if not answers.get(q := w.queue, {}).get("ok")]
        if failed:
            self.counters["reload_failures"] += 1
            return error_answer(f"{path}: the workers of queues {failed} did not reload", 1)
        self.policy_path, self.summary = path, policy.summary()
        self.counters["reloads"] += 1
        log.info("policy %s loaded by %d workers (%s)", path, len(answers), self.summary)
        warnings = [w.format() for w in getattr(policy, "warnings", ())]
        closed = [a["closed"] for a in answers.values() if a.get("closed") is not None]
        return {"ok": True, "policy": path, "summary": self.summary, "warnings": warnings,
                "workers": sorted(answers), "closed": sum(closed) if closed else None}


def merge_stats(rows: list[dict], fields: dict) -> dict:
    """The workers' `fw stats` as one: counters summed, per-queue rows side by side."""
    merged: dict = {"version": 1}
    for row in rows:
        for key, value in row.items():
            if key in ("version", "pid", "uptime", "mode", "policy"):
                continue
            if key == "queues":
                merged.setdefault("queues", {}).update(value)
            elif key == "virtual_servers":
                merged[key] = merge_lb(merged.get(key), value)
            else:
                merged[key] = _add(merged.get(key), value)
    merged.setdefault("queues", {})
    if "sync" in merged:
        merged["sync"] = _merge_sync(merged["sync"], [row["sync"] for row in rows if "sync" in row])
    merged.update(fields)
    return merged


def merge_lb(into: list | None, rows: list) -> list:
    """Workers' `lb` rows as one: per real server, counts summed; health as the first worker sees it."""
    if into is None:
        return [{**row, "real_servers": [dict(s) for s in row["real_servers"]]} for row in rows]
    servers = {(row["name"], s["server"]): s for row in into for s in row["real_servers"]}
    for row in rows:
        for server in row["real_servers"]:
            kept = servers.get((row["name"], server["server"]))
            if kept is not None:
                for key in ("active", "opened", "bytes"):
                    kept[key] = kept.get(key, 0) + server.get(key, 0)
    return into


def _merge_sync(summed: dict, sections: list[dict]) -> dict:
    """The workers' sync sections: counters summed; loaded when every worker loaded the snapshot,
    a peer as lately heard as any worker heard it (its session count: that worker's view)."""
    summed["loaded"] = all(section.get("loaded") for section in sections)
    summed["mode"] = sections[0].get("mode") if sections else summed.get("mode")  # the same in every worker
    peers: dict = {}
    for section in sections:
        for name, peer in section.get("peers", {}).items():
            if name not in peers or peer["last_heard"] < peers[name]["last_heard"]:
                peers[name] = peer
    summed["peers"] = peers
    for name in ("hold", "defer"):  # medians and worsts are not sums: the worst worker's
        waits = [section[name]["wait"] for section in sections if name in section]
        if waits:
            worst = max(waits, key=lambda wait: wait.get("worst_ms") or 0)
            summed[name]["wait"] = {**worst, "count": sum(wait.get("count", 0) for wait in waits)}
    return summed


def _add(into, value):
    """Sum numbers, recursively through dicts; other values: the first one seen stays."""
    if isinstance(value, dict):
        into = dict(into) if isinstance(into, dict) else {}
        for key, item in value.items():
            into[key] = _add(into.get(key), item)
        return into
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (into or 0) + value
    return value if into is None else into


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
