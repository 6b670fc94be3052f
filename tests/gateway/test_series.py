"""Recurring rounds over HTTP, run by the scheduler the session starts beside the
gateway (as `make up` does): a daily schedule whose time of day is a few seconds away."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from actors.markets.oracles import sandbox_winner
from tests.polling import wait_until

pytestmark = pytest.mark.cluster
ZONE = "America/Sao_Paulo"
UP_DOWN = [{"key": "up", "name": "Up"}, {"key": "down", "name": "Down"}]


def _player(api: httpx.Client, new_user, amount: str = "100.00"):
    user = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": amount}, headers=user.headers)
    assert r.status_code == 200, r.text
    return user


def _series(api: httpx.Client, operator, lock_in_s: float, **extra) -> tuple[dict, float]:
    """A new series whose first round locks `lock_in_s` seconds from now, and that time."""
    r = api.post("/api/events", headers=operator.headers, json={
        "name": "BTC up or down", "category": "crypto",
        "starts_at": datetime.now(UTC).isoformat()})
    assert r.status_code == 201, r.text
    lock = datetime.now(ZoneInfo(ZONE)).replace(microsecond=0) + timedelta(seconds=lock_in_s)
    body = {"event_id": r.json()["event"]["id"], "name": "BTC", "selections": UP_DOWN,
            "takeout": "0.10", "time_of_day": lock.time().isoformat(), "timezone": ZONE,
            "grace_s": 30, **extra}
    r = api.post("/api/series", headers=operator.headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()["series"], lock.timestamp()


def _round(api: httpx.Client, operator, series_id: str, round_no: int = 0) -> dict | None:
    r = api.get(f"/api/series/{series_id}", headers=operator.headers)
    assert r.status_code == 200, r.text
    rounds = [x for x in r.json()["series"]["rounds"] if x["round_no"] == round_no]
    return rounds[0] if rounds else None


def _round_status(api, operator, series_id: str) -> str | None:
    found = _round(api, operator, series_id)
    return None if found is None else found["status"]


def _bet(api: httpx.Client, user, market_id: str, selection: str, amount: str) -> httpx.Response:
    return api.post("/api/bets", headers=user.headers,
                    json={"market_id": market_id, "selection": selection, "amount": amount})


def _balance(api: httpx.Client, user) -> str:
    return api.get("/api/wallet/balance", headers=user.headers).json()["balance"]


def test_a_series_opens_locks_and_settles_a_round_on_its_schedule(api, new_user) -> None:
    operator, alice, bob = new_user("operator"), _player(api, new_user), _player(api, new_user)
    series, lock_ts = _series(api, operator, 6, settle_delay_s=2, oracle="sandbox")
    assert (series["status"], series["timezone"], series["oracle"]) == ("active", ZONE, "sandbox")
    health = api.get("/health").json()
    assert health["checks"]["rounds_scheduler"]["status"] == "ok", health

    first = wait_until(lambda: _round(api, operator, series["id"]), timeout=10,
                       what="round 0 opened")
    assert first["status"] == "open"
    assert datetime.fromisoformat(first["locks_at"]).timestamp() == lock_ts
    assert _bet(api, alice, first["market_id"], "up", "10.00").status_code == 201
    assert _bet(api, bob, first["market_id"], "down", "30.00").status_code == 201

    wait_until(lambda: _round_status(api, operator, series["id"]) == "locked", timeout=15,
               what="round 0 locked")
    assert time.time() >= lock_ts - 0.5
    late = _bet(api, alice, first["market_id"], "up", "1.00")
    assert late.status_code == 409 and late.json()["error"]["code"] == "market_not_open"

    wait_until(lambda: _round_status(api, operator, series["id"]) == "settled", timeout=15,
               what="round 0 settled by the sandbox oracle")
    assert time.time() >= lock_ts + 2 - 0.5  # not before its settlement delay
    winner = sandbox_winner(series["id"], 0, ["up", "down"])
    # The pool, 40.00 less 10%, goes to the one who backed the winner.
    expected = {"up": ("126.00", "70.00"), "down": ("90.00", "106.00")}[winner]
    assert (_balance(api, alice), _balance(api, bob)) == expected

    stopped = api.post(f"/api/series/{series['id']}/stop", headers=operator.headers)
    assert stopped.status_code == 200 and stopped.json()["series"]["status"] == "stopped"
    listed = api.get("/api/series", headers=operator.headers).json()["series"]
    assert [s["status"] for s in listed if s["id"] == series["id"]] == ["stopped"]
    assert api.get("/api/series", headers=alice.headers).status_code == 403


def test_an_operators_result_settles_and_no_result_voids_with_refunds(api, new_user) -> None:
    operator, alice, bob = new_user("operator"), _player(api, new_user), _player(api, new_user)
    posted, _ = _series(api, operator, 4, grace_s=30)
    silent, _ = _series(api, operator, 4, grace_s=2)
    markets = {}
    for s in (posted, silent):
        markets[s["id"]] = wait_until(lambda s=s: _round(api, operator, s["id"]),
                                      timeout=10, what="round 0 opened")["market_id"]
        assert _bet(api, alice, markets[s["id"]], "up", "10.00").status_code == 201
        assert _bet(api, bob, markets[s["id"]], "down", "10.00").status_code == 201

    r = api.post(f"/api/series/{posted['id']}/rounds/0/result", headers=operator.headers,
                 json={"winner": "down"})
    assert r.status_code == 200, r.text
    wait_until(lambda: _round_status(api, operator, posted["id"]) == "settled", timeout=15,
               what="the posted result settled round 0")
    wait_until(lambda: _round_status(api, operator, silent["id"]) == "void", timeout=15,
               what="round 0 without a result voided")
    # alice: -10 lost, refunded 10; bob: won 18.00 (20 less 10%), refunded 10.
    assert (_balance(api, alice), _balance(api, bob)) == ("90.00", "108.00")


def test_series_from_the_cli(api, new_user, client_env) -> None:
    operator = new_user("operator")
    series, _ = _series(api, operator, 3600)

    def cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "series", *args],
                              env=client_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert series["id"] in [s["id"] for s in cli("list")["series"]]
    assert cli("stop", series["id"])["series"]["status"] == "stopped"
    created = cli("create", "--event", series["event_id"], "--name", "Daily", "--time", "16:00",
                  "--timezone", "America/New_York", "--settle-delay-s", "300")["series"]
    assert (created["time_of_day"], created["settle_delay_s"]) == ("16:00:00", 300)
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "series", "create", "--event",
                          series["event_id"], "--name", "X", "--time", "16:00",
                          "--timezone", "Mars/Olympus"],
                         env=client_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "invalid_input" in bad.stderr
    assert uuid.UUID(created["id"])
