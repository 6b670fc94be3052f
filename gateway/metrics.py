"""Prometheus metrics of one replica (`gateway.cluster_metrics` serves them with every
other replica's and the hosts')."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lootify_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "lootify_http_request_duration_seconds", "HTTP request latency",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.settlement = Histogram(
            "lootify_settlement_seconds", "operators' settle requests, answered once paid",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.bets_placed = Counter(
            "lootify_bets_placed", "bets accepted", ["channel"], registry=r
        )
        self.bets_refused = Counter(
            "lootify_bets_refused", "bets refused, by reason", ["reason", "channel"], registry=r
        )
        self.ws_connections = Gauge(
            "lootify_ws_connections", "open WebSocket connections", registry=r
        )
        self.ws_refused = Counter(
            "lootify_ws_refused", "WebSocket upgrades refused, by reason", ["reason"], registry=r
        )
        self.ws_frames = Counter(
            "lootify_ws_frames", "WebSocket frames, by direction", ["direction"], registry=r
        )
        self.ws_joins = Gauge(
            "lootify_ws_channels", "joined channels, by topic kind", ["kind"], registry=r
        )
        self.pushes = Counter(
            "lootify_ws_pushes", "server pushes sent to sockets, by event", ["event"], registry=r
        )
        self.cache_events = Gauge(
            "lootify_catalog_events", "events in this replica's read cache", registry=r
        )
        Gauge("lootify_replica_info", "this replica", ["pid"], registry=r).labels(
            str(os.getpid())
        ).set(1)

    def gauge_callback(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(fn)

    def counter_callback(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A counter kept elsewhere (e.g. by the PubSub subscriber), read when scraped."""
        self.registry.register(_CounterOf(name, doc, fn))


class _CounterOf(Collector):
    def __init__(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self.name, self.doc, self.fn = name, doc, fn

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.doc, value=self.fn())
