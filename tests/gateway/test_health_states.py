"""`/health`'s verdicts for failing dependencies, with stand-ins (no cluster needed)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from actors.runtime import Breaker
from gateway.health import check_health


class _Remote:
    def __init__(self, value=None, error: Exception | None = None) -> None:
        self.value, self.error = value, error

    def remote(self, *args):
        async def call():
            if self.error is not None:
                raise self.error
            return self.value

        return call()


class _Pool:
    def __init__(self, up: bool) -> None:
        self.up = up

    def acquire(self, timeout=None):
        pool = self

        class _Conn:
            async def __aenter__(self):
                if not pool.up:
                    raise ConnectionRefusedError("down")
                return self

            async def __aexit__(self, *exc):
                return False

            async def fetchval(self, query, timeout=None):
                return 1

        return _Conn()


def _ctx(pg: bool = True, hosts: tuple[bool, ...] = (True, True), pubsub: bool = True,
         last_tick_s_ago: float | None = 0.5):
    stats = {"entities": 3, "breaker": Breaker("wallets-host-0").snapshot()}
    handles = [SimpleNamespace(stats=_Remote(stats, None if up else RuntimeError("dead")))
               for up in hosts]

    async def scheduler_status():
        if last_tick_s_ago is None:
            raise ValueError("Failed to look up actor with name 'rounds-scheduler'")
        return {"running": True, "last_tick_at": time.time() - last_tick_s_ago,
                "interval_s": 0.5}

    aio = SimpleNamespace(routers={"wallets": SimpleNamespace(handles=handles)},
                          scheduler_status=scheduler_status)
    ping = _Remote({"subscribers": 1}, None if pubsub else RuntimeError("gone"))

    async def get_aio():
        return aio

    return SimpleNamespace(
        db=lambda: _Pool(pg),
        aio=get_aio,
        subscriber=SimpleNamespace(healthy=pubsub, _get_handle=lambda: SimpleNamespace(
            ping=ping)),
        odds_cache=SimpleNamespace(loaded=True, events={}),
        breaker=Breaker("gateway"),
    )


def test_all_up_is_healthy() -> None:
    status, checks = asyncio.run(check_health(_ctx()))
    assert status == "healthy"
    assert checks["wallets_hosts"] == {"status": "ok", "up": 2, "total": 2, "entities": 6,
                                       "breakers_open": 0}
    assert checks["postgres"]["breaker"] == "closed"


def test_postgres_down_is_unhealthy() -> None:
    status, checks = asyncio.run(check_health(_ctx(pg=False)))
    assert status == "unhealthy" and checks["postgres"]["status"] == "error"


def test_all_hosts_of_a_kind_down_is_unhealthy() -> None:
    status, _ = asyncio.run(check_health(_ctx(hosts=(False, False))))
    assert status == "unhealthy"


def test_some_hosts_or_pubsub_down_is_degraded() -> None:
    assert asyncio.run(check_health(_ctx(hosts=(True, False))))[0] == "degraded"
    status, checks = asyncio.run(check_health(_ctx(pubsub=False)))
    assert status == "degraded" and checks["pubsub"]["status"] == "error"


def test_a_missing_or_stalled_round_scheduler_is_degraded() -> None:
    status, checks = asyncio.run(check_health(_ctx()))
    assert checks["rounds_scheduler"]["status"] == "ok"
    status, checks = asyncio.run(check_health(_ctx(last_tick_s_ago=None)))
    assert status == "degraded" and checks["rounds_scheduler"]["status"] == "error"
    status, checks = asyncio.run(check_health(_ctx(last_tick_s_ago=60)))
    assert status == "degraded" and checks["rounds_scheduler"]["status"] == "stalled"
