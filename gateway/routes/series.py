"""HTTP: recurring rounds (betting-mvp). Operators create, list and stop series whose
pool rounds lock daily at a time of day in a named timezone, and post a round's
result when no oracle adapter gives it; the scheduler actor does the rest."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import Field

from actors.errors import NotFound

from ..auth import tokens
from ..deps import Operator, ctx_of
from ..schemas import ERRORS, Body, SelectionIn

router = APIRouter(responses=ERRORS, tags=["series"])


class SeriesIn(Body):
    event_id: str
    name: str = Field(min_length=1, max_length=200)
    selections: list[SelectionIn] = Field(min_length=2, max_length=50)
    takeout: str = "0.00"
    time_of_day: str = Field(description='when each day\'s round locks, "16:00"')
    timezone: str = Field(description='a tz database name, "America/New_York"')
    lock_delay_s: int = 0
    settle_delay_s: int = 0
    grace_s: int = 1800
    oracle: str | None = Field(None, description='"sandbox", or none: operators post results')


class RoundResultIn(Body):
    winner: str = Field(min_length=1, max_length=200)


def _series_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound("no such series") from None


@router.post("/api/series", status_code=201)
async def create_series(body: SeriesIn, request: Request,
                        claims: tokens.Claims = Operator) -> dict:
    aio = await ctx_of(request).aio()
    try:
        event_id = str(uuid.UUID(body.event_id))
    except ValueError:
        raise NotFound("no such event") from None
    series = await aio.create_daily_series(
        event_id, body.name, [{"key": s.key, "name": s.name} for s in body.selections],
        takeout=body.takeout, time_of_day=body.time_of_day, timezone=body.timezone,
        lock_delay_s=body.lock_delay_s, settle_delay_s=body.settle_delay_s,
        grace_s=body.grace_s, oracle=body.oracle,
    )
    return {"series": series}


@router.get("/api/series")
async def list_series(request: Request, claims: tokens.Claims = Operator) -> dict:
    return {"series": await (await ctx_of(request).aio()).list_series()}


@router.get("/api/series/{series_id}")
async def get_series(series_id: str, request: Request,
                     claims: tokens.Claims = Operator) -> dict:
    return {"series": await (await ctx_of(request).aio()).get_series(_series_id(series_id))}


@router.post("/api/series/{series_id}/stop")
async def stop_series(series_id: str, request: Request,
                      claims: tokens.Claims = Operator) -> dict:
    """No new rounds; a round already open still locks and settles."""
    return {"series": await (await ctx_of(request).aio()).stop_series(_series_id(series_id))}


@router.post("/api/series/{series_id}/rounds/{round_no}/result")
async def post_result(series_id: str, round_no: int, body: RoundResultIn, request: Request,
                      claims: tokens.Claims = Operator) -> dict:
    """An operator's result for a round: the scheduler settles it once it is due."""
    aio = await ctx_of(request).aio()
    await aio.post_round_result(_series_id(series_id), round_no, body.winner)
    return {"series_id": series_id, "round_no": round_no, "winner": body.winner}
