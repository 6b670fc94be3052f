"""The durable shard directory (`runtime.shard_directory`): which host of a kind
owns each logical shard, and in which epoch.

Only the coordinator (`actors.runtime.coordinator`) changes it. Hosts read the rows
they own, and check them inside every commit (`commit.hold_epochs`): a host whose
shard moved, or a process a restart replaced, can never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg


def host_name(kind: str, index: int) -> str:
    return f"{kind}-host-{index}"


@dataclass(frozen=True)
class Placement:
    """One kind's directory as callers see it: shard -> host index, the directory's
    epoch (bumped with every move) and a handle per host index."""

    epoch: int
    directory: list[int]
    handles: list[Any]


async def ensure_directory(conn: asyncpg.Connection, kind: str, shards: int, hosts: int) -> None:
    """The first start of a kind spreads its shards over `hosts`; later starts keep
    whatever the coordinator made of it."""
    async with conn.transaction():
        await conn.execute(
            "insert into runtime.shard_directory (kind, shard, host) "
            "select $1, s, s % $3 from generate_series(0, $2 - 1) s "
            "on conflict do nothing",
            kind,
            shards,
            hosts,
        )
        await conn.execute(
            "insert into runtime.directory_epochs (kind, hosts) "
            "select $1, max(host) + 1 from runtime.shard_directory where kind = $1 "
            "on conflict do nothing",
            kind,
        )


async def read_directory(conn: asyncpg.Connection, kind: str) -> tuple[int, int, list[int]]:
    """(the directory's epoch, the hosts the coordinator keeps, shard -> host)."""
    head = await conn.fetchrow(
        "select epoch, hosts from runtime.directory_epochs where kind = $1", kind
    )
    rows = await conn.fetch(
        "select shard, host from runtime.shard_directory where kind = $1 order by shard", kind
    )
    return head["epoch"], head["hosts"], [r["host"] for r in rows]


async def set_host_target(conn: asyncpg.Connection, kind: str, hosts: int) -> None:
    await conn.execute(
        "update runtime.directory_epochs set hosts = $2 where kind = $1", kind, hosts
    )


async def move_shards(
    conn: asyncpg.Connection, kind: str, shards: list[int], source: int, target: int
) -> tuple[int, list[int]]:
    """Give those of `shards` that `source` owns to `target`, bumping their epochs and
    the directory's: (the directory's new epoch, the shards moved). Waits for any
    commit of `source` in flight on those rows (it holds them `for share`)."""
    async with conn.transaction():
        rows = await conn.fetch(
            "update runtime.shard_directory set host = $4, epoch = epoch + 1 "
            "where kind = $1 and shard = any($2::int[]) and host = $3 returning shard",
            kind,
            shards,
            source,
            target,
        )
        epoch: int = await conn.fetchval(
            "update runtime.directory_epochs set epoch = epoch + 1 where kind = $1 returning epoch",
            kind,
        )
    return epoch, [r["shard"] for r in rows]


async def take_lease(conn: asyncpg.Connection, kind: str, host: int) -> int:
    """A new incarnation of `host`: whichever process held the lease before is fenced."""
    incarnation: int = await conn.fetchval(
        "insert into runtime.host_leases as l (kind, host, incarnation) values ($1, $2, 1) "
        "on conflict (kind, host) do update set incarnation = l.incarnation + 1 "
        "returning incarnation",
        kind,
        host,
    )
    return incarnation


async def take_up_shards(
    conn: asyncpg.Connection, kind: str, host: int, incarnation: int
) -> dict[int, int]:
    """The shards `host` owns now, with their epochs (shard -> epoch), recorded in the
    activation log."""
    rows = await conn.fetch(
        "insert into runtime.activations (kind, shard, epoch, host, incarnation) "
        "select kind, shard, epoch, host, $3 from runtime.shard_directory "
        "where kind = $1 and host = $2 returning shard, epoch",
        kind,
        host,
        incarnation,
    )
    return {r["shard"]: r["epoch"] for r in rows}
