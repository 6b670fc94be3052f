"""`/health`: PostgreSQL, the host actors, PubSub and the round scheduler, each checked
with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .context import Context


async def _timed(coro: Any, timeout: float) -> tuple[bool, Any, float]:
    start = time.perf_counter()
    try:
        value = await asyncio.wait_for(coro, timeout)
        return True, value, (time.perf_counter() - start) * 1000
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:200], (time.perf_counter() - start) * 1000


def _scheduler_check(answered: bool, status: Any) -> dict[str, Any]:
    """The round scheduler: ok when it ticked lately. Down or stuck, recurring rounds
    stop opening and settling but bets go on: degraded, not unhealthy."""
    if not answered:
        return {"status": "error", "error": status}
    last = status["last_tick_at"]
    age = None if last is None else time.time() - last
    stale_after = max(10.0, 10 * status["interval_s"])
    fresh = status["running"] and age is not None and age < stale_after
    return {"status": "ok" if fresh else "stalled",
            "last_tick_s_ago": None if age is None else round(age, 1)}


async def check_health(ctx: Context) -> tuple[str, dict[str, Any]]:
    """PostgreSQL, every host actor, PubSub, the round scheduler. Unhealthy (503) when
    PostgreSQL or a whole kind of hosts is down; degraded when PubSub, some hosts or
    the scheduler are."""

    async def pg() -> Any:
        async with ctx.db().acquire(timeout=2) as c:
            return await c.fetchval("select 1")

    async def hosts() -> dict[str, Any]:
        aio = await ctx.aio()
        out = {}
        for kind in aio.routers:
            results = await asyncio.gather(
                *(_timed(h.stats.remote(), 2.0) for h in aio.routers[kind].handles)
            )
            out[kind] = results
        return out

    async def pubsub() -> Any:
        return await ctx.subscriber._get_handle().ping.remote()

    async def rounds() -> Any:
        return await (await ctx.aio()).scheduler_status()

    (pg_ok, pg_val, pg_ms), (h_ok, h_val, _), (ps_ok, ps_val, ps_ms), sched = (
        await asyncio.gather(_timed(pg(), 2.0), _timed(hosts(), 3.0), _timed(pubsub(), 2.0),
                             _timed(rounds(), 2.0))
    )
    checks: dict[str, Any] = {
        "postgres": {"status": "ok" if pg_ok else "error", "latency_ms": round(pg_ms, 2)}
        | ({} if pg_ok else {"error": pg_val}),
        "pubsub": {"status": "ok" if ps_ok and ctx.subscriber.healthy else "error",
                   "latency_ms": round(ps_ms, 2)}
        | ({"subscribers": ps_val["subscribers"]} if ps_ok else {"error": ps_val}),
        "catalog": {"status": "ok" if ctx.odds_cache.loaded else "loading",
                    "events": len(ctx.odds_cache.events)},
    }
    checks["rounds_scheduler"] = _scheduler_check(*sched[:2])
    unhealthy = not pg_ok
    degraded = not (ps_ok and ctx.subscriber.healthy)
    degraded = degraded or checks["rounds_scheduler"]["status"] != "ok"
    if not h_ok:
        checks["hosts"] = {"status": "error", "error": h_val}
        unhealthy = True
    else:
        for kind, results in h_val.items():
            up = [v for ok, v, _ in results if ok]
            checks[f"{kind}_hosts"] = {
                "status": "ok" if len(up) == len(results) else ("degraded" if up else "error"),
                "up": len(up), "total": len(results),
                "entities": sum(v["entities"] for v in up),
            }
            unhealthy = unhealthy or not up
            degraded = degraded or len(up) < len(results)
    status = "unhealthy" if unhealthy else ("degraded" if degraded else "healthy")
    return status, checks
