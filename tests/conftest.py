"""One PostgreSQL and one Ray cluster per test session; clean state per test.

Every test that touches the runtime ends with the ledger audit: money is conserved
whatever the test did.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator

import asyncpg
import pytest
import ray

import serve_app
from actors.client import AsyncLootify, LoopThread, Lootify, Settings
from actors.markets import MarketSettings
from actors.ops.audit import ledger_violations
from actors.ops.databases import create_database
from actors.ops.migrate import migrate
from actors.runtime import RuntimeSettings
from actors.wallets import WalletSettings
from tests.pg_fixtures import fetch_rows, pg_data_dir, pg_dsn  # noqa: F401

TABLES = (
    "bets.lottery_draws, bets.round_results, bets.rounds, bets.round_series, "
    "wallets.wallets, wallets.operations, wallets.entries, wallets.pending, wallets.open_stakes, "
    "bets.refused_bets, bets.bets, bets.markets, bets.events, "
    "gateway.deposits, gateway.withdrawals, gateway.webhook_events"
)


@pytest.fixture(scope="session")
def database_url(pg_dsn: str) -> Iterator[str]:  # noqa: F811
    dsn = asyncio.run(create_database(pg_dsn, "lootify_test"))
    asyncio.run(migrate(dsn))
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = dsn
    yield dsn
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous


@pytest.fixture(scope="session")
def settings() -> Settings:
    # Short idle and reservation times so passivation and expiry show within a test,
    # and a short hand-off time-out so a paused host is moved from within one.
    return Settings(
        runtime=RuntimeSettings(
            namespace=f"lootify-test-{os.getpid()}", idle_seconds=2.0, handoff_timeout_s=2.0
        ),
        markets=MarketSettings(open_stake_timeout_s=15.0),
        # Two, so that every test also routes across hosts.
        wallets=WalletSettings(hosts=2),
    )


@pytest.fixture(scope="session")
def ray_cluster(database_url: str, settings: Settings) -> Iterator[None]:
    ray.init(
        # A cluster of our own, never another one running on the machine (ray.init
        # would otherwise join the latest one it finds under /tmp/ray).
        address="local",
        num_cpus=2,
        namespace=settings.namespace,
        include_dashboard=False,
        log_to_driver=False,
        # Serve's HTTP proxy inherits it: see serve_app.UVICORN_TRUSTED_PROXIES.
        runtime_env={"env_vars": {"DATABASE_URL": database_url,
                                  serve_app.UVICORN_TRUSTED_PROXIES: ""}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def client_env(ray_cluster: None, database_url: str, settings: Settings) -> dict[str, str]:
    """The environment a separate process (the CLI, a notebook's kernel) needs to join
    the session's cluster as `actors.connect()` does."""
    return {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "DATABASE_URL": database_url,
        "LOOTIFY_NAMESPACE": settings.namespace,
        "LOOTIFY_IDLE_SECONDS": str(settings.runtime.idle_seconds),
        "LOOTIFY_SHARDS": str(settings.runtime.shards),
    }


@pytest.fixture(scope="session")
def loop_thread() -> LoopThread:
    return LoopThread()


@pytest.fixture(scope="session")
def aio(ray_cluster: None, loop_thread: LoopThread, settings: Settings) -> AsyncLootify:
    """The async client, living on `loop_thread` (run its coroutines with `run`)."""
    return loop_thread.run(AsyncLootify.create(settings=settings))


@pytest.fixture(scope="session")
def lootify(aio: AsyncLootify, loop_thread: LoopThread) -> Lootify:
    """The blocking client, as a notebook sees it."""
    return Lootify(aio, loop_thread)


@pytest.fixture
def sql(run, database_url: str):
    """`sql(query, *args)`: the rows of one statement against the test database."""
    return functools.partial(fetch_rows, run, database_url)


@pytest.fixture
def run(loop_thread: LoopThread):
    """Run a coroutine on the client's loop and wait for it."""
    return loop_thread.run


@pytest.fixture(autouse=True)
def clean_ledger(request: pytest.FixtureRequest) -> Iterator[None]:
    """Clean tables and host memory before a runtime test; audit the ledger after it."""
    if "aio" not in request.fixturenames:
        yield
        return
    aio: AsyncLootify = request.getfixturevalue("aio")
    dsn: str = request.getfixturevalue("database_url")
    loop_thread: LoopThread = request.getfixturevalue("loop_thread")

    async def reset() -> None:
        for router in aio.routers.values():
            await asyncio.gather(*(h.reset.remote() for h in router.handles))
        conn = await asyncpg.connect(dsn)
        try:
            # The hosts' housekeeping reads these tables every second; a truncate that
            # meets one of its statements half-way may be chosen as a deadlock's victim.
            for attempt in range(5):
                try:
                    await conn.execute(f"truncate {TABLES}")
                    break
                except asyncpg.DeadlockDetectedError:
                    if attempt == 4:
                        raise
        finally:
            await conn.close()

    async def audit() -> dict[str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            return await ledger_violations(conn)
        finally:
            await conn.close()

    loop_thread.run(reset())
    yield
    assert loop_thread.run(audit()) == {}, "ledger audit failed"
