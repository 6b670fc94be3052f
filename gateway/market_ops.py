"""`lootify raffle ...` and `lootify lottery ...`: the book run from the command line,
through the same client the gateway uses. Each prints its result as JSON (money as
decimal strings) and answers exit status 0, or 1 with the refusal on stderr."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from actors.client import AsyncLootify, Settings
from actors.errors import InvalidInput, LootifyError
from actors.money import parse_amount

from . import views
from .cluster_ops import join_cluster


def _run(work: Callable[[AsyncLootify], Awaitable[Any]]) -> int:
    settings = Settings()
    join_cluster(settings)

    async def main() -> Any:
        return await work(await AsyncLootify.create(settings=settings))

    try:
        result = asyncio.run(main())
    except LootifyError as exc:
        print(f"lootify: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _time(value: str | None, field: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 time", field=field) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def create_raffle(event_id: str, name: str, tickets: int, ticket_price: str, prize: str,
                  lottery: str | None, result_grace_s: int | None,
                  closes_at: str | None) -> int:
    async def work(aio: AsyncLootify) -> dict:
        market = await aio.create_raffle(
            event_id, name, tickets=tickets,
            ticket_price=parse_amount(ticket_price, field="ticket_price"),
            prize=parse_amount(prize, field="prize"), lottery=lottery,
            result_grace_s=result_grace_s, closes_at=_time(closes_at, "closes_at"),
        )
        return {"market": views.market(market)}

    return _run(work)


def settle_raffle(market_id: str, draw: str) -> int:
    async def work(aio: AsyncLootify) -> dict:
        return {"market": views.market(await aio.market(market_id).settle(draw))}

    return _run(work)


def post_lottery_draw(lottery: str, draw: str, drawn_at: str | None) -> int:
    async def work(aio: AsyncLootify) -> dict:
        posted = await aio.post_lottery_draw(lottery, draw, _time(drawn_at, "drawn_at"))
        return {**posted, "drawn_at": views.timestamp(posted["drawn_at"])}

    return _run(work)
