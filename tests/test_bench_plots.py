"""bench/plots.py draws the three PNGs from a results JSON, on its own and from `python -m bench.plots`."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from bench import plots  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def small_results() -> dict:
    def row(path, tcp, udp, flood, fw_us, rest_us, median):
        return {"path": path, "tcp_gbit": tcp, "udp_pps": udp, "udp_flood_pps": flood,
                "udp_cpu": {"firewall_us_per_packet": fw_us, "other_us_per_packet": rest_us},
                "ping": {"median_ms": median, "p99_ms": median * 2, "lost": 0}}

    paths = {"kernel forwarding": row("kernel forwarding", 13.0, 199_000, 199_000, 0.0, 4.0, 0.05),
             "bare loop GSO": row("bare loop GSO", 9.0, 120_000, 140_000, 7.5, 6.5, 0.15),
             "fw run": row("fw run", 10.0, 125_000, 105_000, 6.9, 6.0, 0.28),
             "fw run, virtual server": row("fw run, virtual server", 7.0, 90_000, 80_000, 9.1, 6.2, 0.3),
             "fw run --offload": {"path": "fw run --offload", "error": "iperf3 failed"}}
    return {"python": "3.11", "machine": "x86_64", "results": [], "ratios": {}, "live_skipped": None,
            "live": {"seconds_per_run": 3.0, "runs": 3, "cpus": 2, "paths": paths, "ratios": {},
                     "latency_added": {}}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_three_plots_are_written(tmp_path: Path) -> None:
    written = plots.write_plots(small_results(), tmp_path / "out")
    assert [p.name for p in written] == list(plots.FILES)
    for path in written:
        width, height = png_size(path)
        assert width >= 600 and height >= 300 and path.stat().st_size > 10_000


def test_the_command_plots_an_existing_results_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(small_results()))
    done = subprocess.run([sys.executable, "-m", "bench.plots", str(results)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(plots.FILES)
    assert done.stdout.count("written: ") == 3


def test_results_without_a_live_part_say_so(tmp_path: Path) -> None:
    offline = {**small_results(), "live": None, "live_skipped": "--offline"}
    with pytest.raises(plots.PlotError, match=r"no live figures to plot \(live part skipped: --offline\)"):
        plots.write_plots(offline, tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(offline))
    done = subprocess.run([sys.executable, "-m", "bench.plots", str(results)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "no live figures" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.png"))


def test_the_latency_plot_falls_back_to_the_latency_added(tmp_path: Path) -> None:
    document = json.loads((ROOT / "docs" / "figures" / "bench-run3.json").read_text())
    assert plots.plot_latency(plots._pyplot(), document, tmp_path).name == "latency.png"
