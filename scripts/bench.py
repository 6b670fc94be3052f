"""`make bench`: the runtime's figures, measured in one run on this machine.

Starts its own PostgreSQL (or uses DATABASE_URL) and a local Ray cluster, then
measures, through the client API (no HTTP):
  - wallet operations per second with batching on and off, p50/p99, durable in PG;
  - activation latency from PostgreSQL;
  - host RSS with 10k, 100k and 1M activated wallets (bytes per idle wallet);
  - bets per second on one hot market and on 1,000 markets, with the ledger audit;
  - settlement time of a market with 100,000 bets.
Prints a table and writes bench-results/runtime-<time>.json. Ratios matter more
than absolute figures on a noisy 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_stack import free_port, fresh_database  # noqa: E402

from actors.client import AsyncLootify, Settings  # noqa: E402
from actors.ops import pgserver  # noqa: E402
from actors.ops.audit import ledger_violations  # noqa: E402
from actors.runtime import RuntimeSettings, shard_of  # noqa: E402
from actors.settings import PROJECT_ROOT  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def timed_many(make, count: int, concurrency: int) -> tuple[float, list[float], int]:
    """Run `make(i)` for i in range(count), `concurrency` at a time; returns elapsed
    seconds, per-call latencies (ms) and the number of failures."""
    latencies: list[float] = []
    failures = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, failures
        while next_index < count:
            i = next_index
            next_index += 1
            t = time.perf_counter()
            try:
                await make(i)
            except Exception:
                failures += 1
            latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, failures


async def wallet_throughput(settings: Settings, results: dict) -> None:
    users = [str(uuid.uuid4()) for _ in range(1000)]
    for label, batching, count, concurrency in (
        ("unbatched", False, 3000, 64),
        ("batched", True, 60000, 4000),
    ):
        client = await AsyncLootify.create(batching=batching, kinds=("wallets",),
                                           settings=settings)
        run = uuid.uuid4().hex[:8]

        async def deposit(i: int, client=client, run=run) -> None:
            await client.wallet(users[i % len(users)]).deposit(100, f"b-{run}-{i}")

        # Warm up first (references after the timed ones): the first calls wait for
        # the hosts to start and the wallets to activate, which would otherwise be
        # timed as part of whichever measure runs first.
        await timed_many(lambda i, d=deposit, n=count: d(n + i), len(users), concurrency)
        elapsed, lat, failures = await timed_many(deposit, count, concurrency)
        results[f"wallet_ops_per_s_{label}"] = round(count / elapsed)
        results[f"wallet_p50_ms_{label}"] = round(percentile(lat, 50), 2)
        results[f"wallet_p99_ms_{label}"] = round(percentile(lat, 99), 2)
        results[f"wallet_failures_{label}"] = failures
    results["wallet_batching_speedup"] = round(
        results["wallet_ops_per_s_batched"] / results["wallet_ops_per_s_unbatched"], 1)


async def memory_and_activation(settings: Settings, dsn: str, results: dict,
                                sizes: list[int]) -> None:
    client = await AsyncLootify.create(kinds=("wallets",), settings=settings)
    router = client.routers["wallets"]
    for h in router.handles:
        await h.passivate_all.remote()
    base = sum(s["rss"] for s in await client.hosts())
    shards = settings.runtime.shards
    conn = await asyncpg.connect(dsn)
    ids: list[str] = []
    try:
        for size in sizes:
            fresh = [str(uuid.uuid4()) for _ in range(size - len(ids))]
            await conn.copy_records_to_table(
                "wallets", schema_name="wallets",
                columns=["user_id", "shard", "available", "reserved", "seq"],
                records=[(i, shard_of(i, shards), random.randint(1000, 10**7), 0, 1)
                         for i in fresh])
            ids.extend(fresh)
            start = time.perf_counter()
            for chunk in range(0, len(fresh), 20000):
                await asyncio.gather(*(client.wallet(i).balance()
                                       for i in fresh[chunk:chunk + 20000]))
            elapsed = time.perf_counter() - start
            stats = await client.hosts()
            rss = sum(s["rss"] for s in stats)
            active = sum(s["entities"] for s in stats)
            results[f"activation_per_s_{size}"] = round(len(fresh) / elapsed)
            results[f"host_rss_mb_{size}"] = round(rss / 2**20)
            results[f"bytes_per_wallet_{size}"] = round((rss - base) / active)
        # Activation latency of one cold wallet (one PG read inside a round).
        cold = [str(uuid.uuid4()) for _ in range(200)]
        lat = []
        for i in cold:
            t = time.perf_counter()
            await client.wallet(i).balance()
            lat.append((time.perf_counter() - t) * 1000)
        results["activation_latency_p50_ms"] = round(percentile(lat, 50), 2)
    finally:
        for h in router.handles:
            await h.passivate_all.remote()
        # The wallets made for this measure have no journal: remove them so the
        # ledger audit at the end judges only what went through the runtime.
        await conn.execute("delete from wallets.wallets where user_id = any($1::uuid[])", ids)
        # Vacuum and checkpoint now, so the next measures do not share the machine
        # with autovacuum or with writing out the million rows.
        await conn.execute("vacuum analyze wallets.wallets")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # an external server
            await conn.execute("checkpoint")
        await conn.close()


async def bets(settings: Settings, dsn: str, results: dict, settle_size: int) -> None:
    client = await AsyncLootify.create(settings=settings)
    users = [str(uuid.uuid4()) for _ in range(2000)]
    await asyncio.gather(*(client.wallet(u).deposit(10**9, "seed") for u in users))
    event = await client.create_event("Bench", "bench", datetime.now(UTC) + timedelta(days=1))

    async def market(kind: str = "fixed_odds") -> str:
        sel = [{"key": "home", "name": "Home", "odds": "1.90"},
               {"key": "away", "name": "Away", "odds": "1.90"}]
        made = await client.create_market(event["id"], "Winner", kind, sel, takeout="0.05",
                                          max_stake=10**8)
        return made["id"]

    hot = await market()
    many = await asyncio.gather(*(market() for _ in range(1000)))
    for label, markets in (("hot_market", [hot]), ("1000_markets", many)):
        count = 30000

        async def place(i: int, markets=markets) -> None:
            await client.place_bet(users[i % len(users)], markets[i % len(markets)],
                                   random.choice(("home", "away")), 100, accept_odds="any")

        # Warm up first (connections prepare their statements on first use), then time.
        await timed_many(place, 2000, 2000)
        elapsed, lat, failures = await timed_many(place, count, 2000)
        results[f"bets_per_s_{label}"] = round(count / elapsed)
        results[f"bets_p50_ms_{label}"] = round(percentile(lat, 50), 1)
        results[f"bets_p99_ms_{label}"] = round(percentile(lat, 99), 1)
        results[f"bets_failures_{label}"] = failures

    big = await market("pool")

    async def place_big(i: int) -> None:
        await client.place_bet(users[i % len(users)], big, random.choice(("home", "away")),
                               100 + i % 50, accept_odds="any")

    await timed_many(place_big, settle_size, 2000)
    m = client.market(big)
    await m.close()
    conn = await asyncpg.connect(dsn)
    try:  # settle a market at rest: every stake already bookkept as committed
        while await conn.fetchval(
            "select count(*) from bets.bets where market_id = $1 and stake = 'reserved'", big
        ):
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    start = time.perf_counter()
    await m.settle("home")
    results[f"settle_s_{settle_size}_bets"] = round(time.perf_counter() - start, 2)
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.time() + 120
        while await conn.fetchval(
                "select count(*) from bets.bets where stake = 'reserved' or payout_state = 'owed'"):
            if time.time() > deadline:
                break
            await asyncio.sleep(0.5)
        results["settled_bets"] = await conn.fetchval(
            "select count(*) from bets.bets where market_id = $1 and status in ('won', 'lost')",
            big)
        results["ledger_audit"] = await ledger_violations(conn) or "clean"
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    settle_size = 10_000 if args.quick else 100_000

    pg_dir = None
    base = os.environ.get("DATABASE_URL")
    if not base:
        pg_dir = Path(tempfile.mkdtemp(prefix="lootify-bench-pg-"))
        base = pgserver.start(pg_dir, port=free_port())
    try:
        dsn = asyncio.run(fresh_database(base, "lootify_bench"))
        os.environ["DATABASE_URL"] = dsn  # the clients below create hosts with it
        settings = Settings(
            runtime=RuntimeSettings(namespace=f"lootify-bench-{os.getpid()}", idle_seconds=3600)
        )
        ray.init(num_cpus=2, namespace=settings.namespace, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"DATABASE_URL": dsn}})
        results: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                         "cpus": os.cpu_count()}

        async def run_all() -> None:
            await wallet_throughput(settings, results)
            await memory_and_activation(settings, dsn, results, sizes)
            await bets(settings, dsn, results, settle_size)

        asyncio.run(run_all())
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if pg_dir is not None:
            pgserver.stop(pg_dir)
            shutil.rmtree(pg_dir, ignore_errors=True)  # a run writes over a gigabyte

    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    out = PROJECT_ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    path = out / f"runtime-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
