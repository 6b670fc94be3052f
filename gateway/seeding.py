"""`lootify seed`: demo players with money, events and open fixed-odds markets.

Every run adds new data (emails carry a run tag), so seeding twice never collides.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from actors.client import AsyncLootify

from .auth import users

SPORTS = (
    ("football", ("home", "Home", "2.10"), ("draw", "Draw", "3.30"), ("away", "Away", "3.60")),
    ("tennis", ("first", "First player", "1.80"), ("second", "Second player", "2.05")),
    ("basketball", ("home", "Home", "1.70"), ("away", "Away", "2.20")),
)
MARKET_NAMES = ("Match winner", "First half", "Second half", "Next score")
# Players are created this many at a time: scrypt per password is the slow part.
CONCURRENCY = 8


@dataclass
class Seeded:
    password: str
    players: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"password": self.password, "players": self.players, "events": self.events}


async def seed(
    client: AsyncLootify,
    users_pool: asyncpg.Pool,
    *,
    players: int,
    events: int,
    markets_per_event: int,
    deposit: int,
    password: str,
    advance: Callable[[int], None],
) -> Seeded:
    """Create the demo data; `advance(n)` after every n items done (players, events,
    markets), for a progress bar."""
    tag = secrets.token_hex(3)
    seeded = Seeded(password)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def player(number: int) -> dict[str, Any]:
        async with gate:
            user = await users.create_user(
                users_pool, f"player{number}-{tag}@demo.lootify.test", f"player{number}", password
            )
            balance = await client.wallet(user.id).deposit(deposit, reference_id=f"seed-{user.id}")
        advance(1)
        return {"id": user.id, "email": user.email, "balance": balance.balance}

    seeded.players = list(await asyncio.gather(*(player(n + 1) for n in range(players))))
    starts_at = datetime.now(UTC) + timedelta(days=1)
    for number in range(events):
        sport, *selections = SPORTS[number % len(SPORTS)]
        event = await client.create_event(f"Demo {sport} match {number + 1}", sport, starts_at)
        advance(1)
        markets = []
        for name in MARKET_NAMES[:markets_per_event]:
            market = await client.create_market(
                event["id"], name, "fixed_odds",
                [{"key": key, "name": label, "odds": odds} for key, label, odds in selections],
                min_stake=100, max_stake=100_000,
            )
            markets.append({"id": market["id"], "name": market["name"]})
            advance(1)
        seeded.events.append({"id": event["id"], "name": event["name"], "markets": markets})
    return seeded
