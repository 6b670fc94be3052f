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

An `Idempotency-Key` header is honoured as a money API does (Stripe's "atomic
phases"): the key and the answer are stored in the bet's own transaction, so a
reuse with the same body replays the stored answer (`Idempotent-Replayed: true`),
with another body is `409 idempotency_conflict`, and while the first request with
the key is still running (its transaction holds the key's advisory lock) is
`409 idempotency_in_progress`. Refusals (4xx) are stored too; every refusal is
decided before the transaction writes anything.

    DATABASE_URL=postgresql://... python -m uvicorn scripts.rowlock_service:app \
        --port 8100 --loop uvloop --http httptools --no-access-log

Its own schema `rowlock` (created on startup). `POST /seed {users, markets, balance}`
empties it and creates that many users and open fixed-odds markets, answering their
ids. `ROWLOCK_POOL_SIZE` (default 20) sets the connection pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Literal

import asyncpg
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
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
create table if not exists rowlock.idempotency_keys (
    user_id uuid not null,
    key text not null,
    request_hash text not null,
    response_status int not null,
    response_body jsonb not null,
    created_at timestamptz not null default now(),
    primary key (user_id, key)
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
        await c.execute("truncate rowlock.wallets, rowlock.markets, rowlock.bets, rowlock.journal, "
                        "rowlock.idempotency_keys")
        await c.copy_records_to_table("wallets", schema_name="rowlock",
                                      columns=["user_id", "balance"],
                                      records=[(u, minor(body.balance)) for u in users])
        await c.copy_records_to_table("markets", schema_name="rowlock", columns=["id", "odds"],
                                      records=[(m, odds) for m in markets])
    return {"users": [str(u) for u in users], "markets": [str(m) for m in markets]}


class Refused(Exception):
    """A 4xx answer to a bet, decided before its transaction wrote anything."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.body = {"error": {"code": code, "message": message}}


def key_lock(user_id: uuid.UUID, key: str) -> int:
    """The advisory lock (a signed 64-bit id) that a request holds on its key."""
    digest = hashlib.blake2b(f"{user_id}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def claim(c: asyncpg.Connection, user_id: uuid.UUID, key: str,
                fingerprint: str) -> Response | None:
    """None: this transaction runs the request under `key` (its lock is held until
    commit). Else the answer: the stored one replayed, or a 409."""
    if not await c.fetchval("select pg_try_advisory_xact_lock($1)", key_lock(user_id, key)):
        return error(409, "idempotency_in_progress",
                     "a request with this Idempotency-Key is still running")
    stored = await c.fetchrow(
        "select request_hash, response_status, response_body::text as body "
        "from rowlock.idempotency_keys where user_id = $1 and key = $2", user_id, key)
    if stored is None:
        return None
    if stored["request_hash"] != fingerprint:
        return error(409, "idempotency_conflict",
                     "this Idempotency-Key was already used with a different request")
    return Response(stored["body"], status_code=stored["response_status"],
                    media_type="application/json", headers={"Idempotent-Replayed": "true"})


@app.post("/api/bets", status_code=201)
async def place_bet(body: BetIn, request: Request, x_user: str | None = Header(None),
                    idempotency_key: str | None = Header(None)) -> Response:
    try:
        user_id = uuid.UUID(x_user or "")
    except ValueError:
        return error(401, "unauthenticated", "send X-User: <user id>")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
        return error(422, "invalid_input", "Idempotency-Key must be 1 to 255 characters")
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as c, c.transaction():
        if idempotency_key is not None:
            fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
            answer = await claim(c, user_id, idempotency_key, fingerprint)
            if answer is not None:
                return answer
        try:
            status, result = 201, await bet(c, user_id, body)
        except Refused as exc:
            status, result = exc.status, exc.body
        raw = json.dumps(result)
        if idempotency_key is not None:
            await c.execute(
                "insert into rowlock.idempotency_keys "
                "(user_id, key, request_hash, response_status, response_body) "
                "values ($1, $2, $3, $4, $5::text::jsonb)",
                user_id, idempotency_key, fingerprint, status, raw)
    return Response(raw, status_code=status, media_type="application/json")


async def bet(c: asyncpg.Connection, user_id: uuid.UUID, body: BetIn) -> dict:
    """Place the bet inside `c`'s transaction; raises `Refused` before any write."""
    try:
        market_id = uuid.UUID(body.market_id)
    except ValueError:
        raise Refused(422, "invalid_input", "market_id is not a UUID") from None
    amount = minor(body.amount)
    wanted = None
    if body.odds is not None:
        try:
            wanted = Decimal(body.odds)
        except InvalidOperation:
            raise Refused(422, "invalid_input", "odds must be a decimal string") from None
    accept = (body.accept_odds or "exact") if wanted is not None else "any"
    balance = await c.fetchval(
        "select balance from rowlock.wallets where user_id = $1 for update", user_id)
    if balance is None:
        raise Refused(404, "not_found", "no such user")
    if balance < amount:
        raise Refused(409, "insufficient_funds", "not enough money")
    # The market's exposure: every bet on this market updates this one row.
    row = await c.fetchrow(
        "update rowlock.markets set staked = staked + $2, "
        " liability = liability + ($2 * (odds->>$3)::numeric)::bigint "
        "where id = $1 and status = 'open' and odds ? $3 "
        "  and $2 between min_stake and max_stake "
        "  and case $5::text when 'exact' then (odds->>$3)::numeric = $4 "
        "                    when 'higher' then (odds->>$3)::numeric >= $4 else true end "
        "returning odds->>$3 as price",
        market_id, amount, body.selection, wanted, accept)
    if row is None:
        market = await c.fetchrow(
            "select status, odds->>$2 as price, min_stake, max_stake "
            "from rowlock.markets where id = $1", market_id, body.selection)
        if market is None:
            raise Refused(404, "not_found", "no such market")
        if market["status"] != "open":
            raise Refused(409, "market_not_open", "the market is not open")
        if amount < market["min_stake"]:
            raise Refused(422, "stake_too_low", "stake below the minimum")
        if amount > market["max_stake"]:
            raise Refused(422, "stake_too_high", "stake above the maximum")
        if market["price"] is None:
            raise Refused(422, "invalid_input", "no such selection")
        raise Refused(409, "odds_changed", f"the odds are now {market['price']}")
    price = Decimal(row["price"])
    payout = int((amount * price).to_integral_value(rounding=ROUND_DOWN))
    bet_id = uuid.uuid4()
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
