"""`lootify raffle ...` and `lootify lottery draw`, run as operators run them: separate
processes joining the session's cluster; players buy their tickets over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import ray

from tests.polling import wait_until

pytestmark = pytest.mark.cluster


def lootify(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "LOOTIFY_NAMESPACE": settings.namespace}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _market(api: httpx.Client, event_id: str, market_id: str) -> dict:
    event = api.get(f"/api/events/{event_id}").json()["event"]
    return next(m for m in event["markets"] if m["id"] == market_id)


@pytest.mark.timeout(300)
def test_raffles_run_from_the_command_line(api: httpx.Client, new_user, settings) -> None:
    op = new_user("operator")
    starts_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    event = api.post("/api/events", json={"name": "Rifa", "category": "raffle",
                                          "starts_at": starts_at},
                     headers=op.headers).json()["event"]
    lottery = f"federal-{uuid.uuid4().hex[:6]}"
    terms = ["--tickets", "100", "--ticket-price", "5.00", "--prize", "300.00"]

    done = lootify(settings, "raffle", "create", "--event", event["id"], "--name", "Rifa A",
                   *terms)
    assert done.returncode == 0, done.stderr
    by_hand = json.loads(done.stdout)["market"]
    assert (by_hand["tickets"], by_hand["ticket_price"], by_hand["sold"]) == (100, "5.00", 0)
    closes_at = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    done = lootify(settings, "raffle", "create", "--event", event["id"], "--name", "Rifa B",
                   *terms, "--lottery", lottery, "--closes-at", closes_at)
    assert done.returncode == 0, done.stderr
    by_lottery = json.loads(done.stdout)["market"]
    assert by_lottery["lottery"] == lottery

    player = new_user()
    api.post("/api/wallet/deposit", json={"amount": "10.00"}, headers=player.headers)
    for market in (by_hand, by_lottery):
        r = api.post("/api/bets", json={"market_id": market["id"], "selection": "42",
                                        "amount": "5.00"}, headers=player.headers)
        assert r.status_code == 201, r.text

    assert api.post(f"/api/markets/{by_hand['id']}/close", headers=op.headers).status_code == 200
    done = lootify(settings, "raffle", "settle", by_hand["id"], "--draw", "1242")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["market"]["status"] == "settled"

    wait_until(lambda: _market(api, event["id"], by_lottery["id"])["status"] == "closed",
               timeout=30, what="the lottery's raffle to close")
    done = lootify(settings, "lottery", "draw", lottery, "--draw", "77742")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: _market(api, event["id"], by_lottery["id"])["status"] == "settled",
               timeout=15, what="the posted draw to settle the raffle")
    wait_until(lambda: api.get("/api/wallet/balance", headers=player.headers)
               .json()["balance"] == "600.00", timeout=10, what="both prizes paid")

    done = lootify(settings, "raffle", "create", "--event", event["id"], "--name", "Bad",
                   "--tickets", "100", "--ticket-price", "five", "--prize", "300.00")
    assert done.returncode == 1 and "invalid_input" in done.stderr, done.stderr
