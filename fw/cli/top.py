"""`fw top`: a full-screen live view of the daemon of this network namespace (textual).

How it works. A textual App polls the daemon once a second in a worker thread (fw.topdata.TopModel:
`stats` and the busiest sessions over the control socket) and redraws from the model: a header line,
packets/s and drops/s with two-minute sparklines, drops/s by reason, table fill and flood/overload
state, per-rule rates, and the sessions with their bytes/s. textual draws only what changed, so the
refresh does not flicker, and it needs nothing of the terminal beyond what ssh and tmux carry; the
layout fits 80x24. Keys: s sorts (cycles), / filters (KEY=VALUE words as for `fw sessions`, or
words to find in a row, e.g. `ftp`), k kills the highlighted session after a y/n question, p pauses,
q or Ctrl-C quits and gives the terminal back as it was.
"""

from __future__ import annotations

import sys

import click

from fw.cli.common import Failure

REFRESH_SECONDS = 1.0


@click.command("top")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=REFRESH_SECONDS, show_default=True,
              help="Seconds between refreshes.")
def top_command(interval: float) -> None:
    """A live full-screen view of the daemon: rates, drops by reason, rules and the busiest sessions.

    Keys: s sort, / filter (e.g. `ftp`, `dport=21`), k kill the highlighted session (asks y/n),
    p pause, q or Ctrl-C quit. Needs a terminal; `fw stats` and `fw sessions` are for scripts.

    Example: sudo ip netns exec fwlab-fw fw top
    """
    from fw.drivers.control import call
    from fw.topdata import TopModel

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise Failure("fw top needs a terminal; use fw stats or fw sessions for scripts")
    model = TopModel(call)
    if model.poll().error:
        raise Failure(model.view.error)
    from fw.top import TopApp  # textual is loaded only here: it is the slowest import of fw

    TopApp(model, interval).run()
