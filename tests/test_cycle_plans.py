"""How PostgreSQL plans a host's cycle statements, on a fresh migrated database.

A cycle's statement takes arrays of ids against tables that start empty and grow. A
plan cached while a table was empty scans all of it on every later cycle; a host's
sessions must plan each cycle for the arrays it brings.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from actors.ops.databases import create_database, drop_database
from actors.ops.migrate import migrate
from actors.runtime.host import CYCLE_SESSION

# Enough rows that a scan of them cannot pass for an index lookup.
GROWN = 20_000
# More calls than PostgreSQL makes custom plans for before it caches a generic one.
WARM_CALLS = 8


@pytest.fixture
def fresh_db(pg_dsn: str) -> Iterator[str]:
    name = f"t_plans_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(pg_dsn, name))
    asyncio.run(migrate(dsn))
    asyncio.run(_without_autovacuum(dsn))
    yield dsn
    asyncio.run(drop_database(pg_dsn, name))


async def _without_autovacuum(dsn: str) -> None:
    """An analyze between the table's growth and the last call would make PostgreSQL
    plan again, and hide what a cached plan does."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("alter table bets.bets set (autovacuum_enabled = off)")
    finally:
        await conn.close()


async def _rows_scanned_once_grown(dsn: str, session: dict[str, str], statement: str) -> int:
    """Run `statement` (args: placed ids, refused ids) while `bets.bets` is empty, grow
    the table, run it once more: the rows this session's last call read by scanning."""
    conn = await asyncpg.connect(dsn, server_settings=session)
    try:
        prepared = await conn.prepare(statement)
        for _ in range(WARM_CALLS):
            await prepared.fetchval([uuid.uuid4()], [uuid.uuid4()])
        await conn.execute(
            "insert into bets.bets (id, user_id, market_id, selection, amount, status, stake) "
            "select gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'home', 100, "
            "'accepted', 'committed' from generate_series(1, $1)",
            GROWN,
        )
        async with conn.transaction():  # this transaction's own counts, read at once
            await prepared.fetchval([uuid.uuid4()], [uuid.uuid4()])
            return await conn.fetchval(
                "select seq_tup_read from pg_stat_xact_user_tables "
                "where relid = 'bets.bets'::regclass"
            )
    finally:
        await conn.close()


STAKES_COMMITTED = (
    "with staked as (update bets.bets set stake = 'committed' where id = any($1::uuid[])) "
    "select cardinality($2::uuid[])"
)
BET_IDS_UNUSED = "select bets.expect_unused_bet_ids($1::uuid[], $2::uuid[])"


@pytest.mark.parametrize(
    ("session", "statement"),
    [
        (CYCLE_SESSION, STAKES_COMMITTED),
        (CYCLE_SESSION, BET_IDS_UNUSED),
        ({}, BET_IDS_UNUSED),  # the function plans its lookups per call on its own
    ],
    ids=["stakes-committed", "bet-ids-unused", "bet-ids-unused-any-session"],
)
def test_a_hosts_cycle_does_not_scan_a_table_that_grew(fresh_db, session, statement):
    scanned = asyncio.run(_rows_scanned_once_grown(fresh_db, session, statement))
    assert scanned < GROWN


def test_a_plan_cached_while_the_table_was_empty_scans_it_all(fresh_db):
    """What the hosts' sessions avoid: PostgreSQL's default caches the empty table's plan."""
    scanned = asyncio.run(_rows_scanned_once_grown(fresh_db, {}, STAKES_COMMITTED))
    assert scanned >= GROWN
