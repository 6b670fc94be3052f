"""`lootify withdrawals ...`: the withdrawal queue from the command line. It needs the
database only: an approved withdrawal is paid out by the replicas' payout loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from actors.errors import NotFound
from actors.settings import service_dsn

from .payments import store

T = TypeVar("T")
DB_TIMEOUT_S = 10.0


def _with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def main() -> T:
        pool = await asyncpg.create_pool(service_dsn("gateway"), min_size=1, max_size=1,
                                         timeout=DB_TIMEOUT_S, command_timeout=DB_TIMEOUT_S)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def queue(status: str | None, limit: int) -> list[dict[str, Any]]:
    async def work(pool: asyncpg.Pool) -> list[dict[str, Any]]:
        return [store.view(r) for r in await store.list_withdrawals(pool, status, limit)]

    return _with_pool(work)


def approve(withdrawal_id: str) -> dict[str, Any]:
    try:
        canonical = str(uuid.UUID(withdrawal_id))
    except ValueError:
        raise NotFound("no such withdrawal") from None

    async def work(pool: asyncpg.Pool) -> dict[str, Any]:
        return store.view(await store.approve(pool, canonical, "cli"))

    return _with_pool(work)
