"""`GET /metrics` for the whole cluster, from whichever replica is scraped.

One scrape shows:
* every host actor's figures, asked of the hosts (`EntityHost.stats`) on the scrape,
  each within a time-out (a host that does not answer is `lootify_host_up 0`);
* every replica's own registry, labelled by replica: the scraped one live, the
  others as they last posted them to the `metrics-board` actor (every few seconds);
* business figures from PostgreSQL: the money the platform holds for its players and
  bets by their market's status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ray
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger("ray.serve").getChild(__name__)

HOST_TIMEOUT_S = 2.0
DB_TIMEOUT_S = 2.0
BOARD_NAME = "metrics-board"
POST_INTERVAL_S = 5.0
# A replica silent this long (gone, or its board restarted) is dropped from the scrape.
STALE_AFTER_S = 60.0


@ray.remote(num_cpus=0, max_restarts=-1)
class MetricsBoard:
    """The replicas' latest registries, so any one of them can show all of them."""

    def __init__(self) -> None:
        self.posts: dict[str, tuple[float, list[Metric]]] = {}

    def post(self, replica: str, families: list[Metric]) -> None:
        self.posts[replica] = (time.time(), families)

    def read(self) -> dict[str, list[Metric]]:
        cutoff = time.time() - STALE_AFTER_S
        self.posts = {r: p for r, p in self.posts.items() if p[0] >= cutoff}
        return {replica: families for replica, (_, families) in self.posts.items()}


def replica_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _labelled(families: Iterable[Metric], replica: str) -> list[Metric]:
    out = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            copy.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value)
        out.append(copy)
    return out


def _merged(per_replica: dict[str, list[Metric]]) -> list[Metric]:
    by_name: dict[str, Metric] = {}
    for replica, families in sorted(per_replica.items()):
        for family in _labelled(families, replica):
            merged = by_name.setdefault(family.name, family)
            if merged is not family:
                merged.samples.extend(family.samples)
    return list(by_name.values())


def _host_families(stats: list[tuple[str, str, dict[str, Any] | None]]) -> list[Metric]:
    labels = ["kind", "host"]
    up = GaugeMetricFamily("lootify_host_up", "1 when the host answered the scrape", labels=labels)
    gauges = {
        "entities": GaugeMetricFamily("lootify_host_active_entities", "entities in memory",
                                      labels=labels),
        "queued": GaugeMetricFamily("lootify_host_mailbox_depth",
                                    "messages waiting for the next commit cycle", labels=labels),
        "shards": GaugeMetricFamily("lootify_host_shards", "shards owned", labels=labels),
        "rss": GaugeMetricFamily("lootify_host_rss_bytes", "resident memory", labels=labels),
    }
    counters = {
        "calls": CounterMetricFamily("lootify_host_calls", "calls received (batches of messages)",
                                     labels=labels),
        "linked_calls": CounterMetricFamily("lootify_host_linked_calls",
                                            "calls received over direct links, not Ray",
                                            labels=labels),
        "activations": CounterMetricFamily("lootify_host_activations",
                                           "entities loaded from PostgreSQL", labels=labels),
        "passivations": CounterMetricFamily("lootify_host_passivations",
                                            "entities dropped from memory", labels=labels),
        "shards_handed_off": CounterMetricFamily("lootify_host_handoffs",
                                                 "shards handed to another host", labels=labels),
        "fenced_cycles": CounterMetricFamily("lootify_host_fenced_cycles",
                                             "cycles refused at commit: the shard had moved",
                                             labels=labels),
    }
    breaker_open = GaugeMetricFamily(
        "lootify_host_breaker_open", "1 while the host's PostgreSQL breaker is not closed",
        labels=labels)
    breaker_refused = CounterMetricFamily(
        "lootify_host_breaker_refused", "messages refused by the open breaker", labels=labels)
    sizes = HistogramMetricFamily("lootify_host_cycle_size", "messages per commit cycle",
                                  labels=labels)
    commits = HistogramMetricFamily("lootify_host_commit_seconds",
                                    "a commit cycle's PostgreSQL transaction", labels=labels)
    for kind, host, figures in stats:
        up.add_metric([kind, host], 0 if figures is None else 1)
        if figures is None:
            continue
        for key, gauge in gauges.items():
            gauge.add_metric([kind, host], figures[key])
        for key, counter in counters.items():
            counter.add_metric([kind, host], figures[key])
        breaker_open.add_metric([kind, host], figures["breaker"]["state"] != "closed")
        breaker_refused.add_metric([kind, host], figures["breaker"]["refused"])
        for histogram, key, total in (
            (sizes, "cycle_sizes", figures["ops"]),
            (commits, "commit_seconds", figures["phase_seconds"]["commit"]),
        ):
            bounds, counts = figures[key]
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([kind, host], buckets, total)
    return [up, *gauges.values(), *counters.values(), breaker_open, breaker_refused, sizes,
            commits]


async def _host_stats(ctx: Context) -> list[tuple[str, str, dict[str, Any] | None]]:
    aio = await ctx.aio()
    pending = [(kind, str(index), handle.stats.remote())
               for kind, router in aio.routers.items()
               for index, handle in enumerate(router.handles)]

    async def one(ref: Any) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(ref, HOST_TIMEOUT_S)
        except Exception:  # down or busy: shown as lootify_host_up 0
            return None

    answers = await asyncio.gather(*(one(ref) for _, _, ref in pending))
    return [(kind, index, answer) for (kind, index, _), answer in zip(pending, answers,
                                                                        strict=True)]


async def _business_families(ctx: Context) -> list[Metric]:
    async with ctx.db().acquire(timeout=DB_TIMEOUT_S) as conn:
        held = await conn.fetchrow(
            "select coalesce(sum(available), 0) as available, "
            "coalesce(sum(reserved), 0) as reserved from wallets.wallets",
            timeout=DB_TIMEOUT_S,
        )
        bets = await conn.fetch(
            "select m.status, count(*) as bets, coalesce(sum(b.amount), 0) as staked "
            "from bets.bets b join bets.markets m on m.id = b.market_id group by m.status",
            timeout=DB_TIMEOUT_S,
        )
        stakes = await conn.fetchrow(
            "select count(*) as open, coalesce(sum(amount), 0) as amount, "
            "coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as oldest "
            "from wallets.open_stakes",
            timeout=DB_TIMEOUT_S,
        )
    money = GaugeMetricFamily("lootify_players_money_minor_units",
                              "money the platform holds for its players (TVL)", labels=["state"])
    money.add_metric(["available"], held["available"])
    money.add_metric(["reserved"], held["reserved"])
    count = GaugeMetricFamily("lootify_bets_by_market_status", "bets, by their market's status",
                              labels=["status"])
    staked = GaugeMetricFamily("lootify_stakes_by_market_status_minor_units",
                               "stakes, by their market's status", labels=["status"])
    for row in bets:
        count.add_metric([row["status"]], row["bets"])
        staked.add_metric([row["status"]], row["staked"])
    open_stakes = [
        GaugeMetricFamily("lootify_open_stakes", "stakes taken whose bets are not yet "
                          "recorded or returned", value=stakes["open"]),
        GaugeMetricFamily("lootify_open_stakes_minor_units", "the money of the open stakes",
                          value=stakes["amount"]),
        GaugeMetricFamily("lootify_oldest_open_stake_seconds", "how long the oldest open stake "
                          "has been open (past LOOTIFY_OPEN_STAKE_TIMEOUT_S and a few seconds, "
                          "recovery is not returning it)", value=stakes["oldest"]),
    ]
    return [money, count, staked, *open_stakes]


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class ClusterMetrics:
    """Posts this replica's registry to the board every few seconds; renders the
    cluster's figures on a scrape."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.replica = replica_name()
        self._board: Any = None
        self._posting: asyncio.Task | None = None

    def _board_handle(self) -> Any:
        if self._board is None:
            self._board = MetricsBoard.options(  # type: ignore[attr-defined]
                name=BOARD_NAME, namespace=self.ctx.cluster_settings.namespace,
                lifetime="detached", get_if_exists=True,
            ).remote()
        return self._board

    def start(self) -> None:
        self._posting = asyncio.ensure_future(self._post_forever())

    def close(self) -> None:
        if self._posting is not None:
            self._posting.cancel()

    async def _post_forever(self) -> None:
        while True:
            try:
                families = list(self.ctx.metrics.registry.collect())
                await asyncio.wait_for(
                    self._board_handle().post.remote(self.replica, families), HOST_TIMEOUT_S
                )
            except Exception as exc:  # the board may be restarting: post again later
                log.warning("posting metrics failed: %r", exc)
                self._board = None
            await asyncio.sleep(POST_INTERVAL_S)

    async def render(self) -> bytes:
        """The Prometheus text of the whole cluster (see the module's doc)."""
        try:
            replicas = await asyncio.wait_for(self._board_handle().read.remote(), HOST_TIMEOUT_S)
        except Exception as exc:  # the board is restarting: show this replica alone
            log.warning("metrics board unreachable: %r", exc)
            replicas = {}
        replicas[self.replica] = list(self.ctx.metrics.registry.collect())
        families = _merged(replicas)
        try:
            families += _host_families(await _host_stats(self.ctx))
        except Exception as exc:  # hosts unreachable: /health says why
            log.warning("host figures unavailable: %r", exc)
        try:
            families += await _business_families(self.ctx)
        except Exception as exc:
            log.warning("business figures unavailable: %r", exc)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return generate_latest(registry)
