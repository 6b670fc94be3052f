"""HTTP: `/api/events`, `/api/markets/*`, `/api/bets` (and the bet logic the socket
shares). Event reads come from the replica's catalog; writes go to the owners and
refresh the catalog at once."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from actors.errors import LootifyError, NotFound
from actors.money import parse_amount, parse_odds

from . import tokens, views
from .deps import (
    Authenticated,
    IdempotencyKey,
    Operator,
    bet_id_for,
    ctx_of,
    idempotent,
    path_id,
)
from .schemas import (
    ERRORS,
    BetEnvelope,
    BetIn,
    BetsOut,
    EventEnvelope,
    EventIn,
    EventsOut,
    MarketEnvelope,
    MarketIn,
    OddsIn,
    SettleIn,
)

if TYPE_CHECKING:
    from .context import Context

router = APIRouter(responses=ERRORS)


def _stake(value: str | None, field: str) -> int | None:
    return None if value is None else parse_amount(value, field=field)


# -- events and markets ------------------------------------------------------------------


@router.get("/api/events", response_model=EventsOut, tags=["events"])
async def list_events(request: Request) -> Response:
    catalog = ctx_of(request).catalog
    await catalog.ensure_loaded()
    return Response(catalog.rendered(), media_type="application/json")


@router.get("/api/events/{event_id}", response_model=EventEnvelope, tags=["events"])
async def get_event(event_id: str, request: Request) -> dict:
    event = await ctx_of(request).catalog.fetch(path_id(event_id, "event"))
    if event is None:
        raise NotFound("no such event")
    return {"event": views.event(event)}


@router.post("/api/events", status_code=201, response_model=EventEnvelope, tags=["events"])
async def create_event(body: EventIn, request: Request, _: tokens.Claims = Operator) -> dict:
    ctx = ctx_of(request)
    starts_at = body.starts_at
    if starts_at.tzinfo is None:
        starts_at = starts_at.replace(tzinfo=dt.UTC)
    event = await (await ctx.aio()).create_event(body.name, body.category, starts_at)
    ctx.catalog.put_event(event)
    ctx.publish_changed(event["id"])
    return {"event": views.event(event)}


@router.post("/api/events/{event_id}/markets", status_code=201, response_model=MarketEnvelope,
             tags=["markets"])
async def create_market(
    event_id: str, body: MarketIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    ctx = ctx_of(request)
    # Odds stay strings here: the market layer parses them (with `parse_odds`).
    selections = [
        {"key": s.key, "name": s.name,
         "odds": None if s.odds is None else str(parse_odds(s.odds, field=f"odds of {s.key}"))}
        for s in body.selections
    ]
    market = await (await ctx.aio()).create_market(
        path_id(event_id, "event"), body.name, body.type, selections,
        overround=body.overround, takeout=body.takeout,
        min_stake=_stake(body.min_stake, "min_stake"),
        max_stake=_stake(body.max_stake, "max_stake"),
        max_payout=_stake(body.max_payout, "max_payout"),
    )
    ctx.catalog.put_market(market)
    ctx.publish_changed(market["event_id"])
    return {"market": views.market(market)}


async def _market_op(request: Request, market_id: str, op: str, *args: Any) -> dict:
    ctx = ctx_of(request)
    handle = (await ctx.aio()).market(path_id(market_id, "market"))
    market = await getattr(handle, op)(*args)
    ctx.catalog.put_market(market)
    return {"market": views.market(market)}


@router.post("/api/markets/{market_id}/suspend", response_model=MarketEnvelope, tags=["markets"])
async def suspend(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return await _market_op(request, market_id, "suspend")


@router.post("/api/markets/{market_id}/reopen", response_model=MarketEnvelope, tags=["markets"])
async def reopen(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return await _market_op(request, market_id, "reopen")


@router.post("/api/markets/{market_id}/close", response_model=MarketEnvelope, tags=["markets"])
async def close(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return await _market_op(request, market_id, "close")


@router.put("/api/markets/{market_id}/odds", response_model=MarketEnvelope, tags=["markets"])
async def set_odds(
    market_id: str, body: OddsIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    odds = {k: str(parse_odds(v, field=f"odds of {k}")) for k, v in body.odds.items()}
    return await _market_op(request, market_id, "set_odds", odds)


@router.post("/api/markets/{market_id}/settle", response_model=MarketEnvelope, tags=["markets"])
async def settle(
    market_id: str, body: SettleIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    return await _market_op(request, market_id, "settle", body.winner)


@router.post("/api/markets/{market_id}/void", response_model=MarketEnvelope, tags=["markets"])
async def void(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return await _market_op(request, market_id, "void")


# -- bets ----------------------------------------------------------------------------------


def check_bet_rate(ctx: Context, user_id: str, channel: str) -> None:
    try:
        ctx.rate().check_bet(user_id)
    except LootifyError as exc:
        ctx.metrics.bets_refused.labels(exc.code, channel).inc()
        raise


async def place_bet(ctx: Context, user_id: str, body: BetIn, *, bet_id: str | None = None,
                    channel: str = "http", check_rate: bool = True) -> dict:
    """Validate and place one bet (HTTP and the socket's `place_bet`)."""
    if check_rate:
        check_bet_rate(ctx, user_id, channel)
    metrics = ctx.metrics
    try:
        market_id = path_id(body.market_id, "market")
        amount = parse_amount(body.amount)
        odds = None if body.odds is None else str(parse_odds(body.odds))
        bet = await (await ctx.aio()).place_bet(
            user_id, market_id, body.selection, amount, odds, body.accept_odds, bet_id=bet_id
        )
    except LootifyError as exc:
        metrics.bets_refused.labels(exc.code, channel).inc()
        raise
    metrics.bets_placed.labels(channel).inc()
    return bet


async def cancel_bet(ctx: Context, user_id: str, bet_id: str) -> dict:
    return await (await ctx.aio()).cancel_bet(user_id, path_id(bet_id, "bet"))


@router.post("/api/bets", status_code=201, response_model=BetEnvelope, tags=["bets"])
async def create_bet(
    body: BetIn, request: Request, claims: tokens.Claims = Authenticated,
    idempotency_key: str | None = IdempotencyKey,
):
    ctx = ctx_of(request)
    check_bet_rate(ctx, claims.user_id, "http")  # before the key: a 429 is not stored

    async def work(key: str | None) -> tuple[int, dict]:
        bet = await place_bet(ctx, claims.user_id, body, bet_id=bet_id_for(claims.user_id, key),
                              check_rate=False)
        return 201, {"bet": views.bet(bet)}

    return await idempotent(request, claims, work)


@router.get("/api/bets", response_model=BetsOut, tags=["bets"])
async def list_bets(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    bets = await (await ctx_of(request).aio()).list_bets(claims.user_id)
    return {"bets": [views.bet(b) for b in bets]}


@router.get("/api/bets/{bet_id}", response_model=BetEnvelope, tags=["bets"])
async def get_bet(bet_id: str, request: Request, claims: tokens.Claims = Authenticated) -> dict:
    bet = await (await ctx_of(request).aio()).get_bet(claims.user_id, path_id(bet_id, "bet"))
    return {"bet": views.bet(bet)}


@router.delete("/api/bets/{bet_id}", response_model=BetEnvelope, tags=["bets"])
async def delete_bet(
    bet_id: str, request: Request, claims: tokens.Claims = Authenticated,
    idempotency_key: str | None = IdempotencyKey,
):
    ctx = ctx_of(request)

    async def work(key: str | None) -> tuple[int, dict]:
        return 200, {"bet": views.bet(await cancel_bet(ctx, claims.user_id, bet_id))}

    return await idempotent(request, claims, work)
