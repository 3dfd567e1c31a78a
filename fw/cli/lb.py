"""`fw lb`, `fw lb drain NAME ADDR:PORT`, `fw lb enable NAME ADDR:PORT`: the daemon's virtual servers.

Each is a client of the control socket of the daemon in this network namespace (commands `lb`,
`lb-drain`, `lb-enable`, answered by fw.drivers.lb). `fw lb` prints one block per virtual server
and one line per real server (health, weight, active sessions, sessions opened, bytes of its ended
sessions, last check), or the daemon's answer with `--json`. Drain and enable last until the next
reload. Under a supervisor of workers (`--queues`, refused with virtual servers for now) every
worker would balance on its own: the rows carry each worker's `queue`.
"""

from __future__ import annotations

import json
import time

import click

from fw.cli.common import ask, styled
from fw.cli.sessions import human

HEALTH_COLOURS = {"up": "green", "down": "red", "drained": "yellow"}
HEADERS = ["REAL SERVER", "HEALTH", "WEIGHT", "ACTIVE", "OPENED", "BYTES", "LAST CHECK"]


@click.group("lb", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="The virtual servers as one JSON object.")
@click.pass_context
def lb_group(ctx, as_json: bool) -> None:
    """List the daemon's virtual servers and their real servers.

    Health is up, down (health checks) or drained (weight 0: `fw lb drain`); ACTIVE are the sessions
    open now, OPENED those it was ever given, BYTES those of its ended sessions. Health, drain and
    counts are this daemon's own (each node balances on its own).

    Example: fw lb --json
    """
    if ctx.invoked_subcommand is not None:
        return
    answer = ask({"command": "lb"})
    if as_json:
        answer.pop("ok", None)
        click.echo(json.dumps(answer, indent=1))
        return
    rows = answer["virtual_servers"]
    for line in lb_lines(rows, time.time()):
        click.echo(line)
    click.echo(f"fw lb: {len(rows)} virtual server{'s' if len(rows) != 1 else ''}.", err=True)


def lb_lines(rows: list[dict], now: float) -> list[str]:
    """The text of `fw lb`: a line per virtual server, then its real servers as a table."""
    lines = []
    for row in rows:
        where = f" (queue {row['queue']})" if "queue" in row else ""
        lines.append(f"{row['name']}{where}: {row['proto']} {endpoint(row['address'], row['port'])}, "
                     f"scheduler {row['scheduler']}")
        table = [HEADERS] + [_server_row(server, now) for server in row["real_servers"]]
        widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADERS))]
        for cells in table:
            text = "  ".join(cell.rjust(width) if 2 <= i <= 5 else cell.ljust(width)
                             for i, (cell, width) in enumerate(zip(cells, widths, strict=True)))
            health = cells[1]
            if health in HEALTH_COLOURS:
                text = text.replace(health, styled(health, fg=HEALTH_COLOURS[health]), 1)
            lines.append("  " + text.rstrip())
    return lines


def _server_row(server: dict, now: float) -> list[str]:
    last = server.get("last_check")
    check = "-"
    if last is not None:
        check = f"{'ok' if last['ok'] else 'failed'}: {last['why']} ({max(0, now - last['at']):.0f}s ago)"
    return [server["server"], server["health"], str(server["weight"]), str(server["active"]),
            str(server["opened"]), human(server.get("bytes", 0)), check]


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@lb_group.command("drain")
@click.argument("name")
@click.argument("server", metavar="ADDR:PORT")
def drain_command(name: str, server: str) -> None:
    """No new sessions for a real server (weight 0); its sessions stay, until the next reload.

    Example: fw lb drain web 203.0.113.21:8080
    """
    ask({"command": "lb-drain", "name": name, "server": server})
    click.echo(f"fw lb: {server} of {name} drained (its sessions stay; `fw lb enable` brings it back).", err=True)


@lb_group.command("enable")
@click.argument("name")
@click.argument("server", metavar="ADDR:PORT")
def enable_command(name: str, server: str) -> None:
    """A drained real server back to its configured weight.

    Example: fw lb enable web 203.0.113.21:8080
    """
    ask({"command": "lb-enable", "name": name, "server": server})
    click.echo(f"fw lb: {server} of {name} enabled.", err=True)
