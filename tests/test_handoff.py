"""Shards moving between hosts on one node (issue 13): hand-off under load, fencing.

Real Ray, real PostgreSQL; the ledger audit runs after each test (conftest). Every
wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import ray

from actors.errors import LootifyError, Unavailable
from actors.runtime import coordinator_handle, shard_of
from actors.wallets import Balance
from gateway import cli
from tests.polling import sigstop, wait_until

pytestmark = pytest.mark.cluster


def coordinator(settings) -> Any:
    return coordinator_handle(settings.runtime)


def wait_scaled(settings, targets: dict[str, int], timeout: float = 90.0) -> dict:
    """Poll the coordinator until every kind of `targets` keeps that many hosts, all up,
    with shard counts that differ by at most one; its status then."""

    def done() -> dict | None:
        status = ray.get(coordinator(settings).status.remote(), timeout=30)
        for kind, hosts in targets.items():
            state = status["kinds"][kind]
            if state["target"] != hosts or not state["balanced"]:
                return None
            if not all(h["up"] for h in status["hosts"] if h["kind"] == kind):
                return None
        return status

    return wait_until(done, timeout=timeout, interval=0.2, what=f"hosts {targets}")


def activation_overlaps(sql) -> list:
    """(kind, shard, epoch) taken up by more than one host: must be none."""
    return sql(
        "select kind, shard, epoch, array_agg(distinct host) as hosts from runtime.activations "
        "group by kind, shard, epoch having count(distinct host) > 1"
    )


def test_stale_host_paused_through_a_handoff_cannot_commit(aio, run, sql, settings, database_url):
    """Host A starts a cycle for a deposit and is held before its commit's fencing check
    (its lease row locked, then the process SIGSTOPped); the coordinator moves the
    wallet's shard to host B (A does not let go in time, so the move goes on); A resumes:
    its commit is refused, nothing of its cycle is stored, and the deposit is applied
    exactly once, by B."""
    router = aio.routers["wallets"]
    uid = str(uuid.uuid4())
    source = router.host_of(uid)
    target = 1 - source
    shard = shard_of(uid, settings.runtime.shards)
    assert run(asyncio.wait_for(aio.wallet(uid).deposit(100, "first"), 30)) == Balance(
        100, 100, 0
    )
    handle = router.handles[source]
    pid = ray.get(handle.pid.remote(), timeout=30)
    fenced_before = ray.get(handle.stats.remote(), timeout=30)["fenced_cycles"]
    epoch_before = sql(
        "select epoch from runtime.shard_directory where kind = 'wallets' and shard = $1", shard
    )[0]["epoch"]

    async def hold_lease() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url)
        await conn.execute("begin")
        await conn.execute(
            "select 1 from runtime.host_leases where kind = 'wallets' and host = $1 for update",
            source,
        )
        return conn

    holder = run(hold_lease())
    stopped = False
    try:
        deposit = run(_start(aio.wallet(uid).deposit(250, "held")))
        wait_until(
            lambda: sql(
                "select 1 from pg_stat_activity where wait_event_type = 'Lock' "
                "and query like '%runtime.hold_epochs(%'"
            ),
            timeout=30,
            what="host A's cycle to wait at its fencing check",
        )
        sigstop(pid)
        stopped = True
        started = time.monotonic()
        ray.get(coordinator(settings).move.remote("wallets", [shard], target), timeout=60)
        moved_in = time.monotonic() - started
        run(holder.execute("rollback"))
        os.kill(pid, signal.SIGCONT)
        stopped = False
        assert run(_wait(deposit, 30)) == Balance(350, 350, 0)
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        run(holder.close())

    # The move waited out the hand-off time-out for the paused owner, no longer.
    assert moved_in < 2 * settings.runtime.handoff_timeout_s + 5
    assert ray.get(handle.stats.remote(), timeout=30)["fenced_cycles"] == fenced_before + 1
    assert router.host_of(uid) == target
    assert shard not in ray.get(handle.shards.remote(), timeout=30)
    row = sql(
        "select host, epoch from runtime.shard_directory where kind = 'wallets' and shard = $1",
        shard,
    )[0]
    assert (row["host"], row["epoch"]) == (target, epoch_before + 1)
    ops = Counter(
        r["reference_id"]
        for r in sql("select reference_id from wallets.operations where wallet_id = $1", uid)
    )
    assert ops == {"first": 1, "held": 1}
    assert sql("select available from wallets.wallets where user_id = $1", uid)[0][0] == 350
    assert activation_overlaps(sql) == []
    ray.get(coordinator(settings).move.remote("wallets", [shard], source), timeout=60)


async def _start(awaitable: Any) -> asyncio.Future:
    """Schedule `awaitable` on the client's loop and hand back its future unawaited."""
    return asyncio.ensure_future(awaitable)


USERS = 40
STAKE = 100


def test_lootify_scale_out_and_back_in_under_load_loses_and_duplicates_nothing(
    aio, lootify, run, sql, settings, monkeypatch, capsys
):
    """`lootify scale`: wallets 2 -> 4 -> 2 hosts and markets 1 -> 2 -> 1 while deposits
    and bets keep coming; `lootify status --json` shows the hosts. Every acknowledged
    operation is stored exactly once, no shard was held by two hosts in one epoch."""
    monkeypatch.setenv("LOOTIFY_NAMESPACE", settings.namespace)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    event = lootify.create_event("Home x Away", "football", tomorrow)
    markets = [
        lootify.create_market(
            event["id"], f"Winner {i}", "fixed_odds",
            [{"key": "home", "name": "Home", "odds": "2.00"},
             {"key": "away", "name": "Away", "odds": "2.00"}],
        )["id"]
        for i in range(4)
    ]
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    for user in users:
        lootify.wallet(user).deposit(1_000_000, reference_id="seed")

    stop = asyncio.Event()
    deposits: dict[str, tuple[str, int]] = {}
    bets: dict[str, tuple[str, str]] = {}
    acked_deposits: set[str] = set()
    acked_bets: set[str] = set()
    failures: Counter[str] = Counter()
    messages: set[str] = set()

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            user = users[(n * 7 + i) % USERS]
            try:
                if i % 2:
                    ref = f"dep-{n}-{i}"
                    deposits[ref] = (user, 10)
                    await asyncio.wait_for(aio.wallet(user).deposit(10, ref), 60)
                    acked_deposits.add(ref)
                else:
                    bet_id = str(uuid.uuid4())
                    market = markets[i % len(markets)]
                    bets[bet_id] = (user, market)
                    await asyncio.wait_for(
                        aio.place_bet(user, market, "home", STAKE, accept_odds="any",
                                      bet_id=bet_id), 60)
                    acked_bets.add(bet_id)
            except LootifyError as exc:
                failures[type(exc).__name__] += 1
                messages.add(f"{type(exc).__name__}: {exc.message[:80]}")

    async def load_all() -> None:
        await asyncio.gather(*(worker(n) for n in range(16)))

    load = run(_start(load_all()))
    try:
        wait_until(lambda: len(acked_bets) > 50, timeout=30, what="the load to run")
        assert cli.main(["scale", "--wallet-hosts", "4", "--market-hosts", "2"]) == 0
        grown = wait_scaled(settings, {"wallets": 4, "markets": 2})
        capsys.readouterr()
        assert cli.main(["status", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        at_four = len(acked_deposits) + len(acked_bets)
        assert cli.main(["scale", "--wallet-hosts", "2", "--market-hosts", "1"]) == 0
        assert "done in" in capsys.readouterr().out
        wait_scaled(settings, {"wallets": 2, "markets": 1})
        wait_until(lambda: len(acked_deposits) + len(acked_bets) > at_four + 100, timeout=30,
                   what="the load to go on after scaling in")
    finally:
        run(_set(stop))
        run(_wait(load, 90))
        for router in aio.routers.values():
            run(router.refresh())

    shards = Counter(h["kind"] for h in grown["hosts"] if h["shards"])
    assert shards == {"wallets": 4, "markets": 2}
    assert {(h["kind"], h["index"]) for h in shown["hosts"]} == {
        ("wallets", 0), ("wallets", 1), ("wallets", 2), ("wallets", 3),
        ("markets", 0), ("markets", 1)}
    assert all({"kind", "index", "node", "shards", "entities"} <= set(h) for h in shown["hosts"])
    assert sum(h["shards"] for h in shown["hosts"] if h["kind"] == "wallets") == 256
    assert any(n["alive"] for n in shown["nodes"]) and set(shown["epoch"]) == {
        "wallets", "markets"}
    assert set(failures) <= {Unavailable.__name__}, messages
    assert acked_deposits and acked_bets

    stored_deposits = Counter(r["reference_id"] for r in sql(
        "select reference_id from wallets.operations where kind = 'deposit' "
        "and reference_id like 'dep-%'"))
    assert set(acked_deposits) <= set(stored_deposits)
    assert set(stored_deposits.values()) == {1}
    wait_until(lambda: not sql("select 1 from bets.bets where stake = 'reserved'"), timeout=60,
               what="every accepted bet's stake to be committed")
    stored_bets = {r["id"]: r for r in sql(
        "select id::text, user_id::text, market_id::text, status, stake from bets.bets")}
    assert set(acked_bets) <= set(stored_bets)
    assert all(stored_bets[b]["stake"] == "committed" for b in acked_bets)
    stakes = Counter(r["reference_id"] for r in sql(
        "select reference_id from wallets.operations where kind = 'stake'"))
    assert all(stakes[f"bet:{b}"] == 1 for b in acked_bets)
    assert activation_overlaps(sql) == []
    assert [len(router.handles) for router in aio.routers.values()] == [2, 1]


async def _wait(future: asyncio.Future, timeout: float) -> Any:
    return await asyncio.wait_for(future, timeout)


async def _set(event: asyncio.Event) -> None:
    event.set()
