"""`fw sessions [FILTER...]` and `fw sessions kill FILTER...`: the daemon's session table.

`fw sessions` prints a table (one session a line, as `pfctl -ss` and `conntrack -L` do), or with
`--conntrack` conntrack's own line format, or with `--json` the daemon's answer as it is. Filters are
the KEY=VALUE words of `fw sessions kill` (fw.drivers.control.FILTER_KEYS); the daemon filters,
sorts and cuts the list, so a large table is not sent whole to show ten lines.
"""

from __future__ import annotations

import json

import click

from fw.cli.common import ask, styled

SORT_CHOICES = ("bytes", "packets", "age", "expires")
STATE_COLOURS = {"ESTABLISHED": "green", "REPLIED": "green", "TIME_WAIT": "yellow", "CLOSE": "yellow",
                 "SYN_SENT": "cyan", "UNREPLIED": "cyan"}


class _FilterGroup(click.Group):
    """A group whose bare KEY=VALUE arguments are its own (`fw sessions dport=80`), unless the first
    word names a subcommand (`fw sessions kill dport=80`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        words = [a for a in args if not a.startswith("-")]
        if words and words[0] in self.commands:
            ctx.meta["fw.filter"] = ()
            return super().parse_args(ctx, args)
        ctx.meta["fw.filter"] = tuple(a for a in args if "=" in a and not a.startswith("-") or a == "all")
        return super().parse_args(ctx, [a for a in args if a not in ctx.meta["fw.filter"]])


def _filter(terms, empty_ok: bool) -> dict:
    from fw.drivers.control import parse_filter

    try:
        return parse_filter(terms, empty_ok=empty_ok)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


@click.group("sessions", cls=_FilterGroup, invoke_without_command=True)
@click.option("--sort", type=click.Choice(SORT_CHOICES), help="Largest first (age: oldest; expires: soonest).")
@click.option("--limit", type=click.IntRange(0), metavar="N", help="At most N sessions.")
@click.option("--json", "as_json", is_flag=True, help="The sessions as one JSON object.")
@click.option("--conntrack", "as_conntrack", is_flag=True, help="One `conntrack -L` line per session.")
@click.pass_context
def sessions_group(ctx, sort, limit, as_json: bool, as_conntrack: bool) -> None:
    """List the daemon's sessions, optionally only those that match FILTER (KEY=VALUE words).

    Keys as for `fw sessions kill`: proto, src, dst, addr, sport, dport, port, state, rule, owner.

    Example: fw sessions proto=tcp dport=21 --sort bytes --limit 10
    """
    if ctx.invoked_subcommand is not None:
        return
    request = {"command": "sessions", "filter": _filter(ctx.meta.get("fw.filter", ()), empty_ok=True) or None,
               "sort": sort, "limit": limit}
    answer = ask(request)
    if as_json:
        answer.pop("ok", None)
        click.echo(json.dumps(answer, indent=1))
        return
    sessions = answer["sessions"]
    if as_conntrack:
        for session in sessions:
            click.echo(session_line(session))
    elif sessions:
        click.echo("\n".join(session_table(sessions)))
    total = answer.get("total", answer["count"])
    shown = f"{answer['count']} of {total}" if total != answer["count"] else str(answer["count"])
    click.echo(f"fw sessions: {shown} sessions have been shown.", err=True)


def endpoint(address: str, port) -> str:
    """`198.51.100.10:80`, `[2001:db8::1]:80`, or the address alone without a port."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def human(count: int) -> str:
    """1234 -> `1234`, 123456 -> `121K`, 5190000 -> `4.9M` (binary units, as top does), 3e9 -> `2.8G`."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= (100 * size if unit == "K" else size):
            value = count / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def session_row(session: dict) -> list[str]:
    original, reply = session["original"], session["reply"]
    flags = "".join(f[0] for f in session["flags"] if f in ("RELATED", "LOOSE", "OFFLOADED"))
    rule = session["rule"] or "-"
    if session.get("alg"):
        rule += f" ({session['alg']})"
    return [session["proto"], endpoint(original["src"], original.get("sport", original.get("id"))),
            endpoint(original["dst"], original.get("dport", original.get("id"))), session["state"],
            str(original["packets"] + reply["packets"]), human(original["bytes"] + reply["bytes"]),
            duration(session["age"]), duration(session["timeout"]), rule + (f" [{flags}]" if flags else "")]


HEADERS = ["PROTO", "SOURCE", "DESTINATION", "STATE", "PKTS", "BYTES", "AGE", "EXPIRES", "RULE"]
RIGHT = {"PKTS", "BYTES", "AGE", "EXPIRES"}


def session_table(sessions: list[dict]) -> list[str]:
    """The table of `fw sessions`: a header and one line a session, columns as wide as their content."""
    rows = [HEADERS] + [session_row(s) for s in sessions]
    if any(s.get("queue") is not None for s in sessions):
        rows[0] = [*rows[0], "QUEUE"]
        for row, session in zip(rows[1:], sessions, strict=True):
            row.append(str(session.get("queue")))
    if any(s.get("owner") for s in sessions):
        rows[0] = [*rows[0], "OWNER"]
        for row, session in zip(rows[1:], sessions, strict=True):
            row.append(session.get("owner") or "-")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.rjust(width) if rows[0][i] in RIGHT else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        if number and row[3] in STATE_COLOURS:
            cells[3] = styled(cells[3], fg=STATE_COLOURS[row[3]])
        lines.append("  ".join(cells).rstrip())
    return lines


def _tuple_text(direction: dict) -> str:
    words = [f"src={direction['src']}", f"dst={direction['dst']}"]
    words += [f"{key}={direction[key]}" for key in ("sport", "dport", "id") if key in direction]
    words += [f"packets={direction['packets']}", f"bytes={direction['bytes']}"]
    return " ".join(words)


def session_line(session: dict) -> str:
    """`tcp 6 7439 ESTABLISHED src=.. dst=.. sport=.. dport=.. packets=.. bytes=.. src=.. [ASSURED]`."""
    from fw.packet.constants import PROTOCOLS

    number = PROTOCOLS.get(session["proto"], session["proto"])
    words = [f"{session['proto']:<8} {number:<3} {session['timeout']} {session['state']}",
             _tuple_text(session["original"]), _tuple_text(session["reply"])]
    if "ASSURED" in session["flags"]:
        words.append("[ASSURED]")
    words += [f"[{flag}]" for flag in session["flags"] if flag not in ("ASSURED", "SEEN_REPLY")]
    words.append(f"rule={session['rule'] or '-'}")
    if session.get("alg"):
        words.append(f"alg={session['alg']}")
    if session.get("owner"):
        words.append(f"owner={session['owner']}")
    return " ".join(words)


@sessions_group.command("kill")
@click.argument("terms", nargs=-1, metavar="FILTER...")
def kill_command(terms) -> None:
    """Remove the sessions that match FILTER (KEY=VALUE words, all must match; `all` for every one).

    Keys: proto, src, dst (the original direction's addresses, or CIDRs), addr (either end), sport,
    dport, port (either end), state (e.g. ESTABLISHED), rule (the rule that opened it), owner (the
    HA node that announced it).

    Example: fw sessions kill src=198.51.100.0/24 dport=80
    """
    spec = _filter(terms, empty_ok=False)
    answer = ask({"command": "kill", "filter": spec})
    click.echo(f"{answer['killed']} sessions killed")
