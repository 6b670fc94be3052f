"""PostgreSQL hung (its processes stopped, as a network partition looks) under the real
Serve app: `/health` says so within a second, money requests answer 503 `unavailable`
within five, and once PostgreSQL is back a retry with the same Idempotency-Key learns
the one true outcome."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from actors.ops import pgserver
from gateway import idempotency
from tests.polling import sigstop, wait_until

pytestmark = pytest.mark.cluster


@contextmanager
def postgres_stopped(data_dir: Path) -> Iterator[None]:
    """SIGSTOP the postmaster and every backend; SIGCONT them on the way out."""
    pid = pgserver.pid(data_dir)
    assert pid is not None, "the embedded PostgreSQL is not running"
    postmaster = psutil.Process(pid)
    processes = [postmaster, *postmaster.children(recursive=True)]
    for proc in processes:
        sigstop(proc.pid)
    try:
        yield
    finally:
        for proc in processes:
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_money_and_health_answer_in_bounded_time_while_postgres_hangs(
        api: httpx.Client, new_user, pg_data_dir: Path | None) -> None:
    if pg_data_dir is None:
        pytest.skip("DATABASE_URL names a server this test may not stop")
    u = new_user()
    assert api.post("/api/wallet/deposit", json={"amount": "10.00"},
                    headers=u.headers).status_code == 200
    key = {**u.headers, "Idempotency-Key": "deposit-during-the-hang"}
    with postgres_stopped(pg_data_dir):
        health, health_s = _timed(lambda: api.get("/health"))
        deposit, deposit_s = _timed(lambda: api.post(
            "/api/wallet/deposit", json={"amount": "1.00"}, headers=key))
    assert health_s < 1.0, health_s
    assert health.json()["status"] in ("degraded", "unhealthy"), health.text
    assert health.json()["checks"]["postgres"]["status"] == "error"
    assert deposit_s < 5.0, deposit_s
    assert deposit.status_code == 503, deposit.text
    assert deposit.json()["error"]["code"] == "unavailable"

    answers: list[str] = []

    def retried() -> httpx.Response | None:
        r = api.post("/api/wallet/deposit", json={"amount": "1.00"}, headers=key)
        answers.append(f"{r.status_code} {r.text[:120]}")
        return r if r.status_code == 200 else None

    # The first attempt may or may not have reached the wallet; the retry tells which,
    # and either way the deposit is made once. How soon is issue 14's first item, not
    # this test's: an idempotency row the hang left `in_progress` is taken over only
    # after its lease.
    try:
        answer = wait_until(retried, timeout=idempotency.LEASE_S + 15, interval=0.5,
                            what="the retried deposit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it answered {answers[:3]} ... {answers[-3:]}") from None
    assert answer.json()["balance"] == "11.00"
    wait_until(lambda: api.get("/health").json()["status"] == "healthy", timeout=30,
               what="health after PostgreSQL came back")
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "11.00"
