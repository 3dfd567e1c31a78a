"""`fw lab up|down`: the one-machine lab of network namespaces, with the firewall running in it.

`up` builds the namespaces (fw.lab.Lab) and starts `fw run --policy POLICY` inside the firewall
namespace as a background process; its pid and log live in /run/fw/lab-PREFIX/. `down` stops that
daemon with SIGTERM (and waits) and removes the namespaces.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_PREFIX = "fwlab-"  # fw.lab.DEFAULT_PREFIX (fw.lab is imported by the commands, not at start-up)

DAEMON_READY_SECONDS = 15.0
STOP_SECONDS = 10.0


def _open_lab(prefix: str, attacker: bool = True):
    """The lab PREFIX; `down` includes the attacker (removing what is absent is a no-op)."""
    from fw.lab import ATTACKER, CLIENT, SERVER, Lab, LabError

    if os.geteuid() != 0:
        raise click.ClickException("fw lab needs root (it builds network namespaces)")
    try:
        return Lab(prefix, hosts=(CLIENT, SERVER, ATTACKER) if attacker else (CLIENT, SERVER))
    except LabError as error:
        raise click.UsageError(str(error)) from error


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


@click.group("lab")
def lab_group() -> None:
    """The one-machine lab: client - fw - server network namespaces (see the README).

    Example: fw lab up --policy policies/lab.yaml
    """


@lab_group.command("up")
@click.option("--policy", default="policies/lab.yaml", show_default=True, type=click.Path(),
              help="Policy file or folder for the firewall daemon.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Namespace name prefix.")
@click.option("--attacker", is_flag=True, help="Add the attacker host (198.51.100.66) on the client side.")
@click.option("--no-daemon", is_flag=True, help="Build the namespaces only: the fw forwards unfiltered.")
def up_command(policy: str, prefix: str, attacker: bool, no_daemon: bool) -> None:
    """Build the lab (again: idempotent) and start `fw run --policy POLICY` in its fw namespace.

    Namespaces PREFIXclient (198.51.100.10, 2001:db8:1::10), PREFIXfw and PREFIXserver
    (203.0.113.10, 2001:db8:2::10). The daemon's pid and log are in /run/fw/lab-PREFIX/.

    Example: fw lab up --prefix fwlab- && ip netns exec fwlab-client curl http://203.0.113.10/
    """
    from fw.lab import LabError, daemon_pid, run_dir, start_daemon, wait_daemon_ready

    lab = _open_lab(prefix, attacker)
    if not no_daemon and not Path(policy).exists():
        raise click.UsageError(f"{policy}: no such policy file or folder")
    try:
        lab.up()
    except LabError as error:
        raise click.ClickException(str(error)) from error
    hosts = ", ".join(f"{lab.namespace(h.name)} {h.address4} {h.address6}" for h in lab.hosts.values())
    click.echo(f"lab {prefix} is up: firewall {lab.namespace(lab.firewall)}; {hosts}")
    if no_daemon:
        return
    directory = run_dir(prefix)
    directory.mkdir(parents=True, exist_ok=True)
    running = daemon_pid(prefix)
    if running is not None:
        click.echo(f"firewall already running: pid {running} (log {directory / 'daemon.log'})")
        return
    log = directory / "daemon.log"
    process = start_daemon(lab, policy, log, detach=True)
    (directory / "daemon.pid").write_text(f"{process.pid}\n")
    try:
        wait_daemon_ready(lab, process, DAEMON_READY_SECONDS)
    except LabError as error:
        _stop(prefix)
        detail = _last_line(log)
        raise click.ClickException(
            f"{error}{': ' + detail if detail else ''} (log {log}); the lab is up without a firewall,"
            f" `fw lab down --prefix {prefix}` removes it") from error
    click.echo(f"firewall running: pid {process.pid}, policy {policy}, log {log}")


@lab_group.command("down")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Namespace name prefix.")
def down_command(prefix: str) -> None:
    """Stop the lab's firewall daemon (SIGTERM, then wait) and remove the lab's namespaces.

    Safe to run twice, or after a partial `up`.

    Example: fw lab down --prefix fwlab-
    """
    from fw.lab import LabError

    lab = _open_lab(prefix)
    stopped = _stop(prefix)
    try:
        lab.down()
    except LabError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"lab {prefix} is down" + (f" (firewall pid {stopped} stopped)" if stopped else ""))


def _stop(prefix: str) -> int | None:
    """Stop the lab's daemon if its pid file names a live `fw run`; remove the pid file."""
    from fw.lab import daemon_pid, run_dir, stop_process

    pid = daemon_pid(prefix)
    if pid is not None and not stop_process(pid, STOP_SECONDS):
        click.echo(f"warning: firewall pid {pid} ignored SIGTERM for {STOP_SECONDS:g} s: killed", err=True)
    (run_dir(prefix) / "daemon.pid").unlink(missing_ok=True)
    return pid
