"""The comparison for `make bench`: a bet service built the conventional way.

FastAPI + asyncpg, served by uvicorn in one process. Every bet is one PostgreSQL
transaction that

  1. locks the user's wallet row (`SELECT ... FOR UPDATE`) and checks the funds,
  2. updates the market's liability row (a real book tracks its exposure per market;
     this row is what a hot market makes every bet queue on), reading the odds,
  3. debits the wallet,
  4. inserts the bet and its two journal rows (the user's debit, the book's credit),

and commits before answering. It speaks the same JSON as Lootify's `POST /api/bets`
(`{market_id, selection, amount, odds?, accept_odds?}` -> 201 `{bet}`), but the
caller is named by an `X-User: <user id>` header instead of a bearer token.

    DATABASE_URL=postgresql://... python -m uvicorn scripts.rowlock_service:app \
        --port 8100 --loop uvloop --http httptools --no-access-log

Its own schema `rowlock` (created on startup). `POST /seed {users, markets, balance}`
empties it and creates that many users and open fixed-odds markets, answering their
ids. `ROWLOCK_POOL_SIZE` (default 20) sets the connection pool.
"""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Literal

import asyncpg
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

SCHEMA = """
create schema if not exists rowlock;
create table if not exists rowlock.wallets (
    user_id uuid primary key,
    balance bigint not null check (balance >= 0)
);
create table if not exists rowlock.markets (
    id uuid primary key,
    status text not null default 'open',
    odds jsonb not null,
    min_stake bigint not null default 1,
    max_stake bigint not null default 100000000,
    liability bigint not null default 0,
    staked bigint not null default 0
);
create table if not exists rowlock.bets (
    id uuid primary key,
    user_id uuid not null,
    market_id uuid not null,
    selection text not null,
    amount bigint not null,
    odds numeric(8, 2) not null,
    potential_payout bigint not null,
    status text not null default 'accepted',
    placed_at timestamptz not null default now()
);
create index if not exists bets_user on rowlock.bets (user_id);
create table if not exists rowlock.journal (
    id bigserial primary key,
    bet_id uuid not null,
    account text not null,
    amount bigint not null,
    created_at timestamptz not null default now()
);
"""

HOUSE = "house"


def dsn() -> str:
    url = os.environ.get("ROWLOCK_DSN") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set ROWLOCK_DSN or DATABASE_URL")
    return url


@asynccontextmanager
async def lifespan(app: FastAPI):
    size = int(os.environ.get("ROWLOCK_POOL_SIZE", 20))
    app.state.pool = await asyncpg.create_pool(dsn(), min_size=size, max_size=size)
    async with app.state.pool.acquire() as c:
        await c.execute("select pg_advisory_lock(8100)")  # two services starting at once
        try:
            await c.execute(SCHEMA)
        finally:
            await c.execute("select pg_advisory_unlock(8100)")
    yield
    await app.state.pool.close()


app = FastAPI(title="row-lock bet service", lifespan=lifespan)


class BetIn(BaseModel):
    market_id: str = Field(max_length=64)
    selection: str = Field(min_length=1, max_length=64)
    amount: str = Field(pattern=r"^\d{1,12}(\.\d{1,2})?$", max_length=15)
    odds: str | None = Field(default=None, max_length=15)
    accept_odds: Literal["exact", "higher", "any"] | None = None


class SeedIn(BaseModel):
    users: int = Field(ge=0, le=1_000_000)
    markets: int = Field(ge=0, le=100_000)
    balance: str = "1000000.00"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def minor(value: str) -> int:
    return int((Decimal(value) * 100).to_integral_value())


def money(value: int) -> str:
    return f"{value // 100}.{value % 100:02d}"


@app.get("/health")
async def health() -> dict:
    return {"status": "healthy"}


@app.post("/seed")
async def seed(body: SeedIn, request: Request) -> dict:
    pool: asyncpg.Pool = request.app.state.pool
    users = [uuid.uuid4() for _ in range(body.users)]
    markets = [uuid.uuid4() for _ in range(body.markets)]
    odds = '{"home": "1.90", "away": "1.90"}'
    async with pool.acquire() as c, c.transaction():
        await c.execute("truncate rowlock.wallets, rowlock.markets, rowlock.bets, rowlock.journal")
        await c.copy_records_to_table("wallets", schema_name="rowlock",
                                      columns=["user_id", "balance"],
                                      records=[(u, minor(body.balance)) for u in users])
        await c.copy_records_to_table("markets", schema_name="rowlock", columns=["id", "odds"],
                                      records=[(m, odds) for m in markets])
    return {"users": [str(u) for u in users], "markets": [str(m) for m in markets]}


@app.post("/api/bets", status_code=201)
async def place_bet(body: BetIn, request: Request, x_user: str | None = Header(None)):
    try:
        user_id = uuid.UUID(x_user or "")
    except ValueError:
        return error(401, "unauthenticated", "send X-User: <user id>")
    try:
        market_id = uuid.UUID(body.market_id)
    except ValueError:
        return error(422, "invalid_input", "market_id is not a UUID")
    amount = minor(body.amount)
    wanted = None
    if body.odds is not None:
        try:
            wanted = Decimal(body.odds)
        except InvalidOperation:
            return error(422, "invalid_input", "odds must be a decimal string")
    accept = body.accept_odds or ("exact" if wanted is not None else "any")
    bet_id = uuid.uuid4()
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as c, c.transaction():
        balance = await c.fetchval(
            "select balance from rowlock.wallets where user_id = $1 for update", user_id)
        if balance is None:
            return error(404, "not_found", "no such user")
        if balance < amount:
            return error(409, "insufficient_funds", "not enough money")
        # The market's exposure: every bet on this market updates this one row.
        row = await c.fetchrow(
            "update rowlock.markets set staked = staked + $2, "
            " liability = liability + ($2 * (odds->>$3)::numeric)::bigint "
            "where id = $1 and status = 'open' and odds ? $3 "
            "  and $2 between min_stake and max_stake "
            "returning odds->>$3 as price",
            market_id, amount, body.selection)
        if row is None:
            market = await c.fetchrow(
                "select status, odds, min_stake, max_stake from rowlock.markets where id = $1",
                market_id)
            if market is None:
                return error(404, "not_found", "no such market")
            if market["status"] != "open":
                return error(409, "market_not_open", "the market is not open")
            if amount < market["min_stake"]:
                return error(422, "stake_too_low", "stake below the minimum")
            if amount > market["max_stake"]:
                return error(422, "stake_too_high", "stake above the maximum")
            return error(422, "invalid_input", "no such selection")
        price = Decimal(row["price"])
        if wanted is not None and (
            (accept == "exact" and price != wanted) or (accept == "higher" and price < wanted)
        ):
            raise _Rollback(error(409, "odds_changed", f"the odds are now {price}"))
        payout = int((amount * price).to_integral_value(rounding=ROUND_DOWN))
        await c.execute(
            "update rowlock.wallets set balance = balance - $2 where user_id = $1",
            user_id, amount)
        placed_at = await c.fetchval(
            "insert into rowlock.bets (id, user_id, market_id, selection, amount, odds, "
            " potential_payout) values ($1, $2, $3, $4, $5, $6, $7) returning placed_at",
            bet_id, user_id, market_id, body.selection, amount, price, payout)
        await c.execute(
            "insert into rowlock.journal (bet_id, account, amount) "
            "values ($1, $2, $3), ($1, $4, $5)",
            bet_id, str(user_id), -amount, HOUSE, amount)
    return {"bet": {
        "id": str(bet_id), "market_id": str(market_id), "selection": body.selection,
        "amount": money(amount), "odds": f"{price:.2f}", "potential_payout": money(payout),
        "status": "accepted", "payout": "0.00",
        "placed_at": (placed_at or datetime.now(UTC)).isoformat(), "settled_at": None,
    }}


class _Rollback(Exception):
    """Raised inside the transaction to roll it back and answer `response`."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


@app.exception_handler(_Rollback)
async def _rolled_back(request: Request, exc: _Rollback) -> JSONResponse:
    return exc.response
