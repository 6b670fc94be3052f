"""HTTP: `/api/events`, `/api/markets/*`, `/api/bets`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .. import idempotency, services, views
from ..auth import tokens
from ..deps import Authenticated, IdempotencyKey, Operator, ctx_of, current_claims, idempotent
from ..schemas import (
    ERRORS,
    BetEnvelope,
    BetIn,
    BetsOut,
    EventEnvelope,
    EventIn,
    EventsOut,
    LotteryDrawIn,
    LotteryDrawOut,
    MarketEnvelope,
    MarketIn,
    OddsIn,
    SettleIn,
)

router = APIRouter(responses=ERRORS)


# -- events and markets ------------------------------------------------------------------


@router.get("/api/events", response_model=EventsOut, tags=["events"])
async def list_events(request: Request) -> Response:
    body = await services.rendered_events(ctx_of(request))
    return Response(body, media_type="application/json")


@router.get("/api/events/{event_id}", response_model=EventEnvelope, tags=["events"])
async def get_event(event_id: str, request: Request) -> dict:
    return {"event": views.event(await services.get_event(ctx_of(request), event_id))}


@router.post("/api/events", status_code=201, response_model=EventEnvelope, tags=["events"])
async def create_event(body: EventIn, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"event": views.event(await services.create_event(ctx_of(request), body))}


@router.post("/api/events/{event_id}/void", response_model=EventEnvelope, tags=["events"])
async def void_event(event_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"event": views.event(await services.void_event(ctx_of(request), event_id))}


@router.post("/api/events/{event_id}/markets", status_code=201, response_model=MarketEnvelope,
             tags=["markets"])
async def create_market(
    event_id: str, body: MarketIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    market = await services.create_market(ctx_of(request), event_id, body)
    return {"market": views.market(market)}


@router.post("/api/markets/{market_id}/suspend", response_model=MarketEnvelope, tags=["markets"])
async def suspend(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"market": views.market(await services.suspend_market(ctx_of(request), market_id))}


@router.post("/api/markets/{market_id}/reopen", response_model=MarketEnvelope, tags=["markets"])
async def reopen(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"market": views.market(await services.reopen_market(ctx_of(request), market_id))}


@router.post("/api/markets/{market_id}/close", response_model=MarketEnvelope, tags=["markets"])
async def close(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"market": views.market(await services.close_market(ctx_of(request), market_id))}


@router.put("/api/markets/{market_id}/odds", response_model=MarketEnvelope, tags=["markets"])
async def set_odds(
    market_id: str, body: OddsIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    market = await services.set_odds(ctx_of(request), market_id, body.odds)
    return {"market": views.market(market)}


@router.post("/api/markets/{market_id}/settle", response_model=MarketEnvelope, tags=["markets"])
async def settle(
    market_id: str, body: SettleIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    market = await services.settle_market(ctx_of(request), market_id, body)
    return {"market": views.market(market)}


@router.post("/api/lotteries/{lottery}/draws", status_code=201, response_model=LotteryDrawOut,
             tags=["markets"])
async def post_lottery_draw(
    lottery: str, body: LotteryDrawIn, request: Request, _: tokens.Claims = Operator
) -> dict:
    """A lottery's result: the closed raffles naming the lottery are settled by it."""
    draw = await services.post_lottery_draw(ctx_of(request), lottery, body)
    return {**draw, "drawn_at": views.timestamp(draw["drawn_at"])}


@router.post("/api/markets/{market_id}/void", response_model=MarketEnvelope, tags=["markets"])
async def void(market_id: str, request: Request, _: tokens.Claims = Operator) -> dict:
    return {"market": views.market(await services.void_market(ctx_of(request), market_id))}


# -- bets ----------------------------------------------------------------------------------


# The hot path takes the bare request: the token and the body are checked here, not by
# FastAPI's dependency solving and body parsing, which cost a tenth of a replica's CPU
# per bet. `BET_DOC` documents in OpenAPI what the signature no longer declares.
BET_DOC = {
    "parameters": [{
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "maxLength": idempotency.KEY_MAX},
        "description": "One key of one user is one bet: a replay gets the first answer "
        "(refusals too) with Idempotent-Replayed: true; 409 idempotency_conflict for "
        "another body, idempotency_in_progress while the first runs.",
    }],
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": BetIn.model_json_schema()}}},
}


@router.post("/api/bets", status_code=201, response_model=BetEnvelope, tags=["bets"],
             openapi_extra=BET_DOC)
async def create_bet(request: Request) -> JSONResponse:
    claims = await current_claims(request)
    raw = await request.body()
    try:
        body = BetIn.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    key = request.headers.get("idempotency-key")
    fingerprint = None
    if key is not None:
        fingerprint = idempotency.request_hash(request.method, request.url.path, raw)
    bet = await services.place_bet(ctx_of(request), claims.user_id, body,
                                   idempotency_key=key, request_hash=fingerprint)
    headers = {"Idempotent-Replayed": "true"} if bet.get("replayed") else None
    return JSONResponse({"bet": views.bet(bet)}, status_code=201, headers=headers)


@router.get("/api/bets", response_model=BetsOut, tags=["bets"])
async def list_bets(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    bets = await services.list_bets(ctx_of(request), claims.user_id)
    return {"bets": [views.bet(b) for b in bets]}


@router.get("/api/bets/{bet_id}", response_model=BetEnvelope, tags=["bets"])
async def get_bet(bet_id: str, request: Request, claims: tokens.Claims = Authenticated) -> dict:
    return {"bet": views.bet(await services.get_bet(ctx_of(request), claims.user_id, bet_id))}


@router.delete("/api/bets/{bet_id}", response_model=BetEnvelope, tags=["bets"])
async def delete_bet(
    bet_id: str, request: Request, claims: tokens.Claims = Authenticated,
    idempotency_key: str | None = IdempotencyKey,
):
    ctx = ctx_of(request)

    async def work(key: str | None) -> tuple[int, dict]:
        return 200, {"bet": views.bet(await services.cancel_bet(ctx, claims.user_id, bet_id))}

    return await idempotent(request, claims, work)
