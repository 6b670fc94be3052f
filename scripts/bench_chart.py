"""The end-to-end benchmark's chart, from the JSON `scripts/bench_http.py` writes: the
Lootify HTTP hot run's bets/s and p99 at each number of connections (8, 64, 256), and
its CPU per accepted bet by process group (at the hot run's connections, 64).

    .venv/bin/python scripts/bench_chart.py                # the newest bench-results/http-*.json
    .venv/bin/python scripts/bench_chart.py bench-results/http-<time>.json

Writes the PNG next to the JSON (http-<time>.png) and copies it to docs/bench.png,
which README shows. bench_http.py calls `chart` at the end of every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on the benchmark machine

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"
DOCS_PNG = ROOT / "docs" / "bench.png"
WHOLE_MACHINE = "whole machine"
OUTSIDE = "outside the benchmark"
THROUGHPUT_COLOR, P99_COLOR, CPU_COLOR, OUTSIDE_COLOR = "#1f5f99", "#c8553d", "#3a7d44", "#9aa3ad"


class NoFigures(ValueError):
    """The JSON has no Lootify HTTP hot run to draw (that part failed or was skipped)."""


def curve(lootify: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP hot runs (`http_hot` and the `http_hot_c<N>` ones) with figures, by
    connections."""
    runs = [run for key, run in lootify.items()
            if (key == "http_hot" or key.startswith("http_hot_c"))
            and isinstance(run, dict) and "bets_per_s" in run]
    return sorted(runs, key=lambda run: run["concurrency"])


def _draw_curve(ax: Any, runs: list[dict[str, Any]]) -> None:
    conns = [run["concurrency"] for run in runs]
    rates, p99s = [run["bets_per_s"] for run in runs], [run["p99"] for run in runs]
    throughput_line = ax.plot(conns, rates, "o-", color=THROUGHPUT_COLOR, label="bets/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(conns, [str(c) for c in conns])
    ax.minorticks_off()
    ax.set_xlabel("connections")
    ax.set_ylabel("bets/s", color=THROUGHPUT_COLOR)
    # Different headroom on the two axes keeps the curves' labels apart.
    ax.set_ylim(0, max(rates) * 1.2)
    p99 = ax.twinx()
    p99_line = p99.plot(conns, p99s, "s--", color=P99_COLOR, label="p99 ms")
    p99.set_ylabel("p99 ms", color=P99_COLOR)
    p99.set_ylim(0, max(p99s) * 1.5)
    ax.legend(handles=throughput_line + p99_line, loc="upper left", fontsize=8)
    for run in runs:
        ax.annotate(f"{run['bets_per_s']:,.0f}", (run["concurrency"], run["bets_per_s"]),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8,
                    color=THROUGHPUT_COLOR)
        p99.annotate(f"{run['p99']:,.0f}", (run["concurrency"], run["p99"]),
                     textcoords="offset points", xytext=(0, -13), ha="center", fontsize=8,
                     color=P99_COLOR)
    ax.set_title("Bets/s and p99 by connections\nHTTP, 95% of bets on one market")


def _draw_cpu(ax: Any, hot: dict[str, Any]) -> None:
    ms = {group: value for group, value in hot["cpu_ms_per_bet"].items()
          if group != WHOLE_MACHINE}
    groups = sorted(ms, key=lambda group: (group == OUTSIDE, -ms[group]))[::-1]
    bars = ax.barh(groups, [ms[g] for g in groups],
                   color=[OUTSIDE_COLOR if g == OUTSIDE else CPU_COLOR for g in groups])
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("CPU ms per accepted bet")
    ax.margins(x=0.15)
    ax.set_title(f"CPU per accepted bet by process group\nHTTP hot, {hot['concurrency']} "
                 f"connections; whole machine {hot['cpu_ms_per_bet'][WHOLE_MACHINE]:.2f} ms")


def draw(results: dict[str, Any], png: Path) -> None:
    runs = curve(results.get("lootify", {}))
    hot = results.get("lootify", {}).get("http_hot", {})
    if not runs:
        raise NoFigures("no Lootify HTTP hot run with figures in this JSON")
    with_cpu = WHOLE_MACHINE in hot.get("cpu_ms_per_bet", {})
    fig, axes = plt.subplots(1, 2 if with_cpu else 1, figsize=(13 if with_cpu else 6.5, 4.6),
                             squeeze=False, layout="constrained")
    _draw_curve(axes[0][0], runs)
    if with_cpu:
        _draw_cpu(axes[0][1], hot)
    settings = results.get("settings", {})
    when = dt.datetime.fromisoformat(results["when"]).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"Lootify end to end, {when}: "
                 f"{settings.get('duration', '?')} s per run after "
                 f"{settings.get('warmup', '?')} s of warm-up, {results.get('cpus', '?')} cores "
                 "shared by servers, PostgreSQL and load generator", fontsize=10)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def chart(json_path: Path, docs_png: Path = DOCS_PNG) -> Path:
    """Draw `json_path`'s figures into the PNG beside it and copy that to `docs_png`;
    returns the PNG's path. Raises NoFigures when there is nothing to draw."""
    png = json_path.with_suffix(".png")
    draw(json.loads(json_path.read_text()), png)
    docs_png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, docs_png)
    return png


def newest_results() -> Path:
    found = sorted(RESULTS_DIR.glob("http-*.json"))  # the names sort by time
    if not found:
        raise SystemExit(f"no http-*.json in {RESULTS_DIR}: run `make bench` first")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", type=Path, help="default: the newest in bench-results/")
    args = ap.parse_args(argv)
    json_path = args.json or newest_results()
    try:
        png = chart(json_path)
    except NoFigures as exc:
        print(f"{json_path}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {png} and {DOCS_PNG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
