"""Events and markets that change status by themselves: live at the event's start,
closed at `closes_at`, finished once every market is settled or void, cancelled by an
operator; each change pushed on `event:<id>`, and a host killed at the moment of
closing closes the market once it is back."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from actors.errors import InvalidInput, MarketNotOpen
from actors.pubsub import Subscriber
from tests.polling import wait_until

pytestmark = pytest.mark.cluster

EVEN = [{"key": "home", "name": "Home", "odds": "2.00"}, {"key": "away", "name": "Away",
                                                          "odds": "2.00"}]


async def _await(awaitable):
    return await awaitable


def _subscribe(run, settings, topic: str) -> tuple[Subscriber, list]:
    pushed: list = []

    async def start() -> Subscriber:
        sub = Subscriber(settings.namespace)
        sub.start()
        await sub.subscribe(topic, lambda _t, name, payload: pushed.append((name, payload)))
        return sub

    return run(start()), pushed


def _funded(lootify, amount: int) -> str:
    user = str(uuid.uuid4())
    lootify.wallet(user).deposit(amount, reference_id="dep-0")
    return user


def _status(lootify, event_id: str) -> str:
    return lootify.get_event(event_id)["status"]


@pytest.mark.timeout(120)
def test_an_event_runs_itself_across_a_host_killed_at_closing(lootify, aio, run, settings):
    starts_at = datetime.now(UTC) + timedelta(seconds=4)
    event = lootify.create_event("Home x Away", "football", starts_at)
    sub, pushed = _subscribe(run, settings, f"event:{event['id']}")
    try:
        market = lootify.create_market(event["id"], "Winner", "fixed_odds", EVEN)
        in_play = lootify.create_market(event["id"], "Next goal", "fixed_odds", EVEN,
                                        in_play=True)
        assert abs(market["closes_at"] - starts_at) < timedelta(milliseconds=1)
        assert in_play["closes_at"] is None
        user = _funded(lootify, 10_000)
        bet = lootify.place_bet(user, market["id"], "home", 1_000, odds="2.00")
        assert _status(lootify, event["id"]) == "scheduled"

        # Kill the market host as the market falls due: it closes once Ray restarts it.
        handle = aio.routers["markets"].handles[0]
        pid = run(_await(handle.pid.remote()))
        wait_until(lambda: time.time() >= starts_at.timestamp() - 0.1, timeout=10,
                   what="the moment of closing")
        os.kill(pid, signal.SIGKILL)

        wait_until(lambda: lootify.market(market["id"]).state()["status"] == "closed",
                   timeout=60, what="the market to close by itself")
        wait_until(lambda: _status(lootify, event["id"]) == "live", timeout=10,
                   what="the event to go live")
        with pytest.raises(MarketNotOpen):
            lootify.place_bet(user, market["id"], "home", 1_000, odds="2.00")
        assert lootify.market(in_play["id"]).state()["status"] == "open"
        lootify.place_bet(user, in_play["id"], "away", 500, odds="2.00")

        lootify.market(market["id"]).settle("home")
        assert _status(lootify, event["id"]) == "live"  # the in-play market is still open
        lootify.market(in_play["id"]).close()
        lootify.market(in_play["id"]).settle("home")
        wait_until(lambda: _status(lootify, event["id"]) == "finished", timeout=10,
                   what="the event to finish")
        assert lootify.get_bet(user, bet["id"])["status"] == "won"

        expected = [
            ("status_changed", {"status": "live"}),
            ("status_changed", {"market_id": market["id"], "status": "closed"}),
            ("status_changed", {"market_id": market["id"], "status": "settled"}),
            ("status_changed", {"market_id": in_play["id"], "status": "closed"}),
            ("status_changed", {"market_id": in_play["id"], "status": "settled"}),
            ("status_changed", {"status": "finished"}),
        ]

        def statuses() -> list:
            return [
                (name, {k: p[k] for k in ("market_id", "status") if k in p})
                for name, p in pushed
                if name == "status_changed"
            ]

        wait_until(lambda: all(e in statuses() for e in expected), timeout=10,
                   what=f"every status change pushed: {expected} in {statuses()}")
    finally:
        run(sub.close())


def test_a_suspended_market_closes_at_its_time_and_a_past_one_is_refused(lootify):
    event = lootify.create_event("A x B", "football", datetime.now(UTC) + timedelta(days=1))
    closes_at = datetime.now(UTC) + timedelta(seconds=2)
    market = lootify.create_market(event["id"], "Winner", "fixed_odds", EVEN,
                                   closes_at=closes_at)
    lootify.market(market["id"]).suspend()
    wait_until(lambda: lootify.market(market["id"]).state()["status"] == "closed",
               timeout=15, what="the suspended market to close")
    assert _status(lootify, event["id"]) == "scheduled"
    with pytest.raises(InvalidInput):
        lootify.create_market(event["id"], "Late", "fixed_odds", EVEN,
                              closes_at=datetime.now(UTC) - timedelta(seconds=1))


def test_an_operator_cancels_an_event_and_its_stakes_come_back(lootify, run, settings):
    event = lootify.create_event("C x D", "football", datetime.now(UTC) + timedelta(days=1))
    sub, pushed = _subscribe(run, settings, f"event:{event['id']}")
    try:
        open_market = lootify.create_market(event["id"], "Winner", "fixed_odds", EVEN)
        settled = lootify.create_market(event["id"], "First half", "fixed_odds", EVEN)
        user = _funded(lootify, 10_000)
        lootify.place_bet(user, open_market["id"], "home", 2_000, odds="2.00")
        lootify.place_bet(user, settled["id"], "home", 1_000, odds="2.00")
        lootify.market(settled["id"]).close()
        lootify.market(settled["id"]).settle("away")

        cancelled = lootify.void_event(event["id"])
        assert cancelled["status"] == "cancelled"
        assert {m["id"]: m["status"] for m in cancelled["markets"]} == {
            open_market["id"]: "void", settled["id"]: "settled"}
        assert tuple(lootify.wallet(user).balance()) == (9_000, 9_000, 0)
        wait_until(lambda: ("status_changed", {"status": "cancelled"}) in pushed, timeout=10,
                   what="the cancellation pushed")
        assert lootify.void_event(event["id"])["status"] == "cancelled"  # idempotent
    finally:
        run(sub.close())


def test_an_event_with_an_active_series_is_not_finished_between_rounds(lootify):
    starts_at = datetime.now(UTC) + timedelta(seconds=2)
    with_series = lootify.create_event("BTC up or down", "crypto", starts_at)
    without = lootify.create_event("A x B", "football", starts_at)
    lootify.create_round_series(
        with_series["id"], "BTC", [{"key": "up", "name": "Up"}, {"key": "down", "name": "Down"}],
        takeout="0.10", starts_at=datetime.now(UTC) + timedelta(days=1), period_s=60, open_s=30,
        grace_s=10)
    for event in (with_series, without):
        market = lootify.create_market(event["id"], "Winner", "fixed_odds", EVEN, in_play=True)
        lootify.market(market["id"]).close()
        lootify.market(market["id"]).settle("home")
    # One statement sweeps both events: once the one without a series is finished, the
    # other was looked at too.
    wait_until(lambda: _status(lootify, without["id"]) == "finished", timeout=15,
               what="the event without a series to finish")
    assert _status(lootify, with_series["id"]) == "live"
