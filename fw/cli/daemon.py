"""`fw run`, `fw stats`, `fw reload`, `fw cleanup`: the daemon and its operator commands.

`fw run` builds the engine and hands it to fw.daemon.Daemon; the other commands are clients of the
control socket of the daemon in their network namespace (fw.drivers.control), except `fw cleanup`,
which removes the iptables rules a crashed daemon left (fw.drivers.iptables).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from fw.cli.common import Failure
from fw.cli.common import ask as _ask
from fw.cli.sessions import sessions_group

HOOK_NAMES = ("forward", "input", "output")


def _queues(queue: int | None, queues: str | None) -> tuple[int, int]:
    if queue is not None and queues is not None:
        raise click.UsageError("give --queue or --queues, not both")
    if queues is None:
        return (queue or 0, queue or 0)
    first, sep, last = queues.partition("-")
    if not (first.isdigit() and last.isdigit() and sep) or not int(first) <= int(last) <= 65535:
        raise click.BadParameter(f"{queues!r} is not a range A-B of queue numbers", param_hint="--queues")
    return (int(first), int(last))


def _hooks(text: str) -> tuple[str, ...]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in HOOK_NAMES]
    if bad or not names:
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(HOOK_NAMES)}",
                                 param_hint="--hooks")
    return tuple(name.upper() for name in HOOK_NAMES if name in names)


@click.command("run")
@click.option("--policy", "policy_path", type=click.Path(),
              help="Policy file or folder (default: the active revision in the store).")
@click.option("--db", metavar="URL", help="The store (default: $FW_DB, else this namespace's SQLite file).")
@click.option("--queue", type=click.IntRange(0, 65535), help="NFQUEUE number (default 0).")
@click.option("--queues", metavar="A-B", help="Balance flows over queues A to B, one worker process each.")
@click.option("--fail-open", is_flag=True, help="Pass traffic when no daemon listens or the queue is full.")
@click.option("--log", "log_path", metavar="PATH", help="Events as EVE JSON lines to PATH (- for stdout).")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT", help="Serve Prometheus metrics there.")
@click.option("--hooks", default="forward", show_default=True,
              help="Built-in chains to hook: forward,input,output.")
@click.option("--iptables", "backend", type=click.Choice(["auto", "nft", "legacy"]), default="auto",
              show_default=True, help="iptables backend (auto: the one `iptables` uses).")
@click.option("--offload", is_flag=True, help="Established TCP flows pass in the kernel (SYN/FIN/RST still judged).")
@click.option("--sync", "sync_url", metavar="URL", help="HA session sync through Redis (redis://HOST:PORT/DB, rediss://).")
@click.option("--node-id", metavar="NAME", help="This firewall's name in the sync cluster (with --sync).")
@click.option("--cluster", metavar="NAME", help="The sync cluster's name (default fw).")
@click.option("--sync-key-file", metavar="PATH", help="The cluster's shared HMAC key (with --sync).")
@click.option("--sync-hold-ms", type=click.IntRange(0, 10000), help="Hold a packet N ms for a peer's session (50).")
@click.option("--sync-defer", is_flag=True, help="A new session's first packet waits for Redis to take its news.")
@click.option("--nat-slices", type=click.IntRange(1, 64),
              help="With --sync: NAT port ranges cut in N slices, one per node by its id's number (2).")
@click.option("--forward-to-owner", is_flag=True,
              help="Send a packet of a session another node owns to that node (UDP on the sync link), not hold it.")
@click.option("--forward-listen", metavar="ADDR:PORT",
              help="Where forwarded packets arrive (default: our address toward Redis, UDP 6380).")
def run_command(policy_path, db, queue, queues, fail_open, log_path, metrics_listen, hooks, backend, offload,
                nat_slices, forward_to_owner, forward_listen, **sync) -> None:
    """Run the firewall daemon: packets from NFQUEUE through the engine, verdicts back to the kernel.

    It installs its own chains (FW-FORWARD, ...) with one jump from each hooked chain, for IPv4 and
    IPv6, and removes them on SIGTERM/SIGINT; SIGUSR2 (`fw stop --keep-rules`) stops it for a restart,
    its rules kept (fail-closed) for the next `fw run` to take over. A policy that translates (nat) is hooked before and
    after routing instead (mangle PREROUTING/POSTROUTING), without --fail-open or --queues.
    SIGHUP reloads the policy and reopens the log. Fail-closed unless --fail-open. One daemon per
    network namespace. Sessions are snapshotted on exit (and every minute) and restored on start;
    events go to the store.

    With --sync, HA session sync (docs/sync.md); with --forward-to-owner as well, a packet of a
    session another node owns is sent to it to decide (docs/forwarding.md).

    Example: fw run --policy policies/lab.yaml --log /var/log/fw/eve.json
    """
    from fw.daemon import DaemonConfig, DaemonError

    listen = _listen(metrics_listen) if metrics_listen else None
    queue_range, hook_names = _queues(queue, queues), _hooks(hooks)
    sync_config = _sync_config(**sync)
    if nat_slices is not None and sync_config is None:
        raise click.UsageError("--nat-slices goes with --sync URL")
    forward_config = _forward_config(sync_config, queue_range, forward_to_owner, forward_listen)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fw[%(process)d] %(levelname)s: %(message)s")
    store, policy, source, loader = _policy_source(policy_path, db)
    nat = _translation(policy, fail_open, queue_range)  # bad usage (exit 2) before the privilege check
    nat_slice = nat_slice_of(sync_config, nat_slices, nat)
    if nat:
        hook_names = NAT_HOOKS + tuple(hook for hook in hook_names if hook != "FORWARD")
        from fw.drivers.local_ports import overlaps

        for line in overlaps(policy.nat):  # translated ports vs the host's own (docs/nat.md)
            click.echo(f"warning: {line}", err=True)
    else:
        loader = _without_translation(loader)
    if os.geteuid() != 0:
        raise Failure("fw run must run as root (NFQUEUE, iptables and raw sockets need it)")
    config = DaemonConfig(policy_path=source, queues=queue_range,
                          fail_open=fail_open, log_path=log_path, hooks=hook_names,
                          backend=None if backend == "auto" else backend, offload=offload,
                          sync=sync_config.for_worker() if sync_config is not None else None,
                          nat_slice=nat_slice, nat=nat)
    daemon, records = _daemon(config, policy, store, loader, listen)
    try:
        daemon.start()
    except DaemonError as error:
        raise Failure(str(error), error.exit_code) from None
    try:
        _attach(daemon, records, listen)
    except OSError as error:
        daemon.close()
        raise Failure(f"--metrics {metrics_listen}: {error.strerror or error}") from None
    if sync_config is not None and records is None:  # each worker of --queues attached its own
        click.echo(f"{sync_config.describe()}, in each worker", err=True)
    elif sync_config is not None:
        from fw.sync import attach_sync

        try:
            service = attach_sync(daemon, sync_config)
            click.echo(service.describe(), err=True)
        except OSError as error:
            daemon.close()
            raise Failure(f"--sync: {error}") from None
        if forward_config is not None:
            from fw.sync.forwarding.service import attach_forwarding

            try:
                click.echo(attach_forwarding(daemon, service, forward_config).describe(), err=True)
            except OSError as error:
                daemon.close()
                raise Failure(f"--forward-listen: cannot listen there: {error.strerror or error}") from None
    click.echo(daemon.describe(), err=True)
    try:
        daemon.run()
    finally:
        daemon.close()
        click.echo(STOPPED_KEEPING if daemon.keep_rules else "fw stopped; its rules are removed", err=True)


STOPPED_KEEPING = ("fw stopped for a restart; its rules stay: traffic through the queue is dropped until "
                   "`fw run` takes them over or `fw cleanup` removes them")


def _daemon(config, policy, store, loader, listen):
    """The daemon of `fw run`: one queue (the engine and its records built here), or a supervisor
    of one worker per queue, each built the same way (fw.runner) in its own process."""
    if config.queues[0] != config.queues[1]:
        from fw.workers import Supervisor

        return Supervisor(config, loader, store.url), None
    from fw import runner
    from fw.daemon import Daemon

    engine, records = runner.build(policy, store, config.offload, metrics_listen=listen, nat_slice=config.nat_slice)
    return Daemon(config, engine, loader), records


def _attach(daemon, records, listen) -> None:
    """What a started daemon gets: offload and records (one queue: fw.runner; workers attach their
    own), metrics (a supervisor serves its workers' summed numbers). OSError: --metrics' address."""
    if records is not None:
        from fw import runner
        from fw.feed import attach_feed

        runner.attach(daemon, records)
        attach_feed(daemon)
    elif listen is not None:
        from fw.metrics import Metrics

        metrics = Metrics.from_stats(daemon.stats)
        metrics.serve(*listen)
        daemon.services.append(metrics)


def _sync_config(sync_url, node_id, cluster, sync_key_file, sync_hold_ms, sync_defer):
    """The checked --sync options (fw.sync.SyncConfig), or None without --sync; bad ones exit 2."""
    from fw.sync import SyncConfig, read_key_file

    if sync_url is None:
        if node_id or cluster or sync_key_file or sync_hold_ms is not None or sync_defer:
            raise click.UsageError("--node-id, --cluster and --sync-* go with --sync URL")
        return None
    if not node_id or not sync_key_file:
        raise click.UsageError("--sync needs --node-id NAME and --sync-key-file PATH (messages are authenticated)")
    try:
        config = SyncConfig(sync_url, node_id, read_key_file(sync_key_file), cluster or "fw",
                            50 if sync_hold_ms is None else sync_hold_ms, sync_defer,
                            key_file=os.path.abspath(sync_key_file))
        config.check()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    return config


def _forward_config(sync_config, queue_range, forward_to_owner: bool, forward_listen: str | None):
    """The checked --forward-to-owner options (fw.sync.forwarding.node.ForwardConfig), or None."""
    if not forward_to_owner:
        if forward_listen is not None:
            raise click.UsageError("--forward-listen goes with --forward-to-owner")
        return None
    if sync_config is None:
        raise click.UsageError("--forward-to-owner goes with --sync URL (owners are known from the sync)")
    if queue_range[0] != queue_range[1]:
        raise click.UsageError("--forward-to-owner does not work with --queues yet (one queue only)")
    from fw.sync.forwarding.endpoint import parse_address
    from fw.sync.forwarding.node import ForwardConfig, default_listen

    try:
        address = parse_address(forward_listen) if forward_listen is not None else default_listen(sync_config.url)
        config = ForwardConfig(listen=address)
        config.check()
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--forward-listen") from None
    except OSError as error:  # no route toward Redis to take our address from
        raise click.UsageError(f"--forward-to-owner: no address toward Redis ({error.strerror or error}); "
                               "give --forward-listen ADDR:PORT") from None
    return config


def nat_slice_of(sync_config, nat_slices: int | None, translates: bool) -> tuple[int, int]:
    """(node, nodes): this node's slice of every NAT port range. With --sync, node i of N from
    the node id's trailing number (fw.sync.slices: fw1 -> 0 of 2), so that nodes translating to one
    address never hand out the same port; (0, 1), the whole range, without. A node id that gives no
    slice is a usage error when the policy translates or --nat-slices was given."""
    from fw.sync.slices import slice_index

    if sync_config is None:
        return (0, 1)
    count = nat_slices or 2
    try:
        return (slice_index(sync_config.node, count), count)
    except ValueError as error:
        if translates or nat_slices is not None:
            raise click.UsageError(f"--node-id: {error}") from None
        return (0, 1)


def _listen(text: str) -> tuple[str, int]:
    from fw.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--metrics") from None


# the two passes (fw/engine_nat_passes.py), replacing FORWARD, and the firewall's own ICMP errors
NAT_HOOKS = ("PREROUTING", "POSTROUTING", "ERRORS")
NAT_NOT_HOOKED = ("the policy translates addresses (nat), and this daemon was started without NAT's hooks "
                  "(its policy did not translate): restart fw run with it")


def _translation(policy, fail_open: bool, queue_range: tuple[int, int]) -> bool:
    """Whether the daemon translates (its policy has `nat`). SPEC: --fail-open with such a policy
    is refused (untranslated traffic would leak); --queues too, for now (a translated reply hashes
    to another worker than its session's)."""
    if not getattr(policy, "translates", False):
        return False
    keys = " and ".join(key for key in ("nat", "virtual_servers") if getattr(policy, key, None))
    if fail_open:
        raise Failure(f"--fail-open is refused with a policy that translates addresses ({keys}): "
                      "untranslated traffic would leak while no daemon listens", 2)
    if queue_range[0] != queue_range[1]:
        raise Failure(f"--queues is refused with a policy that translates addresses ({keys}): "
                      "use one queue (--queue N)", 2)
    return True


def _without_translation(loader):
    """The policy loader (reload) of a daemon started without NAT's hooks: it refuses a policy that
    translates (NAT_NOT_HOOKED)."""
    from fw.policy import ERROR, Diagnostic, PolicyError

    def load(*args, **kwargs):
        policy = loader(*args, **kwargs)
        if getattr(policy, "translates", False):
            raise PolicyError([Diagnostic(ERROR, str(args[0]) if args else "policy", NAT_NOT_HOOKED)])
        return policy

    return load


def _policy_source(policy_path: str | None, db: str | None):
    """(store, policy, where it came from, how to load it again) for `fw run`."""
    from fw.cli.common import load_policy_or_exit
    from fw.policy import PolicyError, load_policy
    from fw.store import Store, StoreError, active_policy, policy_loader

    store = Store(db)
    if policy_path is not None:
        return store, load_policy_or_exit(policy_path), os.path.abspath(policy_path), load_policy
    try:
        store.open()
        policy = active_policy(store)
    except StoreError as error:
        raise Failure(str(error)) from None
    except PolicyError as error:
        for diagnostic in error.diagnostics:
            click.echo(diagnostic.format(), err=True)
        raise Failure(f"the active revision in {store.label} does not load", 2) from None
    return store, policy, store.label, policy_loader(store)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="The counters as one JSON object.")
@click.option("--zero", is_flag=True, help="Zero the counters after reading them.")
def stats_command(as_json: bool, zero: bool) -> None:
    """Show the daemon's counters: packets by verdict and reason, sessions, queue overflows.

    Example: fw stats --json
    """
    stats = _ask({"command": "stats", "zero": zero})["stats"]
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    packets, sessions = stats["packets"], stats["sessions"]
    lines = [
        f"fw pid {stats['pid']}, up {stats['uptime']:.0f} s, {stats['mode']}, "
        f"policy {stats['policy']['path']} ({stats['policy']['summary']})",
        f"packets: {packets['total']} (accepted {packets['accept']}, dropped {packets['drop']})",
    ]
    for verdict in ("accept", "drop"):
        reasons = sorted(packets["by_verdict"][verdict].items(), key=lambda item: -item[1])
        lines.append(f"  {verdict}: " + (", ".join(f"{r} {n}" for r, n in reasons) or "none"))
    lines.append(f"sessions: {sessions['active']} active, {sessions['inserts']} inserted, "
                 f"{sessions['expiries']} expired, {sessions['killed']} killed")
    for number, queue in stats["queues"].items():
        lines.append(f"queue {number}: {queue['overflows']} overflows (queue full {queue['queue_dropped']}, "
                     f"socket full {queue['user_dropped']}, ENOBUFS {queue['enobufs']}), "
                     f"{queue['waiting']} waiting")
    errors = {k: v for k, v in stats["errors"].items() if v}
    lines.append("errors: " + (", ".join(f"{k} {v}" for k, v in errors.items()) or "none"))
    if "nat" in stats:
        nat = stats["nat"]
        trips = (f"queue trips {nat['first_pass']} before routing, {nat['second_pass']} after (second pass), "
                 f"{nat['one_pass']} after routing only; ") if "one_pass" in nat else ""
        lines.append(f"nat: {trips}{nat['partial_checksums']} partial checksums computed, {nat['tcp_gso_partial']} "
                     f"TCP GSO packets left to the kernel, {nat['route_lookups']} route lookups")
    if "sync" in stats:
        from fw.sync import stats_line

        lines.append(stats_line(stats["sync"]))
    if "forward" in stats:
        from fw.sync.forwarding.report import stats_line as forward_line

        lines.append(forward_line(stats["forward"]))
    if stats.get("virtual_servers"):
        from fw.topdata import virtual_server_text

        lines.append("virtual servers: " + virtual_server_text(stats["virtual_servers"]))
    click.echo("\n".join(lines))


@click.command("reload")
@click.argument("path", required=False, type=click.Path())
@click.option("--dry-run", is_flag=True,
              help="Check the policy and list the sessions a re-check would close; change nothing.")
def reload_command(path: str | None, dry_run: bool) -> None:
    """Re-read the policy (from where `fw run` got it, or PATH) and swap it in, keeping every session
    (with `options.reload_recheck: true`, closing those the new rules refuse).

    On any error the running policy stays, and the errors are printed (exit status 2).

    Example: fw reload --dry-run policies/lab.yaml
    """
    from fw.drivers.control import ControlError, call

    request = {"command": "reload", "path": os.path.abspath(path) if path else None, "dry_run": dry_run}
    try:
        answer = call(request)
    except ControlError as error:
        for line in error.answer.get("diagnostics", ()):
            click.echo(line, err=True)
        raise Failure(str(error), error.exit_code) from None
    for warning in answer.get("warnings", ()):
        click.echo(warning, err=True)
    if dry_run:
        _dry_run_report(answer)
        return
    closed = answer.get("closed")
    after = f"; the re-check closed {closed} sessions" if closed is not None else ""
    click.echo(f"policy {answer['policy']} loaded ({answer['summary']}){after}")


def _dry_run_report(answer: dict) -> None:
    from fw.cli.sessions import session_line  # noqa: PLC0415  (conntrack's line: every field shown)

    sessions = answer["would_close"]
    click.echo(f"policy {answer['policy']} is valid ({answer['summary']}); nothing was changed")
    for session in sessions:
        click.echo(session_line(session))
    mode = "on: a reload closes them" if answer["recheck"] else "off: a reload keeps them"
    click.echo(f"a re-check would close {len(sessions)} sessions (reload_recheck is {mode})")


@click.command("stop")
@click.option("--keep-rules", is_flag=True,
              help="Stop for a restart: keep the rules (fail-closed) and the kernel's NAT bindings "
                   "for the next fw run.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
              help="Seconds to wait for the daemon to exit.")
def stop_command(keep_rules: bool, timeout: float) -> None:
    """Stop the daemon of this network namespace (as SIGTERM, or with --keep-rules as SIGUSR2) and
    wait until it has exited.

    With --keep-rules its rules stay in place: what they queue is dropped while no daemon listens
    (TCP retransmits it), and the next `fw run` takes them over in one transaction, restores the
    sessions and adopts the NAT bindings the kernel still holds: a restart loses no connection, even
    a translated one. If no daemon comes back, traffic through the queue stays stopped until
    `fw run` or `fw cleanup`.

    Example: fw stop --keep-rules && fw run --policy /etc/fw/policy.yaml
    """
    import time

    from fw.drivers.control import daemon_running

    answer = _ask({"command": "stop", "keep_rules": keep_rules})
    deadline = time.monotonic() + timeout
    while daemon_running():
        if time.monotonic() > deadline:
            raise Failure(f"the daemon (pid {answer['pid']}) did not exit within {timeout:g} s")
        time.sleep(0.05)
    click.echo(f"fw (pid {answer['pid']}) stopped; "
               + ("its rules stay for the next `fw run` (until then traffic through the queue is dropped)"
                  if keep_rules else "its rules are removed"))


@click.command("cleanup")
@click.option("--all", "everything", is_flag=True,
              help="Also remove the rules a daemon kept for a restart (fw stop --keep-rules).")
def cleanup_command(everything: bool) -> None:
    """Remove every iptables rule and chain a crashed daemon left in this network namespace, and the
    kernel NAT bindings it left.

    For systemd's ExecStopPost. Refuses while a daemon runs here; touches nothing that is not ours.
    The rules of a daemon stopped for a restart (`fw stop --keep-rules`) stay, for the next `fw run`
    to take over, unless --all: so the unit's ExecStopPost does not reopen the gap a restart closes.

    Example: fw cleanup
    """
    from fw.drivers.control import daemon_running
    from fw.drivers.iptables import IptablesError, cleanup, kept_by

    if os.geteuid() != 0:
        raise Failure("fw cleanup must run as root")
    if daemon_running():
        raise Failure("a fw daemon is running in this network namespace: stop it instead")
    if not everything and (pid := kept_by()) is not None:
        click.echo(f"the rules fw (pid {pid}) kept for a restart stay for the next fw run "
                   "(fw cleanup --all removes them)")
        return
    from fw.drivers.nat_kernel import delete_left

    try:
        removed = cleanup()
    except IptablesError as error:
        raise Failure(str(error)) from None
    bindings = delete_left()  # after the rules: with them gone nothing would judge those packets
    if bindings:
        removed.append(f"{bindings} kernel conntrack entries holding a NAT binding")
    for item in removed:
        click.echo(f"removed {item}")
    if not removed:
        click.echo("nothing to clean up")


COMMANDS = [run_command, sessions_group, stats_command, reload_command, stop_command, cleanup_command]

