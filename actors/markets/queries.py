"""Reads and writes of the bets service that need no entity: events and bet lookups.

Answered by a market host (`EntityHost.query`, through `HANDLERS`), so callers need
no database access.
Bets are read from PostgreSQL: every change to a bet is committed before it is
acknowledged, so these reads are never behind an answer already given.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from actors.errors import Conflict, NotFound

from . import pricing, series
from .messages import RaffleTerms

_EVENT = "select id::text, name, category, starts_at, status from bets.events"
_MARKET = (
    "select id::text, event_id::text, name, type, status, selections, odds, pricing, "
    "min_stake, max_stake, max_payout, winner, version, closes_at, in_play, "
    # A raffle's tickets sold, and whether its winning number had a holder.
    "case when type = 'raffle' then (select count(*) from bets.bets b "
    "  where b.market_id = markets.id and b.status in ('accepted', 'won', 'lost')) end as sold, "
    "case when type = 'raffle' then exists (select 1 from bets.bets b "
    "  where b.market_id = markets.id and b.status = 'won') end as raffle_won "
    "from bets.markets"
)
_BET = (
    "select id::text, user_id::text, market_id::text, selection, amount, odds_x100, "
    "potential_payout, status, payout, placed_at, settled_at from bets.bets"
)


async def create_event(
    conn: asyncpg.Connection, name: str, category: str, starts_at: datetime
) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    await conn.execute(
        "insert into bets.events (id, name, category, starts_at) values ($1, $2, $3, $4)",
        event_id,
        name,
        category,
        starts_at,
    )
    return await get_event(conn, event_id)


async def get_event(conn: asyncpg.Connection, event_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(_EVENT + " where id = $1", event_id)
    if row is None:
        raise NotFound(f"no event {event_id}")
    markets = await conn.fetch(_MARKET + " where event_id = $1 order by created_at", event_id)
    return {**dict(row), "markets": [market_view(m) for m in markets]}


async def list_events(conn: asyncpg.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Events still to come or under way, and those of the last day, soonest first."""
    events = await conn.fetch(
        _EVENT + " where status in ('scheduled', 'live') or starts_at > now() - interval '1 day'"
        " order by starts_at, id limit $1",
        limit,
    )
    ids = [e["id"] for e in events]
    markets = await conn.fetch(
        _MARKET + " where event_id = any($1::uuid[]) order by created_at", ids
    )
    by_event: dict[str, list] = {i: [] for i in ids}
    for m in markets:
        by_event[m["event_id"]].append(market_view(m))
    return [{**dict(e), "markets": by_event[e["id"]]} for e in events]


def market_view(row: asyncpg.Record) -> dict[str, Any]:
    odds = json.loads(row["odds"])
    terms = json.loads(row["pricing"])
    takeout = terms.get("takeout_bp")
    raffle = {}
    if row["type"] == "raffle":
        raffle = {k: terms[k] for k in RaffleTerms._fields}
        raffle["sold"] = row["sold"]
        raffle["house_keeps_sales"] = row["status"] == "settled" and not row["raffle_won"]
    return {
        **raffle,
        "id": row["id"],
        "event_id": row["event_id"],
        "name": row["name"],
        "type": row["type"],
        "status": row["status"],
        "selections": [
            {"key": s["key"], "name": s["name"], "odds": pricing.x100_to_odds(odds.get(s["key"]))}
            for s in json.loads(row["selections"])
        ],
        "min_stake": row["min_stake"],
        "max_stake": row["max_stake"],
        "max_payout": row["max_payout"],
        "winner": row["winner"],
        "takeout_bp": takeout if row["type"] == "pool" else None,
        "version": row["version"],
        "closes_at": row["closes_at"],
        "in_play": row["in_play"],
    }


async def get_bet(conn: asyncpg.Connection, user_id: str, bet_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(_BET + " where id = $1 and user_id = $2", bet_id, user_id)
    if row is None:  # someone else's bet is as absent as a missing one
        raise NotFound(f"no bet {bet_id}")
    return bet_view(row)


async def bet_id_taken(conn: asyncpg.Connection, bet_id: str) -> bool:
    """Whether a bet has this id, placed or refused: a keyed bet's id is its key's."""
    return bool(await conn.fetchval(
        "select exists (select 1 from bets.bets where id = $1)"
        " or exists (select 1 from bets.refused_bets where id = $1)", bet_id))


async def list_bets(conn: asyncpg.Connection, user_id: str, limit: int = 100) -> list[dict]:
    # The bets of one commit cycle share their time: the id keeps the order stable.
    rows = await conn.fetch(
        _BET + " where user_id = $1 order by placed_at desc, id desc limit $2", user_id, limit
    )
    return [bet_view(r) for r in rows]


def bet_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "market_id": row["market_id"],
        "selection": row["selection"],
        "amount": row["amount"],
        "odds": pricing.x100_to_odds(row["odds_x100"]),
        "potential_payout": row["potential_payout"],
        "status": row["status"],
        "payout": row["payout"],
        "placed_at": row["placed_at"],
        "settled_at": row["settled_at"],
    }


async def create_round_series(conn: asyncpg.Connection, **args: Any) -> str:
    await get_event(conn, args["event_id"])
    return await series.create_series(conn, **args)


async def post_round_result(
    conn: asyncpg.Connection, series_id: str, round_no: int, winner: str
) -> None:
    await series.post_result(conn, series_id, round_no, winner)


_SERIES = (
    "select id::text, event_id::text, name, selections, takeout, starts_at, period_s, open_s, "
    "time_of_day, timezone, lock_delay_s, settle_delay_s, grace_s, oracle, active, "
    "created_at, stopped_at from bets.round_series"
)


def _series_view(row: asyncpg.Record) -> dict[str, Any]:
    view = dict(row)
    view["selections"] = json.loads(row["selections"])
    view["time_of_day"] = None if row["time_of_day"] is None else row["time_of_day"].isoformat()
    view["status"] = "active" if view.pop("active") else "stopped"
    return view


async def create_daily_series(conn: asyncpg.Connection, **args: Any) -> dict[str, Any]:
    await get_event(conn, args["event_id"])
    return await get_series(conn, await series.create_daily_series(conn, **args))


async def get_series(conn: asyncpg.Connection, series_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(_SERIES + " where id = $1", series_id)
    if row is None:
        raise NotFound(f"no series {series_id}")
    return {**_series_view(row), "rounds": await list_rounds(conn, series_id)}


async def list_series(conn: asyncpg.Connection, limit: int = 500) -> list[dict[str, Any]]:
    rows = await conn.fetch(_SERIES + " order by created_at desc limit $1", limit)
    return [_series_view(r) for r in rows]


async def stop_series(conn: asyncpg.Connection, series_id: str) -> dict[str, Any]:
    """No new rounds; a round already open still locks and settles."""
    await conn.execute(
        "update bets.round_series set active = false, stopped_at = now() "
        "where id = $1 and active", series_id)
    return await get_series(conn, series_id)


async def list_rounds(conn: asyncpg.Connection, series_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "select round_no, market_id::text, locks_at, status from bets.rounds "
        "where series_id = $1 order by round_no",
        series_id,
    )
    return [dict(r) for r in rows]


async def post_lottery_draw(
    conn: asyncpg.Connection, lottery: str, draw: str, drawn_at: datetime
) -> dict[str, Any]:
    """An operator's (or an oracle's) draw of a lottery; the raffles waiting for it are
    settled by their hosts' housekeeping. Posting another number for the same drawing
    is refused."""
    stored = await conn.fetchval(
        "insert into bets.lottery_draws (lottery, drawn_at, draw) values ($1, $2, $3) "
        "on conflict (lottery, drawn_at) do update set draw = bets.lottery_draws.draw "
        "returning draw",
        lottery,
        drawn_at,
        draw,
    )
    if stored != draw:
        raise Conflict(f"the {lottery} drawing of {drawn_at} already drew {stored}")
    return {"lottery": lottery, "draw": draw, "drawn_at": drawn_at}


# The queries a market host answers (`EntityHost.query`), by name.
HANDLERS: dict[str, Callable[..., Awaitable[Any]]] = {
    "create_event": create_event,
    "get_event": get_event,
    "list_events": list_events,
    "get_bet": get_bet,
    "bet_id_taken": bet_id_taken,
    "list_bets": list_bets,
    "create_round_series": create_round_series,
    "post_round_result": post_round_result,
    "list_rounds": list_rounds,
    "create_daily_series": create_daily_series,
    "get_series": get_series,
    "list_series": list_series,
    "stop_series": stop_series,
    "post_lottery_draw": post_lottery_draw,
}
