"""What one Serve replica holds: its settings, its PostgreSQL pool, the cluster client,
the PubSub subscription, the odds cache, the rate limiter and the metrics. (The
sockets' hub is the realtime layer's own: see `gateway.app`.)

Nothing here needs the database or the host actors to be up at start: the pool
connects on demand and the cluster client is created on first use, so a replica
starts (and `/health` can say what is wrong) while a dependency is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from actors.client import AsyncLootify, Settings
from actors.errors import Unavailable
from actors.ops.shutdown import DRAIN_TOPIC
from actors.pubsub import Subscriber, get_publisher
from actors.runtime import Breaker, BreakerSettings, GuardedPool
from actors.settings import service_dsn

from . import idempotency, ratelimit
from .auth import tokens
from .cluster_metrics import ClusterMetrics
from .metrics import Metrics
from .odds_cache import CHANGED, OddsCache
from .payments.desk import PaymentDesk, webhook_secret
from .payments.sandbox import SandboxProvider
from .ratelimit import RateLimiter
from .settings import GatewaySettings

CONNECT_TIMEOUT_S = 3.0

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)


class Context:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.cluster_settings = Settings()
        self.metrics = Metrics()
        self.cluster_metrics = ClusterMetrics(self)
        self.pool: GuardedPool | None = None
        # In front of the replica's PostgreSQL pool: while PostgreSQL is down or hung,
        # what needs it answers 503 at once instead of each waiting out a time-out.
        self.breaker = Breaker("gateway", BreakerSettings.from_env())
        self.limiter: RateLimiter | None = None
        self.subscriber = Subscriber(
            self.cluster_settings.namespace, direct=self.cluster_settings.runtime.direct_calls
        )
        self.publisher = get_publisher(self.cluster_settings.namespace)
        self.odds_cache = OddsCache(self.aio, settings.odds_cache_reload_s)
        self._aio: AsyncLootify | None = None
        self._aio_lock = asyncio.Lock()
        self._purging: asyncio.Task | None = None
        # Only in provider mode; direct mode moves money at once, as before.
        self.payments: PaymentDesk | None = None
        # Set when the cluster is stopping (`DRAIN_TOPIC`): the realtime layer closes its
        # sockets (`on_drain`) and takes no new ones.
        self.draining = False
        self.on_drain: list[Callable[[], None]] = []

    async def start(self) -> None:
        # min_size=0: no connection is made here, so the replica starts without the database.
        # `timeout` bounds opening a connection (asyncpg's default is 60 s).
        pool = await asyncpg.create_pool(
            service_dsn("users"), min_size=0, max_size=self.settings.pool_size,
            command_timeout=10, timeout=CONNECT_TIMEOUT_S,
        )
        self.pool = GuardedPool(pool, self.breaker)
        self.limiter = RateLimiter(self.pool, self.settings.rate_limits)
        self.subscriber.callbacks.setdefault("event:*", set()).add(self.odds_cache.on_event)
        self.subscriber.callbacks.setdefault(DRAIN_TOPIC, set()).add(self._drain)
        self.subscriber.on_resync.append(self.odds_cache.schedule_reload)
        self.subscriber.start()
        self.odds_cache.start()
        self._purging = asyncio.ensure_future(self._purge_expired())
        self.cluster_metrics.start()
        if self.settings.payments.via_provider:
            self.payments = self._payment_desk()
            self.payments.start()
        self.metrics.gauge_callback(
            "lootify_pubsub_healthy", "1 when the PubSub long-poll works",
            lambda: 1.0 if self.subscriber.healthy else 0.0,
        )
        self.metrics.counter_callback(
            "lootify_pubsub_events_received", "events this replica's sockets and caches got",
            lambda: self.subscriber.received,
        )
        self.metrics.counter_callback(
            "lootify_pubsub_events_lost", "events PubSub dropped from this replica's queue",
            lambda: self.subscriber.lost,
        )
        self.metrics.gauge_callback(
            "lootify_breaker_open", "1 while this replica's PostgreSQL breaker is not closed",
            lambda: 0.0 if self.breaker.healthy() else 1.0,
        )

    def _payment_desk(self) -> PaymentDesk:
        payments = self.settings.payments
        secret = webhook_secret(payments)
        # The sandbox is the only provider built: it posts its webhooks to the gateway.
        provider = SandboxProvider(payments.webhook_url, secret, payments.sandbox_delay_s,
                                   payments.sandbox_deliveries)
        return PaymentDesk(payments, self.db, self.aio, provider, secret)

    async def _purge_expired(self) -> None:
        """Drop idempotency keys past their 24 hours, revocations of expired tokens and
        old rate-limit windows. Every replica does it; the deletes are harmless twice."""
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                pool = self.db()
                await idempotency.purge_expired(pool)
                await tokens.purge_revoked(pool)
                await ratelimit.purge_expired(pool)
            except Exception as exc:  # the database may be down: try again next time
                log.warning("purging expired rows failed: %r", exc)

    def _drain(self, topic: str, event: str, payload: Any) -> None:
        log.info("draining: the cluster is stopping")
        self.draining = True
        for hook in self.on_drain:
            hook()

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
        self.cluster_metrics.close()
        if self.payments is not None:
            await self.payments.close()
        self.odds_cache.stop()
        if self._aio is not None:
            self._aio.close()
        await self.subscriber.close()
        if self.pool is not None:
            await self.pool.close()

    async def aio(self) -> AsyncLootify:
        """The cluster client, created on first use; 503 while the hosts are unreachable."""
        if self._aio is not None:
            return self._aio
        async with self._aio_lock:
            if self._aio is None:
                try:
                    self._aio = await asyncio.wait_for(
                        AsyncLootify.create(settings=self.cluster_settings, direct=True),
                        timeout=10,
                    )
                except Exception as exc:
                    log.warning("cannot reach the host actors: %r", exc)
                    raise Unavailable("the entity hosts are not reachable; retry") from exc
        return self._aio

    def db(self) -> GuardedPool:
        assert self.pool is not None, "Context.start() was not awaited"
        return self.pool

    def rate(self) -> RateLimiter:
        assert self.limiter is not None, "Context.start() was not awaited"
        return self.limiter

    def publish_changed(self, event_id: Any) -> None:
        """Tell every replica's odds cache that this event (or one of its markets) changed."""
        self.publisher.publish(f"event:{event_id}", CHANGED, {})
