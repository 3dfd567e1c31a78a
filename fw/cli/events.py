"""`fw events`: the daemon's session, drop and load-balancer events as they happen, as `conntrack -E`
shows them.

The daemon keeps its recent events in a ring (fw.feed); `fw events` prints those (filtered by type
and time), and with `--follow` stays connected and prints each new one as the daemon publishes it,
until Ctrl-C. One line each, or one JSON object a line with `--json`.
"""

from __future__ import annotations

import json
import sys
import time

import click

from fw.cli.common import Failure, parse_time, styled

TYPES = ("new", "update", "destroy", "drop", "lb")
LABELS = {"new": ("[NEW]", "green"), "update": ("[UPDATE]", "cyan"), "destroy": ("[DESTROY]", "yellow"),
          "drop": ("[DROP]", "red"), "lb": ("[LB]", "blue"), "lost": ("[LOST]", "magenta")}


def _types(values: tuple[str, ...]) -> list[str] | None:
    names = [name.strip().lower() for value in values for name in value.split(",") if name.strip()]
    bad = [name for name in names if name not in TYPES]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(TYPES)}", param_hint="--type")
    return names or None


@click.command("events")
@click.option("--follow", "-f", is_flag=True, help="Stay connected and print new events as they come (Ctrl-C ends).")
@click.option("--type", "types", multiple=True, metavar="T",
              help="Only events of type T: new, update, destroy, drop, lb (repeat, or comma-separated).")
@click.option("--since", metavar="T", help="Only events since T: 30s, 10m, 2h ago, or an ISO 8601 time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_command(follow: bool, types: tuple[str, ...], since: str | None, as_json: bool) -> None:
    """Show the daemon's events: sessions opened, changing state and ending, dropped packets, and
    real servers of virtual servers going down, up, drained or enabled (lb).

    Without --follow, the recent events the daemon keeps (the last 4096); with it, also every new
    one, until Ctrl-C. Drops beyond 50 a second are summed per reason once a second.

    Example: fw events --follow --type new,destroy
    """
    from fw.drivers.control import ControlError, stream

    request = {"command": "events", "follow": follow, "types": _types(types)}
    if since is not None:
        try:
            request["since"] = parse_time(since)
        except ValueError:
            raise click.BadParameter(f"{since!r} is neither a duration (30s, 10m, 2h, 7d) nor an ISO 8601 time",
                                     param_hint="--since") from None
    try:
        for number, event in enumerate(stream(request)):
            if number == 0:
                continue  # the answer's head
            click.echo(json.dumps(event) if as_json else event_line(event))
            if follow:
                sys.stdout.flush()
    except ControlError as error:
        raise Failure(str(error), error.exit_code) from None
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `fw events -f | head`
        sys.stderr.close()


def _flow(event: dict) -> str:
    words = [f"src={event['src']}", f"dst={event['dst']}"] if event.get("src") else []
    words += [f"{key}={event[key]}" for key in ("sport", "dport", "id") if key in event]
    return " ".join(words)


def event_line(event: dict) -> str:
    """`12:00:01.250    [NEW] tcp  SYN_SENT src=.. dst=.. sport=.. dport=.. rule=allow-web reason=rule:allow-web`."""
    kind = event.get("type", "?")
    label, colour = LABELS.get(kind, (f"[{kind.upper()}]", None))
    if kind == "lost":
        return styled(f"{'':12} {label:>9}", fg=colour) + f" {event['count']} events (this reader was too slow)"
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) + f".{int(event['time'] % 1 * 1000):03d}"
    words = [styled(f"{label:>9}", fg=colour), event.get("proto") or "-"]
    if kind == "lb":
        old = f" (was {event['old']})" if event.get("old") else ""
        return (f"{stamp} {words[0]} {event.get('virtual_server')} {event.get('real_server')} "
                f"{event.get('state')}{old}: {event.get('why')}")
    if kind == "drop":
        if event.get("summary"):
            return f"{stamp} {words[0]} {event['count']} more packets reason={event['reason']}"
        words.append(_flow(event))
        words.append(f"reason={event['reason']}")
        return f"{stamp} " + " ".join(w for w in words if w)
    words.append(event.get("state") or "-")
    if kind == "update":
        words[-1] += f" (was {event.get('old_state')})"
    words.append(_flow(event))
    if kind == "destroy":
        words.append(f"packets={event.get('packets', 0)} bytes={event.get('bytes', 0)}")
    words.append(f"rule={event.get('rule') or '-'}")
    if event.get("reason") and kind != "update":
        words.append(f"reason={event['reason']}")
    return f"{stamp} " + " ".join(w for w in words if w)
