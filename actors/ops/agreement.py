"""Do the entities in the hosts' memory agree with PostgreSQL?

A host answers from memory, so a bug that let memory run ahead of (or behind) the
database would show to players long before the ledger audit saw it. For every entity
activated now, its answer through the router is compared with its row; only the
activated ones, so an audit never loads a whole database into the hosts.

A busy entity may change between the two reads: a mismatch is read again a few times
and reported only if it persists.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import asyncpg

from actors.client import AsyncLootify
from actors.errors import NotFound

ATTEMPTS = 3
RETRY_PAUSE_S = 0.2
CALL_TIMEOUT_S = 30.0


async def activated_ids(client: AsyncLootify, kind: str) -> list[str]:
    router = client.routers[kind]
    per_host = await asyncio.wait_for(
        asyncio.gather(*(h.activated.remote() for h in router.handles)), CALL_TIMEOUT_S
    )
    return sorted({entity_id for ids in per_host for entity_id in ids})


async def _wallet_pair(
    client: AsyncLootify, conn: asyncpg.Connection, user_id: str
) -> tuple[Any, Any]:
    balance = await asyncio.wait_for(client.wallet(user_id).balance(), CALL_TIMEOUT_S)
    row = await conn.fetchrow(
        "select available, reserved from wallets.wallets where user_id = $1::uuid", user_id
    )
    stored = (row["available"], row["reserved"]) if row else (0, 0)
    return (balance.available, balance.reserved), stored


async def _market_pair(
    client: AsyncLootify, conn: asyncpg.Connection, market_id: str
) -> tuple[Any, Any]:
    row = await conn.fetchrow(
        "select status, winner, version, odds from bets.markets where id = $1::uuid", market_id
    )
    stored = row and (row["status"], row["winner"], row["version"], json.loads(row["odds"]))
    try:
        view = await asyncio.wait_for(client.market(market_id).state(), CALL_TIMEOUT_S)
    except NotFound:  # activated by a message for a market that does not exist
        return None, stored
    odds = {
        s["key"]: None if s["odds"] is None else int(Decimal(s["odds"]) * 100)
        for s in view["selections"]
    }
    return (view["status"], view["winner"], view["version"], odds), stored


_PAIRS = {"wallets": _wallet_pair, "markets": _market_pair}


async def disagreements(client: AsyncLootify, conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """`{kind, id, memory, stored}` for each activated entity whose memory and row
    differ; empty when they all agree."""
    found = []
    for kind, pair in _PAIRS.items():
        for entity_id in await activated_ids(client, kind):
            for attempt in range(ATTEMPTS):
                memory, stored = await pair(client, conn, entity_id)
                if memory == stored:
                    break
                if attempt + 1 < ATTEMPTS:
                    await asyncio.sleep(RETRY_PAUSE_S)
            else:
                found.append({"kind": kind, "id": entity_id, "memory": memory, "stored": stored})
    return found
