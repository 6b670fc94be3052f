"""Pydantic models of every HTTP body and answer, so /openapi.json tells it all.

Money and odds are decimal strings (`"50.00"`, `"2.10"`); the services turn them into
minor units and `Decimal`s with `actors.money`, whose errors are 422 `invalid_input`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

# [0-9], not \d: the regex engine's \d matches every script's digits ("５.00").
MONEY = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"
# overround and takeout: a fraction with up to four places (the market checks the range).
FRACTION = r"^[0-9](\.[0-9]{1,4})?$"
Money = Field(pattern=MONEY, max_length=15, examples=["50.00"])


class Body(BaseModel):
    """A request body: its text must be storable. PostgreSQL's text and jsonb take no
    NUL character, and a lone surrogate has no UTF-8 form; either is 422 here instead
    of a failure wherever the text is stored."""

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        _check_storable(data)
        return data


def _check_storable(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text may not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key)
            _check_storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_storable(item)


class ErrorBody(BaseModel):
    code: str = Field(examples=["insufficient_funds"])
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


# -- auth ------------------------------------------------------------------------------


class RegisterIn(Body):
    email: str = Field(max_length=320, examples=["ana@example.com"])
    username: str = Field(max_length=64, examples=["ana"])
    password: str = Field(max_length=1024, examples=["correct horse battery"])


class LoginIn(Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class UserOut(BaseModel):
    id: str
    email: str
    username: str
    role: Literal["player", "operator", "admin"]


class AuthOut(BaseModel):
    user: UserOut
    token: str


class MeOut(BaseModel):
    user: UserOut


# -- wallet ----------------------------------------------------------------------------


class AmountIn(Body):
    amount: str = Money


class BalanceOut(BaseModel):
    balance: str = Field(examples=["100.00"])
    available: str
    reserved: str
    currency: str = Field(examples=["BRL"])


class TransactionOut(BaseModel):
    id: str
    kind: Literal["deposit", "withdrawal", "bet_stake", "bet_refund", "payout"]
    amount: str
    balance_after: str
    reference_id: str | None
    created_at: str | None


class TransactionsOut(BaseModel):
    transactions: list[TransactionOut]


# -- events and markets ----------------------------------------------------------------


class EventIn(Body):
    name: str = Field(min_length=1, max_length=200)
    category: str = Field(min_length=1, max_length=100)
    starts_at: dt.datetime


class SelectionIn(Body):
    key: str = Field(min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    name: str = Field(min_length=1, max_length=200)
    odds: str | None = Field(default=None, max_length=15, examples=["2.10"])


class MarketIn(Body):
    name: str = Field(min_length=1, max_length=200)
    type: Literal["fixed_odds", "pool", "raffle"]
    # Fixed odds and pools: 2 or more. A raffle's selections are its ticket numbers.
    selections: list[SelectionIn] = Field(default_factory=list, max_length=100)
    overround: str | None = Field(default=None, pattern=FRACTION, examples=["1.05"])
    takeout: str | None = Field(default=None, pattern=FRACTION, examples=["0.10"])
    min_stake: str | None = Field(default=None, pattern=MONEY, max_length=15)
    max_stake: str | None = Field(default=None, pattern=MONEY, max_length=15)
    max_payout: str | None = Field(default=None, pattern=MONEY, max_length=15)
    # Betting stops by itself then; by default at the event's start unless in play.
    closes_at: dt.datetime | None = None
    in_play: bool = False
    # Raffles only.
    tickets: Literal[100, 1000, 10000] | None = None
    ticket_price: str | None = Field(default=None, pattern=MONEY, max_length=15)
    prize: str | None = Field(default=None, pattern=MONEY, max_length=15)
    lottery: str | None = Field(default=None, min_length=1, max_length=64)
    result_grace_s: int | None = Field(default=None, ge=0, le=30 * 86_400)


class LotteryDrawIn(Body):
    draw: str = Field(pattern=r"^[0-9]{4,12}$", examples=["58342"])
    # When the lottery drew it; by default now.
    drawn_at: dt.datetime | None = None


class LotteryDrawOut(BaseModel):
    lottery: str
    draw: str
    drawn_at: str


class OddsIn(Body):
    odds: dict[str, str] = Field(min_length=1, max_length=100, examples=[{"home": "2.10"}])


class SettleIn(Body):
    """`winner` (a selection's key) or, for a raffle, `draw` (the lottery's number)."""

    winner: str | None = Field(default=None, min_length=1, max_length=64)
    draw: str | None = Field(default=None, pattern=r"^[0-9]{2,12}$", examples=["58342"])


class SelectionOut(BaseModel):
    key: str
    name: str
    odds: str | None


class MarketOut(BaseModel):
    id: str
    event_id: str
    name: str
    type: Literal["fixed_odds", "pool", "raffle"]
    status: Literal["open", "suspended", "closed", "settled", "void"]
    selections: list[SelectionOut]
    min_stake: str | None = None
    max_stake: str | None = None
    max_payout: str | None = None
    closes_at: str | None = None
    in_play: bool = False
    # Raffles only: the terms, tickets sold, and whether the house kept the sales.
    tickets: int | None = None
    ticket_price: str | None = None
    prize: str | None = None
    lottery: str | None = None
    sold: int | None = None
    house_keeps_sales: bool | None = None


class EventOut(BaseModel):
    id: str
    name: str
    category: str
    starts_at: str | None
    status: str | None
    markets: list[MarketOut]


class EventsOut(BaseModel):
    events: list[EventOut]


class EventEnvelope(BaseModel):
    event: EventOut


class MarketEnvelope(BaseModel):
    market: MarketOut


# -- bets ------------------------------------------------------------------------------


class BetIn(Body):
    market_id: str = Field(max_length=64)
    selection: str = Field(min_length=1, max_length=64)
    amount: str = Money
    odds: str | None = Field(default=None, max_length=15, examples=["2.10"])
    accept_odds: Literal["exact", "higher", "any"] | None = None


class CancelIn(Body):
    bet_id: str = Field(max_length=64)


class BetOut(BaseModel):
    id: str
    market_id: str
    selection: str
    amount: str
    odds: str | None
    potential_payout: str | None
    status: Literal["accepted", "cancelled", "won", "lost", "void"]
    payout: str
    placed_at: str | None
    settled_at: str | None


class BetEnvelope(BaseModel):
    bet: BetOut


class BetsOut(BaseModel):
    bets: list[BetOut]


# -- operations ------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    checks: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut}
    for code in (401, 403, 404, 409, 413, 422, 429, 503)
}
