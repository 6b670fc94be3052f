"""Recurring series of pool rounds, as the betting MVP runs them, kept by one
scheduler actor.

A series opens round n as a pool market at `starts_at + n * period_s`, locks it
(closes betting) `open_s` later, settles it when the result source names a
winner, and voids it (every stake refunded) when no result came `grace_s` after
the lock. Each step is idempotent and driven from PostgreSQL, so the scheduler
can crash and restart anywhere: it picks up from the tables.

A series runs either on a fixed period or daily at a time of day in a named
timezone (`actors.markets.schedules`); a daily one asks for the result
`settle_delay_s` after the lock. The result is an operator's (`post_result`), else
the series' oracle adapter's (`actors.markets.oracles`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import ray

from actors.errors import AlreadySettled, Conflict, InvalidInput, InvalidTransition
from actors.runtime import Router, RuntimeSettings, connect_router, kind_named
from actors.settings import service_dsn

from .messages import GetMarket, Settle, Transition, new_market_message
from .oracles import ADAPTERS, Oracle, PostedResults, check_oracle
from .schedules import check_delay, check_timezone, parse_time_of_day, schedule_of
from .settings import MarketSettings

log = logging.getLogger(__name__)
SCHEDULER_NAME = "rounds-scheduler"
_ROUND_NS = uuid.UUID("5b0c2a77-6a55-4f3e-9d1f-0c1c6f7c9e11")


class SeriesSettings(Protocol):
    """The cluster's settings as the scheduler needs them (`actors.client.Settings`)."""

    @property
    def namespace(self) -> str: ...

    @property
    def runtime(self) -> RuntimeSettings: ...

    @property
    def markets(self) -> MarketSettings: ...


def round_market_id(series_id: str, round_no: int) -> str:
    """Deterministic, so opening a round twice opens one market."""
    return str(uuid.uuid5(_ROUND_NS, f"{series_id}:{round_no}"))


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class RoundScheduler:
    """Ticks every `interval_s`; all its state is in PostgreSQL.

    Failures of one step are logged and retried on the next tick; a crash of the
    actor is followed by a restart that resumes from the tables.
    """

    def __init__(
        self,
        dsn: str,
        settings: SeriesSettings,
        interval_s: float = 0.5,
        oracles: dict[str, Oracle] | None = None,
    ) -> None:
        self.dsn = dsn
        self.settings = settings
        self.interval_s = interval_s
        self.posted = PostedResults()
        self.oracles = ADAPTERS if oracles is None else oracles
        self.last_tick_at: float | None = None
        self._loop: asyncio.Future | None = None
        self.pool: asyncpg.Pool | None = None
        self.markets: Router | None = None

    async def start(self) -> bool:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.ensure_future(self._run())
        return True

    async def status(self) -> dict[str, Any]:
        """For `/health`: running, and when its last tick completed (epoch seconds)."""
        running = self._loop is not None and not self._loop.done()
        return {"running": running, "last_tick_at": self.last_tick_at,
                "interval_s": self.interval_s}

    async def _run(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        kind = kind_named("markets")  # by name: this module is part of the kind's package
        self.markets = await connect_router(
            kind, service_dsn(kind.service), self.settings.runtime, self.settings.markets
        )
        while True:
            try:
                await self.tick()
                self.last_tick_at = time.time()
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.interval_s)

    async def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            for s in await conn.fetch("select * from bets.round_series where active"):
                await self._open_due(conn, s, now)
            for r in await conn.fetch(
                "select r.*, s.grace_s, s.settle_delay_s, s.oracle from bets.rounds r "
                "join bets.round_series s on s.id = r.series_id "
                "where r.status in ('open', 'locked') and r.locks_at <= $1",
                now,
            ):
                await self._advance(conn, r, now)

    async def _open_due(self, conn: asyncpg.Connection, s: asyncpg.Record, now: datetime) -> None:
        current = schedule_of(s).current(now)
        if current is None:
            return  # not started, or between a fixed period's rounds
        round_no, locks_at = current
        if await conn.fetchval(
            "select 1 from bets.rounds where series_id = $1 and round_no = $2", s["id"], round_no
        ):
            return
        assert self.markets is not None
        market_id = round_market_id(str(s["id"]), round_no)
        message = new_market_message(
            str(s["event_id"]),
            f"{s['name']} #{round_no}",
            "pool",
            json.loads(s["selections"]),
            None,
            s["takeout"],
            None,
            None,
            None,
            closes_at=locks_at.timestamp(),
        )
        try:
            await self.markets.call(market_id, message)
        except Conflict:
            pass  # opened before a crash
        await conn.execute(
            "insert into bets.rounds (series_id, round_no, market_id, locks_at) "
            "values ($1, $2, $3, $4) on conflict do nothing",
            s["id"],
            round_no,
            market_id,
            locks_at,
        )

    async def _advance(self, conn: asyncpg.Connection, r: asyncpg.Record, now: datetime) -> None:
        assert self.markets is not None
        market_id = str(r["market_id"])
        if r["status"] == "open":
            try:
                await self.markets.call(market_id, Transition("close"))
            except InvalidTransition:
                pass  # closed (or voided) already
            await conn.execute(
                "update bets.rounds set status = 'locked' where series_id = $1 and round_no = $2",
                r["series_id"],
                r["round_no"],
            )
        settles_at = r["locks_at"] + timedelta(seconds=r["settle_delay_s"])
        if now < settles_at:
            return
        winner = await self._result(conn, r)
        if winner is not None:
            try:
                await self.markets.call(market_id, Settle(winner))
            except AlreadySettled:
                pass
            view = await self.markets.call(market_id, GetMarket())
            await self._record(conn, r, "settled" if view["status"] == "settled" else "void")
        elif now >= settles_at + timedelta(seconds=r["grace_s"]):
            try:
                await self.markets.call(market_id, Transition("void"))
            except (InvalidTransition, AlreadySettled):
                pass
            await self._record(conn, r, "void")

    async def _result(self, conn: asyncpg.Connection, r: asyncpg.Record) -> str | None:
        posted = await self.posted.result(conn, r["series_id"], r["round_no"])
        if posted is not None or r["oracle"] is None:
            return posted
        adapter = self.oracles.get(r["oracle"])
        return None if adapter is None else await adapter.result(
            conn, str(r["series_id"]), r["round_no"])

    @staticmethod
    async def _record(conn: asyncpg.Connection, r: asyncpg.Record, status: str) -> None:
        await conn.execute(
            "update bets.rounds set status = $3 where series_id = $1 and round_no = $2",
            r["series_id"],
            r["round_no"],
            status,
        )


def scheduler(settings: SeriesSettings) -> Any:
    """The cluster's one scheduler (created if missing) — start it with `.start.remote()`."""
    return RoundScheduler.options(  # type: ignore[attr-defined]
        name=SCHEDULER_NAME,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote(service_dsn("bets"), settings)


async def create_series(
    conn: asyncpg.Connection,
    event_id: str,
    name: str,
    selections: list[dict],
    takeout: str,
    starts_at: datetime,
    period_s: int,
    open_s: int,
    grace_s: int,
) -> str:
    if not 0 < open_s <= period_s:
        raise InvalidInput("open_s must lie in (0, period_s]", field="open_s")
    new_market_message(event_id, name, "pool", selections, None, takeout, None, None, None)
    series_id = str(uuid.uuid4())
    await conn.execute(
        "insert into bets.round_series (id, event_id, name, selections, takeout, starts_at, "
        "period_s, open_s, grace_s) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        series_id,
        event_id,
        name,
        json.dumps(selections),
        str(takeout),
        starts_at,
        period_s,
        open_s,
        grace_s,
    )
    return series_id


async def create_daily_series(
    conn: asyncpg.Connection,
    event_id: str,
    name: str,
    selections: list[dict],
    takeout: str,
    time_of_day: str,
    timezone: str,
    lock_delay_s: int,
    settle_delay_s: int,
    grace_s: int,
    oracle: str | None,
) -> str:
    """A series whose rounds lock daily at `time_of_day` in `timezone` (plus
    `lock_delay_s`); betting on the first opens now."""
    at = parse_time_of_day(time_of_day)
    zone = check_timezone(timezone)
    delays = [check_delay(v, f) for v, f in ((lock_delay_s, "lock_delay_s"),
                                              (settle_delay_s, "settle_delay_s"),
                                              (grace_s, "grace_s"))]
    new_market_message(event_id, name, "pool", selections, None, takeout, None, None, None)
    series_id = str(uuid.uuid4())
    await conn.execute(
        "insert into bets.round_series (id, event_id, name, selections, takeout, starts_at, "
        "time_of_day, timezone, lock_delay_s, settle_delay_s, grace_s, oracle) "
        "values ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9, $10, $11)",
        series_id, event_id, name, json.dumps(selections), str(takeout), at, zone,
        *delays, check_oracle(oracle),
    )
    return series_id


async def post_result(conn: asyncpg.Connection, series_id: str, round_no: int, winner: str) -> None:
    """An operator's word on a round; posting a different winner later is refused."""
    stored = await conn.fetchval(
        "insert into bets.round_results (series_id, round_no, winner) values ($1, $2, $3) "
        "on conflict (series_id, round_no) do update set winner = bets.round_results.winner "
        "returning winner",
        series_id,
        round_no,
        winner,
    )
    if stored != winner:
        raise Conflict(f"round {round_no} already has the result {stored}")
