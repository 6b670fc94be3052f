"""`scripts/bench_chart.py`: the chart `make bench` draws from bench_http.py's JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.image
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_chart  # noqa: E402


def run(concurrency: int, bets_per_s: float, p99: float, **extra: object) -> dict:
    return {"concurrency": concurrency, "bets_per_s": bets_per_s, "p99": p99, **extra}


RESULTS = {
    "when": "2026-12-01T15:07:07+00:00", "cpus": 2,
    "settings": {"duration": 15.0, "warmup": 3.0},
    "lootify": {
        "http_hot_c256": run(256, 190.0, 3262.0),
        "http_hot": run(64, 280.0, 484.0, cpu_ms_per_bet={
            "serve replica": 1.88, "wallet hosts": 1.40, "outside the benchmark": 0.5,
            "whole machine": 3.78}),
        "http_hot_c8": run(8, 138.0, 95.0),
        "http_spread": run(64, 231.0, 582.0),
        "http_hot_c64_failed": {"failed": "no figures"},
        "audit": {},
    },
}


def test_the_curve_is_the_hot_runs_by_connections() -> None:
    runs = bench_chart.curve(RESULTS["lootify"])
    assert [(r["concurrency"], r["bets_per_s"]) for r in runs] == [
        (8, 138.0), (64, 280.0), (256, 190.0)]


def test_chart_writes_the_png_beside_the_json_and_the_docs_copy(tmp_path: Path) -> None:
    source = tmp_path / "results" / "http-20261201T150707.json"
    source.parent.mkdir()
    source.write_text(json.dumps(RESULTS))
    docs = tmp_path / "docs" / "bench.png"

    png = bench_chart.chart(source, docs)

    assert png == source.with_suffix(".png")
    assert png.read_bytes() == docs.read_bytes()
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 1.5 * height  # both panels: the curve and the CPU per bet


def test_nothing_to_draw_without_a_hot_run(tmp_path: Path) -> None:
    source = tmp_path / "http-20261201T150707.json"
    source.write_text(json.dumps({**RESULTS, "lootify": {"error": "RayActorError()"}}))
    docs = tmp_path / "bench.png"
    with pytest.raises(bench_chart.NoFigures):
        bench_chart.chart(source, docs)
    assert not docs.exists()
