"""A wallet host's commit cycle in PostgreSQL: one statement for the whole cycle.

The operations, their journal entries, the reservations opened and closed, the
wallets created and updated (conditional on the sequence each activation loaded),
and the host's fence go to the server as one statement, so a cycle costs one round
trip and the statement is its own transaction: all of it is stored, or none.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from actors.runtime import (
    Fence,
    commit_checks,
    random_uuids,
    retry_carefully_on_duplicate,
    shard_of,
)

from .state import Wallet, Write

_COMMIT = """
with fence as (
    select runtime.hold_epochs($1, $2, $3, $4::int[], $5::bigint[]) as held
), written as (
    insert into wallets.operations (id, wallet_id, op_key, seq, kind, reference_id, amount,
                                    args, available_after, reserved_after, key_id)
    select * from unnest($6::uuid[], $7::uuid[], $8::text[], $9::bigint[], $10::text[],
                         $11::text[], $12::bigint[], $13::text[], $14::bigint[], $15::bigint[],
                         $43::uuid[])
), journal as (
    insert into wallets.entries (wallet_id, seq, account, amount)
    select * from unnest($16::uuid[], $17::bigint[], $18::text[], $19::bigint[])
), held as (
    insert into wallets.pending (wallet_id, reference_id, shard, amount, expires_at)
    select * from unnest($20::uuid[], $21::text[], $22::int[], $23::bigint[],
                         $24::timestamptz[])
), resolved as (
    delete from wallets.pending p
     using unnest($25::uuid[], $26::text[]) as r(wallet_id, reference_id)
     where p.wallet_id = r.wallet_id and p.reference_id = r.reference_id
), created as (
    insert into wallets.wallets (user_id, shard, available, reserved, seq)
    select * from unnest($27::uuid[], $28::int[], $29::bigint[], $30::bigint[], $31::bigint[])
), updated as (
    update wallets.wallets w
       set available = u.available, reserved = u.reserved, seq = u.seq, updated_at = now()
      from unnest($32::uuid[], $33::bigint[], $34::bigint[], $35::bigint[], $36::bigint[])
           as u(user_id, available, reserved, seq, stored_seq)
     where w.user_id = u.user_id and w.seq = u.stored_seq
    returning 1
), opened as (
    insert into wallets.open_stakes (wallet_id, reference_id, market_id, market_shard, amount)
    select * from unnest($38::uuid[], $39::text[], $40::uuid[], $41::int[], $42::bigint[])
)
select (select held from fence),
       runtime.expect_rows((select count(*) from updated), $37, 'wallet')
"""


async def commit_cycle(
    conn: asyncpg.Connection, writes: list[Write], shards: int, fence: Fence
) -> None:
    """Store a cycle's writes, in one statement, only while `fence` holds."""
    ops = list(zip(random_uuids(len(writes)), writes, strict=True))
    # A reservation opened and closed in the same cycle leaves no row: the statement's
    # delete does not see its own insert, so the two cancel out here.
    opened = {(x.wallet.id, x.reference_id): x for x in writes if x.pending_add is not None}
    closed = {(x.wallet.id, x.reference_id) for x in writes if x.pending_remove}
    held = [x for key, x in opened.items() if key not in closed]
    resolved = [key for key in closed if key not in opened]
    stamps = {e: _timestamp(e) for e in {x.pending_add[1] for x in held if x.pending_add}}
    touched: dict[str, Wallet] = {x.wallet.id: x.wallet for x in writes}
    new = [w for w in touched.values() if w.stored_seq < 0]
    old = [w for w in touched.values() if w.stored_seq >= 0]
    entries = [(x.wallet.id, x.seq, acct, amt) for x in writes for acct, amt in x.entries]
    stakes = [(x, market) for x in writes if (market := x.stake_market) is not None]
    # A stake still open is a reference used before too; the statement may meet its
    # row before the operation's (PostgreSQL runs the inserts in no promised order).
    with commit_checks(), retry_carefully_on_duplicate(
        "a reference id was used before this activation", constraint="operations_pkey"
    ), retry_carefully_on_duplicate(
        "a stake's reference id was used before this activation", constraint="open_stakes_pkey"
    ), retry_carefully_on_duplicate(
        "an Idempotency-Key was used before this activation", constraint="operations_key_id"
    ):
        await conn.execute(
            _COMMIT,
            *fence.args(),
            [op_id for op_id, _ in ops],
            [x.wallet.id for _, x in ops],
            [x.op_key for _, x in ops],
            [x.seq for _, x in ops],
            [x.done.kind for _, x in ops],
            [x.reference_id for _, x in ops],
            [x.amount for _, x in ops],
            [x.done.args for _, x in ops],
            [x.done.available for _, x in ops],
            [x.done.reserved for _, x in ops],
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
            [e[3] for e in entries],
            [x.wallet.id for x in held],
            [x.reference_id for x in held],
            [shard_of(x.wallet.id, shards) for x in held],
            [x.pending_add[0] for x in held if x.pending_add],
            [stamps[x.pending_add[1]] for x in held if x.pending_add],
            [key[0] for key in resolved],
            [key[1] for key in resolved],
            [w.id for w in new],
            [shard_of(w.id, shards) for w in new],
            [w.available for w in new],
            [w.reserved for w in new],
            [w.seq for w in new],
            [w.id for w in old],
            [w.available for w in old],
            [w.reserved for w in old],
            [w.seq for w in old],
            [w.stored_seq for w in old],
            len(old),
            [x.wallet.id for x, _ in stakes],
            [x.reference_id for x, _ in stakes],
            [market for _, market in stakes],
            [shard_of(market, shards) for _, market in stakes],
            [x.amount for x, _ in stakes],
            [x.key_id for _, x in ops],
        )


def _timestamp(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)
