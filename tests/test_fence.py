"""The commit fence in PostgreSQL (`runtime.hold_epochs`), on a fresh migrated database.

A cycle commits only while its host's process holds the lease and every shard of the
cycle in the epoch it loaded it in; the rows it checks stay locked until the commit, so
a move of one of those shards waits for it. The check reads the cycle's shards only,
whatever the number of shards the host owns.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from actors.ops.databases import create_database, drop_database
from actors.ops.migrate import migrate
from actors.runtime.commit import FENCED, Fence, Fenced, hold_epochs
from actors.runtime.directory import ensure_directory, move_shards, take_lease, take_up_shards

KIND = "fence-test"
SHARDS = 256
HOSTS = 2
# Long enough for a lock the test expects to wait on; short enough to fail fast.
LOCK_WAIT = "200ms"


@pytest.fixture
def fresh_db(pg_dsn: str) -> Iterator[str]:
    name = f"t_fence_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(pg_dsn, name))
    asyncio.run(migrate(dsn))
    yield dsn
    asyncio.run(drop_database(pg_dsn, name))


async def _host_zero(conn: asyncpg.Connection) -> Fence:
    """Host 0 of a kind of 256 shards over two hosts, started: its fence over all it owns."""
    await ensure_directory(conn, KIND, SHARDS, HOSTS)
    incarnation = await take_lease(conn, KIND, 0)
    epochs = await take_up_shards(conn, KIND, 0, incarnation)
    return Fence(KIND, 0, incarnation, epochs)


def _narrowed(fence: Fence, shards: list[int]) -> Fence:
    return Fence(fence.kind, fence.host, fence.incarnation, {s: fence.epochs[s] for s in shards})


def test_the_fence_holds_only_for_the_current_owner_in_its_epochs(fresh_db):
    async def go() -> None:
        conn = await asyncpg.connect(fresh_db)
        try:
            fence = await _host_zero(conn)
            owned = sorted(fence.epochs)
            assert len(owned) == SHARDS // HOSTS
            cycle = _narrowed(fence, owned[:3])
            async with conn.transaction():
                await hold_epochs(conn, cycle)

            stale_process = Fence(KIND, 0, fence.incarnation - 1, cycle.epochs)
            not_its_shard = Fence(KIND, 0, fence.incarnation, {owned[0] + 1: 1})
            assert owned[0] + 1 not in fence.epochs
            for refused in (stale_process, not_its_shard):
                with pytest.raises(Fenced):
                    async with conn.transaction():
                        await hold_epochs(conn, refused)

            # A shard moved away and back: the same host, a newer epoch.
            await move_shards(conn, KIND, [owned[1]], 0, 1)
            await move_shards(conn, KIND, [owned[1]], 1, 0)
            with pytest.raises(Fenced):
                async with conn.transaction():
                    await hold_epochs(conn, cycle)
        finally:
            await conn.close()

    asyncio.run(go())


def test_the_fence_reads_the_cycles_shards_not_all_the_hosts(fresh_db):
    async def go() -> int:
        setup = await asyncpg.connect(fresh_db)
        try:
            fence = await _host_zero(setup)
        finally:
            await setup.close()
        cycle = _narrowed(fence, sorted(fence.epochs)[:2])
        # A session of its own: its counts are those of the fence's statements alone.
        conn = await asyncpg.connect(fresh_db)
        try:
            async with conn.transaction():
                await hold_epochs(conn, cycle)
                return await conn.fetchval(
                    "select seq_tup_read + coalesce(idx_tup_fetch, 0) "
                    "from pg_stat_xact_user_tables "
                    "where relid = 'runtime.shard_directory'::regclass"
                )
        finally:
            await conn.close()

    assert asyncio.run(go()) <= 2


def test_a_move_waits_for_a_commit_in_flight_on_its_shard_only(fresh_db):
    async def go() -> None:
        committing = await asyncpg.connect(fresh_db)
        mover = await asyncpg.connect(fresh_db, server_settings={"lock_timeout": LOCK_WAIT})
        try:
            fence = await _host_zero(committing)
            held, other = sorted(fence.epochs)[:2]
            async with committing.transaction():
                await hold_epochs(committing, _narrowed(fence, [held]))
                _, moved = await move_shards(mover, KIND, [other], 0, 1)
                assert moved == [other]
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await move_shards(mover, KIND, [held], 0, 1)
            _, moved = await move_shards(mover, KIND, [held], 0, 1)
            assert moved == [held]
            with pytest.raises(asyncpg.PostgresError) as refused:
                await committing.execute(
                    "select runtime.hold_epochs($1, $2, $3, $4::int[], $5::bigint[])",
                    *_narrowed(fence, [held]).args(),
                )
            assert refused.value.sqlstate == FENCED
        finally:
            await committing.close()
            await mover.close()

    asyncio.run(go())
