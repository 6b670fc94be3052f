"""The durable shard directory (`runtime.shard_directory`): which host of a kind
owns each logical shard."""

from __future__ import annotations

import asyncpg


def host_name(kind: str, index: int) -> str:
    return f"{kind}-host-{index}"


async def ensure_directory(conn: asyncpg.Connection, kind: str, shards: int, hosts: int) -> None:
    await conn.execute(
        "insert into runtime.shard_directory (kind, shard, host) "
        "select $1, s, s % $3 from generate_series(0, $2 - 1) s "
        "on conflict do nothing",
        kind,
        shards,
        hosts,
    )


async def read_directory(conn: asyncpg.Connection, kind: str) -> list[int]:
    rows = await conn.fetch(
        "select shard, host from runtime.shard_directory where kind = $1 order by shard", kind
    )
    return [r["host"] for r in rows]
