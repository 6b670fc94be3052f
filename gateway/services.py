"""The gateway's operations: what the HTTP routes and the Phoenix socket both call.

Each takes the replica's `Context` and, where it acts for a user, the id of the
already authenticated caller; it checks its arguments (a malformed id is 404, money
and odds go through `actors.money`) and returns internal values, which `views`
formats. Event reads come from the replica's odds cache; writes go to the owners and
refresh the cache at once, and the other replicas' caches through PubSub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from actors.client import AsyncMarket
from actors.errors import (
    IdempotencyConflict,
    InvalidInput,
    LootifyError,
    NotFound,
    Unavailable,
)
from actors.money import parse_amount, parse_odds

from . import idempotency
from .auth import tokens, users
from .context import Context
from .errors import Unauthenticated
from .failures import dependency_failure
from .schemas import BetIn, EventIn, LotteryDrawIn, MarketIn, SettleIn

log = logging.getLogger("ray.serve").getChild(__name__)

# How long a payment waits to learn whether a bet has its key (`refuse_a_bet_key`).
BET_KEY_CHECK_S = 1.0


def _resource_id(value: str, what: str) -> str:
    """A UUID from a path or a payload; 404 for anything else (no such resource)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"no such {what}") from None


def _stake(value: str | None, field: str) -> int | None:
    return None if value is None else parse_amount(value, field=field)


# -- accounts ------------------------------------------------------------------------------


async def register(
    ctx: Context, ip: str, email: str, username: str, password: str
) -> tuple[users.User, str]:
    """A new player account and its token."""
    await ctx.rate().check_register(ip)
    user = await users.create_user(ctx.db(), email, username, password)
    return user, tokens.issue(user)


async def login(ctx: Context, ip: str, email: str, password: str) -> tuple[users.User, str]:
    limiter = ctx.rate()
    await limiter.check_login(ip, email)
    try:
        user = await users.authenticate(ctx.db(), email, password)
    except Unauthenticated:
        await limiter.login_failed(email)
        raise
    await limiter.login_succeeded(email)
    return user, tokens.issue(user)


async def account(ctx: Context, user_id: str) -> users.User:
    user = await users.get_user(ctx.db(), user_id)
    if user is None:
        raise Unauthenticated("the account of this token no longer exists")
    return user


async def logout(ctx: Context, claims: tokens.Claims) -> None:
    await tokens.revoke(ctx.db(), claims)


# -- wallet --------------------------------------------------------------------------------


async def balance(ctx: Context, user_id: str) -> Any:
    return await (await ctx.aio()).wallet(user_id).balance()


async def deposit(ctx: Context, user_id: str, amount: int, reference: str,
                  key_id: str | None = None) -> Any:
    return await (await ctx.aio()).wallet(user_id).deposit(amount, reference, key_id)


async def withdraw(ctx: Context, user_id: str, amount: int, reference: str,
                   key_id: str | None = None) -> Any:
    return await (await ctx.aio()).wallet(user_id).withdraw(amount, reference, key_id)


async def transactions(ctx: Context, user_id: str, limit: int, before: str | None) -> list:
    return await (await ctx.aio()).wallet(user_id).transactions(limit, before)


# -- events and markets --------------------------------------------------------------------


async def rendered_events(ctx: Context) -> bytes:
    """Every event, as the JSON body of `GET /api/events`."""
    await ctx.odds_cache.ensure_loaded()
    return ctx.odds_cache.rendered()


async def get_event(ctx: Context, event_id: str) -> dict:
    event = await ctx.odds_cache.fetch(_resource_id(event_id, "event"))
    if event is None:
        raise NotFound("no such event")
    return event


def _aware(value: dt.datetime) -> dt.datetime:
    """A time without a zone is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def create_event(ctx: Context, body: EventIn) -> dict:
    event = await (await ctx.aio()).create_event(body.name, body.category, _aware(body.starts_at))
    ctx.odds_cache.put_event(event)
    ctx.publish_changed(event["id"])
    return event


async def create_market(ctx: Context, event_id: str, body: MarketIn) -> dict:
    if body.type == "raffle":
        market = await _create_raffle(ctx, event_id, body)
    else:
        market = await _create_priced_market(ctx, event_id, body)
    ctx.odds_cache.put_market(market)
    ctx.publish_changed(market["event_id"])
    return market


async def _create_raffle(ctx: Context, event_id: str, body: MarketIn) -> dict:
    if body.tickets is None or body.ticket_price is None or body.prize is None:
        raise InvalidInput("a raffle needs tickets, ticket_price and prize", field="tickets")
    if body.in_play:
        raise InvalidInput("a raffle cannot sell tickets after its event starts",
                           field="in_play")
    return await (await ctx.aio()).create_raffle(
        _resource_id(event_id, "event"), body.name, tickets=body.tickets,
        ticket_price=parse_amount(body.ticket_price, field="ticket_price"),
        prize=parse_amount(body.prize, field="prize"), lottery=body.lottery,
        result_grace_s=body.result_grace_s,
        closes_at=None if body.closes_at is None else _aware(body.closes_at),
    )


async def _create_priced_market(ctx: Context, event_id: str, body: MarketIn) -> dict:
    # Odds stay strings here: the market layer parses them (with `parse_odds`).
    selections = [
        {"key": s.key, "name": s.name,
         "odds": None if s.odds is None else str(parse_odds(s.odds, field=f"odds of {s.key}"))}
        for s in body.selections
    ]
    return await (await ctx.aio()).create_market(
        _resource_id(event_id, "event"), body.name, body.type, selections,
        overround=body.overround, takeout=body.takeout,
        min_stake=_stake(body.min_stake, "min_stake"),
        max_stake=_stake(body.max_stake, "max_stake"),
        max_payout=_stake(body.max_payout, "max_payout"),
        closes_at=None if body.closes_at is None else _aware(body.closes_at),
        in_play=body.in_play,
    )


async def void_event(ctx: Context, event_id: str) -> dict:
    """Cancel an event and void its open markets, refunding their stakes."""
    event = await (await ctx.aio()).void_event(_resource_id(event_id, "event"))
    ctx.odds_cache.put_event(event)
    ctx.publish_changed(event["id"])
    return event


async def _change_market(
    ctx: Context, market_id: str, change: Callable[[AsyncMarket], Awaitable[dict]]
) -> dict:
    market = await change((await ctx.aio()).market(_resource_id(market_id, "market")))
    ctx.odds_cache.put_market(market)
    return market


async def suspend_market(ctx: Context, market_id: str) -> dict:
    return await _change_market(ctx, market_id, AsyncMarket.suspend)


async def reopen_market(ctx: Context, market_id: str) -> dict:
    return await _change_market(ctx, market_id, AsyncMarket.reopen)


async def close_market(ctx: Context, market_id: str) -> dict:
    return await _change_market(ctx, market_id, AsyncMarket.close)


async def set_odds(ctx: Context, market_id: str, odds: dict[str, str]) -> dict:
    parsed: dict[str, object] = {
        k: str(parse_odds(v, field=f"odds of {k}")) for k, v in odds.items()
    }
    return await _change_market(ctx, market_id, lambda market: market.set_odds(parsed))


async def settle_market(ctx: Context, market_id: str, body: SettleIn) -> dict:
    """By a selection's key, or a raffle by a draw (whose last digits name the number)."""
    if (body.winner is None) == (body.draw is None):
        raise InvalidInput("say either winner or draw", field="winner")
    result = body.winner if body.winner is not None else body.draw
    assert result is not None
    return await _change_market(ctx, market_id, lambda market: market.settle(result))


async def post_lottery_draw(ctx: Context, lottery: str, body: LotteryDrawIn) -> dict:
    drawn_at = None if body.drawn_at is None else _aware(body.drawn_at)
    return await (await ctx.aio()).post_lottery_draw(lottery, body.draw, drawn_at)


async def void_market(ctx: Context, market_id: str) -> dict:
    return await _change_market(ctx, market_id, AsyncMarket.void)


# -- bets ----------------------------------------------------------------------------------


def check_bet_rate(ctx: Context, user_id: str, channel: str) -> None:
    try:
        ctx.rate().check_bet(user_id)
    except LootifyError as exc:
        ctx.metrics.bets_refused.labels(exc.code, channel).inc()
        raise


async def place_bet(ctx: Context, user_id: str, body: BetIn, *,
                    idempotency_key: object = None, request_hash: str | None = None,
                    channel: str = "http", check_rate: bool = True) -> dict:
    """Validate and place one bet (HTTP and the socket's `place_bet`).

    With an idempotency key the market keeps the key: the bet's id comes from it, and
    the market answers a replay with the first answer (`replayed` set), refusals
    included, and another request with the key (`request_hash`) with a conflict."""
    if check_rate:
        check_bet_rate(ctx, user_id, channel)
    metrics = ctx.metrics
    try:
        bet_id = None
        if idempotency_key is not None:
            bet_id = idempotency.key_id(user_id, idempotency.check_key(idempotency_key))
        market_id = _resource_id(body.market_id, "market")
        amount = parse_amount(body.amount)
        odds = None if body.odds is None else str(parse_odds(body.odds))
        bet = await (await ctx.aio()).place_bet(
            user_id, market_id, body.selection, amount, odds, body.accept_odds,
            bet_id=bet_id, request_hash=request_hash,
        )
    except LootifyError as exc:
        metrics.bets_refused.labels(exc.code, channel).inc()
        raise
    metrics.bets_placed.labels(channel).inc()
    return bet


async def cancel_bet(ctx: Context, user_id: str, bet_id: str) -> dict:
    return await (await ctx.aio()).cancel_bet(user_id, _resource_id(bet_id, "bet"))


async def list_bets(ctx: Context, user_id: str) -> list[dict]:
    return await (await ctx.aio()).list_bets(user_id)


async def refuse_a_bet_key(ctx: Context, key_id: str) -> None:
    """A payment's Idempotency-Key must not be a bet's, placed or refused: a key is one
    request of its user everywhere. A placed bet's stake holds the key in the wallet,
    which refuses it there too; a refused bet moved no money, and only its market knows
    it. A payment waits at most `BET_KEY_CHECK_S` for the markets: with them
    unavailable it goes on unchecked (its reference id still makes it act once)."""
    try:
        taken = await asyncio.wait_for((await ctx.aio()).bet_id_taken(key_id), BET_KEY_CHECK_S)
    except Exception as exc:
        if not (isinstance(exc, Unavailable) or dependency_failure(exc)):
            raise
        log.warning("a payment's key not checked against bets: %r", exc)
        return
    if taken:
        raise IdempotencyConflict("this Idempotency-Key was already used for a bet")


async def get_bet(ctx: Context, user_id: str, bet_id: str) -> dict:
    return await (await ctx.aio()).get_bet(user_id, _resource_id(bet_id, "bet"))
