"""`fw policy load|list|show|diff|activate|test` and `fw log`: the store from the command line.

Each command opens the store (`--db URL`, else $FW_DB, else the network namespace's SQLite file),
runs one unit of work in one session and prints the result; `--json` prints JSON instead. Library
errors become one line on stderr and SPEC's exit status: 1 when the database cannot be used (or
the daemon could not be reached), 2 for an invalid policy or a revision that is not there.
The commands are attached to `fw` by `register(main)` (fw/cli/commands.py calls it).
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING

import click

from fw.cli.common import parse_time

if TYPE_CHECKING:
    from fw.store.database import Store

# fw.store (SQLAlchemy, Alembic) and fw.store.explain are imported inside the commands that use them:
# `fw --version`, `fw sessions` and `fw stats` start without them (tests/test_cli_startup.py).


class Failure(click.ClickException):
    """One line on stderr and SPEC's exit status (1 runtime failure, 2 bad usage)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def db_option(function):
    return click.option("--db", "db", metavar="URL",
                        help="Database URL or SQLite path (default: $FW_DB, else "
                             "/var/lib/fw/fw-<netns>.db).")(function)


def json_option(function):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)


class _Unit:
    """`with _Unit(db) as (store, session):` one transaction; StoreError becomes a Failure."""

    def __init__(self, db: str | None):
        from fw.store.database import Store  # noqa: PLC0415

        self.store = Store(db)
        self._context = None

    def __enter__(self):
        from fw.store.database import StoreError  # noqa: PLC0415

        try:
            self._context = self.store.session()
            return self.store, self._context.__enter__()
        except StoreError as error:
            raise Failure(str(error), error.exit_code) from None

    def __exit__(self, kind, value, traceback):
        from fw.store.database import StoreError  # noqa: PLC0415

        try:
            self._context.__exit__(kind, value, traceback)
        except StoreError as error:
            raise Failure(str(error), error.exit_code) from None
        finally:
            self.store.dispose()
        if isinstance(value, StoreError):  # raised in the block (a revision not found, ...)
            raise Failure(str(value), value.exit_code) from None
        return False


def _when(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


# -- policy revisions -----------------------------------------------------------------------------


@click.command("load")
@click.argument("path", type=click.Path())
@click.option("--activate", "then_activate", is_flag=True, help="Also make it the active revision.")
@db_option
@json_option
def load_command(path: str, then_activate: bool, db: str | None, as_json: bool) -> None:
    """Validate a policy file or folder and store it as a revision; print the revision.

    An invalid policy is not stored: every error is printed and the exit status is 2. Loading a
    policy that is already stored (the same rules and values) stores nothing new.

    Example: fw policy load policies/lab.yaml --activate
    """
    from fw.cli.common import load_policy_or_exit  # noqa: PLC0415
    from fw.store import policies  # noqa: PLC0415

    policy = load_policy_or_exit(path)
    with _Unit(db) as (store, session):
        record, new = policies.store_policy(session, policy, click.format_filename(path))
        previous = policies.activate(session, record) if then_activate else None
    answer = {"revision": record.revision, "new": new, "summary": record.summary, "active": then_activate}
    reload = _reach_daemon(store) if then_activate else None
    if as_json:
        click.echo(json.dumps({**answer, "daemon": reload}))
        return
    click.echo(f"revision {record.revision} {'stored' if new else 'already stored'} ({record.summary})")
    if then_activate:
        _print_activation(record.revision, previous, reload)


@click.command("list")
@db_option
@json_option
def list_command(db: str | None, as_json: bool) -> None:
    """List the stored revisions, newest first; `*` marks the active one.

    Example: fw policy list
    """
    from fw.store import policies  # noqa: PLC0415

    with _Unit(db) as (_store, session):
        active = policies.active_revision(session)
        rows = [{"revision": r.revision, "created": r.created, "origin": r.origin, "rules": r.rule_count,
                 "summary": r.summary, "active": active is not None and r.id == active.id}
                for r in policies.revisions(session)]
    if as_json:
        click.echo(json.dumps({"revisions": rows}, indent=1))
        return
    for row in rows:
        click.echo(f"{'*' if row['active'] else ' '} {row['revision']}  {_when(row['created'])}  "
                   f"{row['rules']:>4} rules  {row['origin']}")
    if not rows:
        click.echo("no revisions stored (fw policy load PATH)", err=True)


@click.command("show")
@click.argument("revision", required=False)
@click.option("--stats", is_flag=True, help="Per-rule packets, bytes and sessions instead of the source.")
@db_option
@json_option
def show_command(revision: str | None, stats: bool, db: str | None, as_json: bool) -> None:
    """Print a stored revision's policy source (default: the active revision).

    With --stats, each rule's counters as the daemon stored them: packets and bytes of the
    sessions it opened (or that it refused), sessions opened, the last time it was hit.

    Example: fw policy show --stats
    """
    from fw.store import policies, records  # noqa: PLC0415

    with _Unit(db) as (_store, session):
        record = policies.find_revision(session, revision)
        written = policies.written_rules(record)
        counters = records.rule_counts(session, written) if stats else {}
        active = policies.active_revision(session)
    rules = [_rule_stats(name, rule, counters.get(name)) for name, rule in written.items()]
    if as_json:
        answer = {"revision": record.revision, "created": record.created, "origin": record.origin,
                  "summary": record.summary, "active": active is not None and active.id == record.id,
                  "sources": [{"name": name, "text": text} for name, text in record.sources]}
        if stats:
            answer["rules"] = rules
        click.echo(json.dumps(answer, indent=1))
    elif stats:
        click.echo(f"revision {record.revision} ({record.summary})")
        click.echo(f"{'rule':<24} {'action':<7} {'packets':>12} {'bytes':>14} {'sessions':>10}  last hit")
        for row in rules:
            last = _when(row["last_hit"]) if row["last_hit"] else "never"
            click.echo(f"{row['name']:<24} {row['action']:<7} {row['packets']:>12} {row['bytes']:>14} "
                       f"{row['sessions']:>10}  {last}")
    else:
        click.echo(policies.source_text(record), nl=False)


def _rule_stats(name: str, rule: dict, counter) -> dict:
    return {"name": name, "action": str(rule.get("action")),
            "packets": counter.packets if counter else 0, "bytes": counter.bytes if counter else 0,
            "sessions": counter.sessions if counter else 0, "last_hit": counter.last_hit if counter else None}


@click.command("diff")
@click.argument("old")
@click.argument("new")
@db_option
@json_option
def diff_command(old: str, new: str, db: str | None, as_json: bool) -> None:
    """Show what changed between two revisions: rules added, removed, changed, moved, then the
    sources as a unified diff. A revision is its hash, a unique prefix of it, or `active`.

    Example: fw policy diff 5eae22 active
    """
    from fw.store import policies  # noqa: PLC0415

    with _Unit(db) as (_store, session):
        result = policies.diff(policies.find_revision(session, old), policies.find_revision(session, new))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(f"revision {result.old} -> {result.new}")
    for word in ("added", "removed", "changed", "moved"):
        names = getattr(result, word)
        if names:
            click.echo(f"rules {word}: {', '.join(map(str, names))}")
    click.echo(result.text, nl=False)
    if not result.text:
        click.echo("no changes")


@click.command("activate")
@click.argument("revision")
@click.option("--no-reload", is_flag=True, help="Do not ask the running daemon to reload.")
@db_option
@json_option
def activate_command(revision: str, no_reload: bool, db: str | None, as_json: bool) -> None:
    """Make a stored revision the active one (activating an older one is the rollback).

    A daemon in this network namespace that serves this store (`fw run` without --policy) is
    asked to reload, so the revision is in force when the command returns.

    Example: fw policy activate 5eae22
    """
    from fw.store import policies  # noqa: PLC0415

    with _Unit(db) as (store, session):
        record = policies.find_revision(session, revision)
        _loaded(record)  # a stored revision that no longer loads is not activated
        previous = policies.activate(session, record)
    reload = None if no_reload else _reach_daemon(store)
    if as_json:
        click.echo(json.dumps({"revision": record.revision, "previous": previous and previous.revision,
                               "daemon": reload}))
    else:
        _print_activation(record.revision, previous, reload)
    if reload is not None and not reload["ok"]:
        raise Failure(f"daemon not reloaded: {reload['error']}", 1)


def _print_activation(revision: str, previous, reload: dict | None) -> None:
    was = f" (was {previous.revision})" if previous is not None else ""
    click.echo(f"revision {revision} active{was}")
    if reload is not None and reload["ok"] and reload.get("reloaded"):
        click.echo(f"daemon reloaded: {reload['summary']}")
    elif reload is not None and reload["ok"]:
        click.echo(f"daemon not reloaded: {reload['why']}", err=True)


def _reach_daemon(store: Store) -> dict:
    """Ask this namespace's daemon to reload if it serves `store`; what happened, as a dict."""
    from fw.drivers.control import ControlError, call, daemon_running  # noqa: PLC0415

    if not daemon_running():
        return {"ok": True, "reloaded": False, "why": "no daemon runs in this network namespace"}
    try:
        serving = call({"command": "stats"})["stats"]["policy"]["path"]
        if serving != store.label:
            return {"ok": True, "reloaded": False, "why": f"the daemon serves {serving}, not this store"}
        answer = call({"command": "reload"})
    except ControlError as error:
        return {"ok": False, "error": str(error)}
    return {"ok": True, "reloaded": True, "summary": answer.get("summary")}


# -- fw policy test -------------------------------------------------------------------------------


@click.command("test")
@click.option("--proto", required=True, help="tcp, udp, icmp, icmpv6, a protocol name or number.")
@click.option("--src", required=True, metavar="ADDR", help="Source address.")
@click.option("--dst", required=True, metavar="ADDR", help="Destination address.")
@click.option("--sport", type=click.IntRange(0, 65535), help="Source port (default 40000).")
@click.option("--dport", type=click.IntRange(0, 65535), help="Destination port (TCP, UDP).")
@click.option("--icmp-type", metavar="TYPE", help="ICMP type, name or number (default echo-request).")
@click.option("--icmp-code", type=click.IntRange(0, 255), default=0, help="ICMP code.")
@click.option("--iif", metavar="IFNAME", help="Interface the packet comes in on.")
@click.option("--oif", metavar="IFNAME", help="Interface it would go out on.")
@click.option("--policy", "policy_path", type=click.Path(), help="A policy file or folder (default: the store).")
@click.option("--rev", "revision", help="A stored revision (default: the active one).")
@click.option("-v", "--verbose", is_flag=True, help="Also list the earlier rules and why they do not match.")
@db_option
@json_option
def test_command(proto, src, dst, sport, dport, icmp_type, icmp_code, iif, oif, policy_path, revision,
                 verbose, db, as_json) -> None:
    """Say which rule decides a packet that would open a new session, and why.

    The packet is built from the options and matched as the engine matches it; the deciding
    rule's criteria are shown beside the packet's values. Rules only: established traffic and
    FTP data connections are the session table's business.

    Example: fw policy test --proto tcp --src 198.51.100.10 --dst 203.0.113.10 --dport 22
    """
    from fw.store.explain import ProbeError, explain, probe_packet  # noqa: PLC0415

    if policy_path and revision:
        raise click.UsageError("give --policy or --rev, not both")
    try:
        packet = probe_packet(proto, src, dst, sport, dport, icmp_type, icmp_code)
    except ProbeError as error:
        raise click.UsageError(str(error)) from None
    policy = _policy_for_test(policy_path, revision, db)
    result = explain(policy, packet, iif, oif)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    if result.rule is None:
        click.echo(f"{result.flow}: {result.action} by the default action (no rule matches), "
                   f"revision {result.revision}")
    else:
        click.echo(f"{result.flow}: {result.action} by rule {result.rule['name']} ({result.rule['place']}), "
                   f"revision {result.revision}")
        for criterion in result.criteria:
            click.echo(f"  {_criterion_text(criterion)}")
    if verbose:
        for skipped in result.skipped:
            click.echo(f"  skipped {skipped.rule} ({skipped.place}): {_criterion_text(skipped.criterion)}")
    elif result.skipped:
        click.echo(f"  ({len(result.skipped)} earlier rules do not match; -v lists them)")


def _policy_for_test(policy_path: str | None, revision: str | None, db: str | None):
    from fw.store import policies  # noqa: PLC0415

    if policy_path:
        from fw.cli.common import load_policy_or_exit  # noqa: PLC0415

        return load_policy_or_exit(policy_path)
    with _Unit(db) as (_store, session):
        return _loaded(policies.find_revision(session, revision))


def _loaded(record):
    """The stored revision as a Policy; exit 2 if it no longer loads (a stricter fw)."""
    from fw.policy import PolicyError  # noqa: PLC0415
    from fw.store import policies  # noqa: PLC0415

    try:
        return policies.policy_of(record)
    except PolicyError as error:
        first = error.diagnostics[0].format().splitlines()[0] if error.diagnostics else "invalid"
        raise Failure(f"revision {record.revision} no longer loads: {first}", 2) from None


def _criterion_text(criterion) -> str:
    if criterion.field == "family":
        return f"family: the packet is {criterion.packet}, the rule matches {criterion.written}"
    if criterion.field in ("proto", "iif", "oif"):
        return f"{criterion.field} {criterion.packet} {'is' if criterion.matches else 'is not'} {criterion.written}"
    return f"{criterion.field} {criterion.packet} {'in' if criterion.matches else 'not in'} {criterion.written}"


# -- fw log -------------------------------------------------------------------------------------


class TimeParam(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return parse_time(value)
        except ValueError:
            self.fail(f"{value!r} is neither a duration (30s, 10m, 2h, 7d) nor an ISO 8601 time", param, ctx)


@click.command("log")
@click.option("--since", type=TimeParam(), help="From this long ago (10m, 2h, 7d) or this time (ISO 8601).")
@click.option("--until", type=TimeParam(), help="Up to this time (same forms).")
@click.option("--verdict", type=click.Choice(["accept", "drop"]), help="Only accepted or dropped traffic.")
@click.option("--rule", help="Only events of this rule.")
@click.option("--type", "event_type", help="Only this EVE event_type (flow, drop, policy, ...).")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="At most this many (the newest).")
@db_option
@click.option("--json", "as_json", is_flag=True, help="EVE records, one JSON object per line.")
def log_command(since, until, verdict, rule, event_type, limit, db, as_json) -> None:
    """Show the stored events, oldest first: sessions opened and closed, drops (aggregated, with
    a count), policy loads, activations and reloads.

    Example: fw log --since 1h --verdict drop
    """
    from fw.store import records  # noqa: PLC0415

    with _Unit(db) as (_store, session):
        rows = records.query_events(session, since=since, until=until, verdict=verdict, rule=rule,
                                    event_type=event_type, limit=limit)
        lines = [json.dumps(row.record) if as_json else records.describe(row) for row in rows]
    for line in lines:
        click.echo(line)


POLICY_COMMANDS = [load_command, list_command, show_command, diff_command, activate_command, test_command]
COMMANDS = [log_command]


def register(main: click.Group) -> None:
    """Add the store's commands to `fw` (to its `policy` group, and `fw log`)."""
    policy_group = main.commands["policy"]
    for command in POLICY_COMMANDS:
        policy_group.add_command(command)
    for command in COMMANDS:
        main.add_command(command)
