"""The round scheduler: opens, locks and settles recurring pool rounds, and voids a
round nobody resolved within the grace period."""

import time
import uuid
from datetime import UTC, datetime

import asyncpg
import ray

from actors.markets.series import RoundScheduler


def poll(check, deadline_s=20.0, step=0.1):
    deadline = time.time() + deadline_s
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(step)


def test_rounds_open_lock_settle_and_void(lootify, run, settings, database_url):
    event = lootify.create_event("BTC up or down", "crypto", datetime.now(UTC))
    series = lootify.create_round_series(
        event["id"], "BTC", [{"key": "up", "name": "Up"}, {"key": "down", "name": "Down"}],
        takeout="0.10", starts_at=datetime.now(UTC), period_s=10, open_s=5, grace_s=2)
    sched = RoundScheduler.remote(database_url, settings, 0.1)
    try:
        ray.get(sched.start.remote())
        first = poll(lambda: lootify.rounds(series))[0]
        assert first["round_no"] == 0 and first["status"] == "open"
        alice, bob = uuid.uuid4(), uuid.uuid4()
        for user in (alice, bob):
            lootify.wallet(user).deposit(10_000, reference_id="d")
        lootify.place_bet(alice, first["market_id"], "up", 1_000)
        lootify.place_bet(bob, first["market_id"], "down", 3_000)

        # Locked on time: betting refused, then settled from the posted result.
        poll(lambda: lootify.rounds(series)[0]["status"] == "locked")
        assert lootify.market(first["market_id"]).state()["status"] == "closed"
        lootify.post_round_result(series, 0, "up")
        poll(lambda: lootify.rounds(series)[0]["status"] == "settled")
        # Pool 4,000 less 10% takeout = 3,600, all to alice's 1,000 on "up".
        poll(lambda: lootify.wallet(alice).balance().balance == 10_000 - 1_000 + 3_600)
        assert lootify.wallet(bob).balance().balance == 7_000

        # Round 1 gets no result: voided after the grace period, stakes refunded.
        second = poll(lambda: [r for r in lootify.rounds(series) if r["round_no"] == 1])[0]
        lootify.place_bet(bob, second["market_id"], "up", 500)
        assert lootify.wallet(bob).balance().balance == 6_500
        poll(lambda: lootify.rounds(series)[1]["status"] == "void", deadline_s=30)
        poll(lambda: lootify.wallet(bob).balance().balance == 7_000)
    finally:
        ray.kill(sched)

    async def results():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch("select status from bets.rounds where series_id = $1", series)
        finally:
            await conn.close()

    assert {"settled", "void"} <= {r["status"] for r in run(results())}
