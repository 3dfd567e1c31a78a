"""`fw replay`: a capture through the engine offline, one verdict per frame, summary on stderr."""

from __future__ import annotations

import json
import os
import sys

import click

from fw.cli.common import load_policy_or_exit

PROGRESS_BAR_BYTES = 8 << 20  # show a progress bar for captures larger than this, on a terminal


@click.command("replay")
@click.argument("pcap", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", required=True, type=click.Path(), help="Policy file or folder.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Only the summary.")
@click.option("--write", "write_path", type=click.Path(dir_okay=False),
              help="Save every accepted IP packet as it leaves (translated) to this raw-IP pcap.")
def replay_command(pcap: str, policy_path: str, as_json: bool, quiet: bool, write_path: str | None) -> None:
    """Replay PCAP (pcap or pcapng) through the engine, with time taken from the capture.

    Each frame gets a verdict, a reason, the session state after it and the flow (with NAT, the
    flow after translation too). The summary (packets, accepted, dropped by reason, sessions)
    goes to stderr. --write saves the accepted packets as they leave the firewall (NAT applied,
    checksums as sent; packets the engine makes, resets and ICMP errors, are not in it).

    Example: fw replay capture.pcap --policy policies/lab.yaml --json --write out.pcap
    """
    from fw.decision import Verdicts
    from fw.drivers.replay import PcapWriter, ReplayError, replay
    from fw.engine import Engine, EngineConfig

    if not os.path.isfile(pcap):
        raise click.ClickException(f"{pcap}: no such file")
    if write_path is not None and os.path.abspath(write_path) == os.path.abspath(pcap):
        raise click.ClickException("--write would overwrite the capture being replayed")
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
        writer = PcapWriter(write_path) if write_path is not None else None
    except OSError as error:
        raise click.ClickException(f"--write {write_path}: {error.strerror or error}") from None
    try:
        if not quiet and not as_json:
            out.write(f"{'#':>6}  {'verdict':7}  {'reason':22}  {'state':12}  flow\n")
        with _progress(pcap, show_progress) as bar:
            for record in records:
                bar.update(record.size + 16)
                if writer is not None and record.decision.verdict == "accept" and record.data is not None:
                    writer.write(record.time, record.left)
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
    finally:
        if writer is not None:
            writer.close()
    click.echo(summary_text(engine, verdicts), err=True)
    if writer is not None:
        click.echo(f"written: {writer.count} packets to {write_path}", err=True)


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
