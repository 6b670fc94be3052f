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


def create_series(event_id: str, name: str, selections: str, takeout: str, time_of_day: str,
                  timezone: str, lock_delay_s: int, settle_delay_s: int, grace_s: int,
                  oracle: str | None) -> int:
    """`selections` as `up:Up,down:Down` (key:name pairs)."""
    async def work(aio: AsyncLootify) -> dict:
        pairs = [part.partition(":") for part in selections.split(",") if part.strip()]
        chosen = [{"key": k.strip(), "name": (n or k).strip()} for k, _, n in pairs]
        return {"series": await aio.create_daily_series(
            event_id, name, chosen, takeout=takeout, time_of_day=time_of_day,
            timezone=timezone, lock_delay_s=lock_delay_s, settle_delay_s=settle_delay_s,
            grace_s=grace_s, oracle=oracle)}

    return _run(work)


def list_series() -> int:
    async def work(aio: AsyncLootify) -> dict:
        return {"series": await aio.list_series()}

    return _run(work)


def stop_series(series_id: str) -> int:
    async def work(aio: AsyncLootify) -> dict:
        return {"series": await aio.stop_series(series_id)}

    return _run(work)


def post_round_result(series_id: str, round_no: int, winner: str) -> int:
    async def work(aio: AsyncLootify) -> dict:
        await aio.post_round_result(series_id, round_no, winner)
        return {"series_id": series_id, "round_no": round_no, "winner": winner}

    return _run(work)
