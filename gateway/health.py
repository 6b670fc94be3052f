"""`/health`: PostgreSQL, the host actors, PubSub and the round scheduler, each checked
with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .context import Context

# Each check runs at once with the others and gets this long, so `/health` answers
# within a second whatever hangs (a load balancer's probe must not hang with it).
CHECK_TIMEOUT_S = 0.8


async def _timed(coro: Any, timeout: float) -> tuple[bool, Any, float]:
    start = time.perf_counter()
    task = asyncio.ensure_future(coro)
    # Not wait_for: it waits for the cancelled check to finish, and cancelling a query
    # on a hung PostgreSQL waits on PostgreSQL (asyncpg sends it a cancel request).
    await asyncio.wait({task}, timeout=timeout)
    elapsed_ms = (time.perf_counter() - start) * 1000
    if not task.done():
        task.cancel()
        task.add_done_callback(_ignore_outcome)
        return False, f"TimeoutError: no answer within {timeout:g} s", elapsed_ms
    exc = task.exception()
    if exc is not None:
        return False, f"{type(exc).__name__}: {exc}"[:200], elapsed_ms
    return True, task.result(), elapsed_ms


def _ignore_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


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
        # Through the breaker: open, it answers at once; half-open, this may be its probe.
        async with ctx.db().acquire(timeout=CHECK_TIMEOUT_S) as c:
            return await c.fetchval("select 1", timeout=CHECK_TIMEOUT_S)

    async def hosts() -> dict[str, Any]:
        aio = await ctx.aio()
        out = {}
        for kind in aio.routers:
            results = await asyncio.gather(
                *(_timed(h.stats.remote(), CHECK_TIMEOUT_S) for h in aio.routers[kind].handles)
            )
            out[kind] = results
        return out

    async def pubsub() -> Any:
        return await ctx.subscriber._get_handle().ping.remote()

    async def rounds() -> Any:
        return await (await ctx.aio()).scheduler_status()

    (pg_ok, pg_val, pg_ms), (h_ok, h_val, _), (ps_ok, ps_val, ps_ms), sched = (
        await asyncio.gather(
            _timed(pg(), CHECK_TIMEOUT_S), _timed(hosts(), CHECK_TIMEOUT_S),
            _timed(pubsub(), CHECK_TIMEOUT_S), _timed(rounds(), CHECK_TIMEOUT_S),
        )
    )
    checks: dict[str, Any] = {
        "postgres": {"status": "ok" if pg_ok else "error", "latency_ms": round(pg_ms, 2),
                     "breaker": ctx.breaker.state}
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
                "breakers_open": sum(v["breaker"]["state"] != "closed" for v in up),
            }
            unhealthy = unhealthy or not up
            degraded = degraded or len(up) < len(results)
    status = "unhealthy" if unhealthy else ("degraded" if degraded else "healthy")
    return status, checks
