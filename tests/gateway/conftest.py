"""Fixtures for the gateway's building blocks: one migrated database for all gateway
tests, emptied before each test, and a way to run async test bodies with a pool.

No pytest-asyncio: each test calls `db(fn)`, which runs `fn(pool)` under `asyncio.run`
with a fresh pool on that loop (asyncpg pools belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from actors.ops.databases import create_database
from actors.ops.migrate import migrate

GATEWAY_TABLES = (
    "users.users, users.revoked_tokens, users.login_failures, "
    "gateway.idempotency_keys, gateway.rate_limits"
)

Db = Callable[[Callable[[asyncpg.Pool], Awaitable[Any]]], Any]


@pytest.fixture(scope="session")
def gateway_dsn(pg_dsn: str) -> str:
    async def setup() -> str:
        dsn = await create_database(pg_dsn, "lootify_gateway_test")
        await migrate(dsn)
        return dsn

    return asyncio.run(setup())


@pytest.fixture
def db(gateway_dsn: str) -> Db:
    """`db(fn)`: truncate the gateway tables, then run `fn(pool)` and return its result."""

    def run(fn: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            pool = await asyncpg.create_pool(gateway_dsn, min_size=1, max_size=25)
            try:
                async with pool.acquire() as c:
                    await c.execute(f"truncate {GATEWAY_TABLES}")
                return await fn(pool)
            finally:
                await pool.close()

        return asyncio.run(main())

    return run


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fixed signing secret, so no test writes one under the project's .data/."""
    secret = "test-secret-" + "x" * 40
    monkeypatch.setenv("LOOTIFY_JWT_SECRET", secret)
    yield secret


# The Serve app for the HTTP/WebSocket tests (session fixtures; see tests/serve_fixtures.py).
from tests.serve_fixtures import api, new_user, serve_url, users_pool  # noqa: E402, F401
