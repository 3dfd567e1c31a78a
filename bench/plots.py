"""Plots of a bench results JSON: `python -m bench.plots bench/results.json [--out DIR]`.

`make bench` calls `write_plots` after writing bench/results.json; this module also runs on its own
on any results file (an older run, or the figures in docs/). Three PNGs, drawn with matplotlib's
Agg backend (no display needed), paths in the bench's order, coloured by kind (the kernel alone,
a bare NFQUEUE loop, fw):
- `throughput.png`: TCP Gbit/s and small-packet UDP packets/s (loss-free and under the flood) per path;
- `cpu.png`: microseconds of CPU per datagram at the loss-free rate, the firewall's processes and
  the rest (sender, kernel forwarding and queueing) stacked;
- `latency.png`: ping median and p99 per path (or, when a file has only those, the latency added
  over kernel forwarding).
A results file without its live part (`--offline`, not root) has nothing to plot: PlotError says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KIND_COLOURS = {"kernel": "#8c8c8c", "bare": "#4c72b0", "fw": "#dd8452"}
FILES = ("throughput.png", "cpu.png", "latency.png")


class PlotError(Exception):
    """The results cannot be plotted (no live part, not a results file)."""


def kind(path: str) -> str:
    return "kernel" if path.startswith("kernel") else "bare" if path.startswith("bare") else "fw"


def _paths(document: dict) -> dict[str, dict]:
    live = document.get("live")
    if not isinstance(live, dict) or not live.get("paths"):
        skipped = document.get("live_skipped")
        raise PlotError("no live figures to plot" + (f" (live part skipped: {skipped})" if skipped else ""))
    return {name: row for name, row in live["paths"].items() if "error" not in row}


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _bars(axis, names: list[str], values: list, label: str | None = None, offset: float = 0.0,
          width: float = 0.8, hatch: str | None = None) -> None:
    positions = [i + offset for i in range(len(names))]
    heights = [v if v is not None else 0 for v in values]
    axis.bar(positions, heights, width=width, label=label, hatch=hatch,
             color=[KIND_COLOURS[kind(n)] for n in names], edgecolor="black", linewidth=0.5)


def _label_paths(axis, names: list[str]) -> None:
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axis.grid(axis="y", alpha=0.3)


def _title(document: dict) -> str:
    live = document["live"]
    return (f"{live.get('cpus', '?')} CPUs, Python {document.get('python', '?')}; median of {live.get('runs', '?')} "
            f"runs of {live.get('seconds_per_run', '?')} s" + (f" ({document['source']})" if document.get("source")
                                                               else ""))


def plot_throughput(plt, document: dict, out: Path) -> Path:
    rows = _paths(document)
    names = list(rows)
    figure, (tcp, udp) = plt.subplots(1, 2, figsize=(12, 4.8))
    _bars(tcp, names, [rows[n].get("tcp_gbit") for n in names])
    tcp.set_ylabel("Gbit/s")
    tcp.set_title("TCP, one iperf3 stream")
    _bars(udp, names, [rows[n].get("udp_pps") for n in names], "loss-free", -0.2, 0.4)
    _bars(udp, names, [rows[n].get("udp_flood_pps") for n in names], "under a flood of 200,000/s", 0.2, 0.4, "//")
    udp.set_ylabel("packets/s")
    udp.set_title("64-byte UDP datagrams")
    udp.legend(fontsize=8)
    for axis in (tcp, udp):
        _label_paths(axis, names)
    figure.suptitle("Throughput per path: " + _title(document), fontsize=9)
    return _save(plt, figure, out / "throughput.png")


def plot_cpu(plt, document: dict, out: Path) -> Path:
    rows = {n: r for n, r in _paths(document).items() if r.get("udp_cpu")}
    if not rows:
        raise PlotError("no CPU figures (udp_cpu) in these results")
    names = list(rows)
    firewall = [rows[n]["udp_cpu"].get("firewall_us_per_packet") or 0 for n in names]
    rest = [rows[n]["udp_cpu"].get("other_us_per_packet") or 0 for n in names]
    figure, axis = plt.subplots(figsize=(9, 4.8))
    axis.bar(names, firewall, label="firewall's processes", color=[KIND_COLOURS[kind(n)] for n in names],
             edgecolor="black", linewidth=0.5)
    axis.bar(names, rest, bottom=firewall, label="the rest (sender, kernel forwarding and queueing)",
             color="#dddddd", edgecolor="black", linewidth=0.5, hatch="..")
    axis.set_ylabel("microseconds of CPU per datagram")
    axis.set_ylim(top=max(f + r for f, r in zip(firewall, rest, strict=True)) * 1.3 or 1)
    axis.legend(fontsize=8, loc="upper left")
    _label_paths(axis, names)
    figure.suptitle("CPU per packet at the loss-free rate: " + _title(document), fontsize=9)
    return _save(plt, figure, out / "cpu.png")


def plot_latency(plt, document: dict, out: Path) -> Path:
    rows = _paths(document)
    measured = {n: r["ping"] for n, r in rows.items() if (r.get("ping") or {}).get("median_ms") is not None}
    figure, axis = plt.subplots(figsize=(9, 4.8))
    if measured:
        names = list(measured)
        _bars(axis, names, [measured[n]["median_ms"] for n in names], "median", -0.2, 0.4)
        _bars(axis, names, [measured[n].get("p99_ms") for n in names], "p99", 0.2, 0.4, "//")
        axis.set_ylabel("ping round trip, ms")
    else:
        added = document["live"].get("latency_added") or {}
        if not added:
            plt.close(figure)
            raise PlotError("no latency figures (ping, latency_added) in these results")
        names = list(added)
        _bars(axis, names, [added[n]["median_ms"] for n in names], "median")
        axis.set_ylabel("ping median added over kernel forwarding, ms")
    axis.legend(fontsize=8)
    _label_paths(axis, names)
    figure.suptitle("Latency per path: " + _title(document), fontsize=9)
    return _save(plt, figure, out / "latency.png")


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_plots(document: dict, out: Path) -> list[Path]:
    """The three PNGs of `document` (a bench results dict) in folder `out`; PlotError if it has no live part."""
    _paths(document)
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    return [plot(plt, document, out) for plot in (plot_throughput, plot_cpu, plot_latency)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a bench results JSON (bench/results.json)")
    parser.add_argument("--out", help="folder for the PNGs (default: the results file's folder)")
    args = parser.parse_args(argv)
    source = Path(args.results)
    try:
        document = json.loads(source.read_text())
        written = write_plots(document, Path(args.out) if args.out else source.parent)
    except OSError as error:
        print(f"bench.plots: {source}: {error.strerror or error}", file=sys.stderr)
        return 1
    except (ValueError, PlotError) as error:
        print(f"bench.plots: {source}: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
