"""Where a round's result comes from: an operator's word (`bets.round_results`, always
asked first), else the series' oracle adapter, by name (`ADAPTERS`)."""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

import asyncpg

from actors.errors import InvalidInput


class Oracle(Protocol):
    async def result(self, conn: asyncpg.Connection, series_id: str, round_no: int) -> str | None:
        """The winning selection of a locked round, or None while unknown."""


class PostedResults:
    """Results an operator posts (`series.post_result`)."""

    async def result(self, conn: asyncpg.Connection, series_id: str, round_no: int) -> str | None:
        return await conn.fetchval(
            "select winner from bets.round_results where series_id = $1 and round_no = $2",
            series_id,
            round_no,
        )


class SandboxOracle:
    """Stands in for a price feed: names a winner as soon as it is asked, one of the
    series' selections picked by a hash of the series and the round, so that asking
    again (after a restart, from another scheduler) names the same one."""

    async def result(self, conn: asyncpg.Connection, series_id: str, round_no: int) -> str | None:
        selections = await conn.fetchval(
            "select selections from bets.round_series where id = $1", series_id
        )
        if selections is None:
            return None
        return sandbox_winner(series_id, round_no, [s["key"] for s in json.loads(selections)])


def sandbox_winner(series_id: str, round_no: int, keys: list[str]) -> str:
    digest = hashlib.sha256(f"{series_id}:{round_no}".encode()).digest()
    return keys[int.from_bytes(digest[:8], "big") % len(keys)]


ADAPTERS: dict[str, Oracle] = {"sandbox": SandboxOracle()}


def check_oracle(name: object) -> str | None:
    """None (results from operators only) or the name of an adapter."""
    if name is None or name in ADAPTERS:
        return name
    raise InvalidInput(f"oracle must be one of {', '.join(sorted(ADAPTERS))}, or none",
                       field="oracle")
