"""`fw replay`: a capture through the engine offline, one verdict per frame, summary on stderr."""

from __future__ import annotations

import json
import os
import sys

import click

from fw.cli.common import load_policy_or_exit
from fw.decision import Verdicts

PROGRESS_BAR_BYTES = 8 << 20  # show a progress bar for captures larger than this, on a terminal


@click.command("replay")
@click.argument("pcap", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", required=True, type=click.Path(), help="Policy file or folder.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Only the summary.")
def replay_command(pcap: str, policy_path: str, as_json: bool, quiet: bool) -> None:
    """Replay PCAP (pcap or pcapng) through the engine, with time taken from the capture.

    Each frame gets a verdict, a reason, the session state after it and the flow. The summary
    (packets, accepted, dropped by reason, sessions) goes to stderr.

    Example: fw replay capture.pcap --policy policies/lab.yaml --json
    """
    from fw.drivers.replay import ReplayError, replay
    from fw.engine import Engine, EngineConfig

    if not os.path.isfile(pcap):
        raise click.ClickException(f"{pcap}: no such file")
    engine = Engine(load_policy_or_exit(policy_path), EngineConfig(events=False))
    show_progress = sys.stderr.isatty() and (quiet or as_json or not sys.stdout.isatty())
    show_progress = show_progress and os.path.getsize(pcap) > PROGRESS_BAR_BYTES
    try:
        verdicts = Verdicts()
        records = replay(pcap, engine, verdicts)
    except ReplayError as error:
        raise click.ClickException(str(error)) from None
    out = sys.stdout
    try:
        if not quiet and not as_json:
            out.write(f"{'#':>6}  {'verdict':7}  {'reason':22}  {'state':12}  flow\n")
        with _progress(pcap, show_progress) as bar:
            for record in records:
                bar.update(record.size + 16)
                if quiet:
                    continue
                if as_json:
                    out.write(json.dumps(record.to_json()) + "\n")
                else:
                    row = record.to_json()
                    out.write(
                        f"{row['index']:>6}  {row['verdict']:7}  {row['reason']:22}  "
                        f"{row['state'] or '-':12}  {row['flow'] or '-'}\n"
                    )
            bar.update(max(0, getattr(bar, "length", 0) - getattr(bar, "pos", 0)))  # the file's headers: 100%
    except ReplayError as error:
        raise click.ClickException(str(error)) from None
    click.echo(summary_text(engine, verdicts), err=True)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, _count):
        pass


def _progress(pcap: str, show: bool):
    if not show:
        return _NoProgress()
    return click.progressbar(length=os.path.getsize(pcap), file=sys.stderr, label="replay")


def summary_text(engine, verdicts) -> str:
    accepted, dropped = sum(verdicts.accepted.values()), sum(verdicts.dropped.values())
    drops = {r: n for r, n in sorted(verdicts.dropped.items()) if n}
    lines = [
        f"packets: {accepted + dropped}, accepted: {accepted}, dropped: {dropped}",
        "dropped by reason: " + (", ".join(f"{r} {n}" for r, n in drops.items()) or "none"),
        f"sessions: opened {engine.counters['inserts']}, open at end {len(engine.table)}",
    ]
    return "\n".join(lines)
