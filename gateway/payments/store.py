"""The payments' rows in PostgreSQL: deposits, the withdrawal queue and the provider's
event ids already acted on (`migrations/0012_payments.sql`)."""

from __future__ import annotations

from typing import Any

import asyncpg

from actors.errors import IdempotencyConflict, InvalidTransition, NotFound
from actors.money import format_amount

ACQUIRE_TIMEOUT_S = 5.0
_DEPOSIT = "id::text, user_id::text, amount, provider_payment_id, status, created_at"
_WITHDRAWAL = ("id::text, user_id::text, amount, status, approved_by, provider_payout_id, "
               "created_at")


async def create_deposit(pool: asyncpg.Pool, deposit_id: str, user_id: str,
                         amount: int) -> asyncpg.Record:
    """The pending deposit, or the one this id already names (a retried request)."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        await conn.execute(
            "insert into gateway.deposits (id, user_id, amount) values ($1, $2, $3) "
            "on conflict (id) do nothing", deposit_id, user_id, amount)
        row = await conn.fetchrow(
            f"select {_DEPOSIT} from gateway.deposits where id = $1", deposit_id)
    if row["user_id"] != user_id or row["amount"] != amount:
        raise IdempotencyConflict("this deposit id was used with other arguments")
    return row


async def set_payment_id(pool: asyncpg.Pool, deposit_id: str, payment_id: str) -> None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await conn.execute(
            "update gateway.deposits set provider_payment_id = $2, updated_at = now() "
            "where id = $1", deposit_id, payment_id)


async def deposit(pool: asyncpg.Pool, deposit_id: str) -> asyncpg.Record | None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        return await conn.fetchrow(
            f"select {_DEPOSIT} from gateway.deposits where id = $1", deposit_id)


async def event_seen(pool: asyncpg.Pool, event_id: str) -> bool:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        return bool(await conn.fetchval(
            "select 1 from gateway.webhook_events where event_id = $1", event_id))


async def _record_event(conn: asyncpg.Connection, event_id: str, event_type: str) -> None:
    await conn.execute(
        "insert into gateway.webhook_events (event_id, type) values ($1, $2) "
        "on conflict (event_id) do nothing", event_id, event_type)


async def record_event(pool: asyncpg.Pool, event_id: str, event_type: str) -> None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await _record_event(conn, event_id, event_type)


async def finish(pool: asyncpg.Pool, table: str, row_id: str, status: str,
                 from_statuses: tuple[str, ...], event_id: str, event_type: str) -> None:
    """Move a deposit or withdrawal to its final status and remember the event that
    did it, in one transaction: once the event is recorded, its work is done."""
    statement = {
        "deposits": "update gateway.deposits set status = $2, updated_at = now() "
                    "where id = $1 and status = any($3::text[])",
        "withdrawals": "update gateway.withdrawals set status = $2, updated_at = now() "
                       "where id = $1 and status = any($3::text[])",
    }[table]
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        await conn.execute(statement, row_id, status, list(from_statuses))
        await _record_event(conn, event_id, event_type)


async def create_withdrawal(pool: asyncpg.Pool, withdrawal_id: str, user_id: str,
                            amount: int) -> asyncpg.Record:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        await conn.execute(
            "insert into gateway.withdrawals (id, user_id, amount) values ($1, $2, $3) "
            "on conflict (id) do nothing", withdrawal_id, user_id, amount)
        row = await conn.fetchrow(
            f"select {_WITHDRAWAL} from gateway.withdrawals where id = $1", withdrawal_id)
    if row["user_id"] != user_id or row["amount"] != amount:
        raise IdempotencyConflict("this withdrawal id was used with other arguments")
    return row


async def queue_withdrawal(pool: asyncpg.Pool, withdrawal_id: str,
                           auto_approved: bool) -> asyncpg.Record:
    """Its funds are reserved: it waits for an operator, or goes to payout at once."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await conn.execute(
            "update gateway.withdrawals set status = $2, approved_by = $3, updated_at = now() "
            "where id = $1 and status = 'requested'",
            withdrawal_id, "approved" if auto_approved else "pending",
            "auto" if auto_approved else None)
        return await conn.fetchrow(
            f"select {_WITHDRAWAL} from gateway.withdrawals where id = $1", withdrawal_id)


async def drop_withdrawal(pool: asyncpg.Pool, withdrawal_id: str) -> None:
    """Its funds could not be reserved: nothing is held, so nothing is queued."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await conn.execute(
            "delete from gateway.withdrawals where id = $1 and status = 'requested'",
            withdrawal_id)


async def approve(pool: asyncpg.Pool, withdrawal_id: str, operator_id: str) -> asyncpg.Record:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        row = await conn.fetchrow(
            "update gateway.withdrawals set status = 'approved', approved_by = $2, "
            "updated_at = now() where id = $1 and status = 'pending' "
            f"returning {_WITHDRAWAL}", withdrawal_id, operator_id)
        if row is not None:
            return row
        current = await conn.fetchval(
            "select status from gateway.withdrawals where id = $1", withdrawal_id)
    if current is None:
        raise NotFound("no such withdrawal")
    raise InvalidTransition(f"the withdrawal is {current}, not pending approval")


async def claim_payouts(pool: asyncpg.Pool, limit: int = 20) -> list[asyncpg.Record]:
    """Approved withdrawals for this replica to pay out; also those a replica claimed
    and died before the provider's answer was stored (the provider is idempotent by
    the withdrawal's id, so asking again pays once)."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        return await conn.fetch(
            "update gateway.withdrawals set status = 'paying', updated_at = now() "
            "where id in (select id from gateway.withdrawals where status = 'approved' "
            "  or (status = 'paying' and provider_payout_id is null "
            "      and updated_at < now() - interval '60 seconds') "
            "  order by created_at limit $1 for update skip locked) "
            f"returning {_WITHDRAWAL}", limit)


async def set_payout_id(pool: asyncpg.Pool, withdrawal_id: str, payout_id: str) -> None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await conn.execute(
            "update gateway.withdrawals set provider_payout_id = $2, updated_at = now() "
            "where id = $1", withdrawal_id, payout_id)


async def withdrawal(pool: asyncpg.Pool, withdrawal_id: str) -> asyncpg.Record | None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        return await conn.fetchrow(
            f"select {_WITHDRAWAL} from gateway.withdrawals where id = $1", withdrawal_id)


async def list_withdrawals(pool: asyncpg.Pool, status: str | None,
                           limit: int) -> list[asyncpg.Record]:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        return await conn.fetch(
            f"select {_WITHDRAWAL} from gateway.withdrawals "
            "where $1::text is null or status = $1 order by created_at limit $2",
            status, limit)


def view(row: Any) -> dict[str, Any]:
    """A deposit's or withdrawal's row as the contract shows it (money as decimals)."""
    out = {"id": row["id"], "amount": format_amount(row["amount"]), "status": row["status"],
           "created_at": row["created_at"].isoformat()}
    if "approved_by" in row.keys():
        out["user_id"] = row["user_id"]
        out["approved_by"] = row["approved_by"]
    return out
