"""The shortened chaos run (issue 14): `scripts/chaos.py --minutes 2` builds a stack of
its own (PostgreSQL, a `ray.cluster_utils.Cluster`, Serve) in a process of its own,
so it never meets the session's Ray, injects every kind of fault at least once under
load, and audits. Its tables go to the test's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "chaos.py"
KINDS = {"wallet_host", "market_host", "pubsub", "coordinator", "serve_replica", "node",
         "pg_restart", "pg_hang"}
RUN_LIMIT_S = 1200


@pytest.mark.timeout(RUN_LIMIT_S + 180)
def test_two_minute_chaos_run_audits_clean(tmp_path: Path):
    report_path = tmp_path / "chaos.json"
    # Nothing of the session's cluster or database: the run makes its own.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOTIFY_", "RAY_")) and k != "DATABASE_URL"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--minutes", "2", "--json", str(report_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the run takes its stack down on SIGTERM
        out, err = proc.communicate(timeout=180)
        pytest.fail(f"the chaos run took over {RUN_LIMIT_S}s:\n{err[-4000:]}")
    print(out)
    assert report_path.exists(), err[-4000:]
    report = json.loads(report_path.read_text())
    assert {f["kind"] for f in report["faults"]} == KINDS
    unrecovered = [f for f in report["faults"] if f["recovery_s"] is None]
    assert not unrecovered, unrecovered
    problems = {check: r for check, r in report["audit"].items() if r["count"]}
    assert not problems, problems
    assert report["acked"]["bets"] > 0 and report["acked"]["deposits"] > 0
    assert proc.returncode == 0, err[-4000:]
