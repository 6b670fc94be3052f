"""The PubSub broker: one named detached actor between publishers and subscribers
(see `actors.pubsub`)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import ray

from actors.runtime.link import Endpoint

log = logging.getLogger(__name__)

NAME = "pubsub"
WATCH_HOLD_S = 1.0  # a watch call waits this long for a change before answering
LEASE_S = 3.0  # a watcher is waited for this long after its last watch call
FLUSH_S = 0.015
KEEP_WATCHING_S = 2.0  # a publisher unused this long stops watching
POLL_WAIT_S = 1.0
QUEUE_MAX = 100_000  # events per subscriber waiting for its next poll
BUFFER_MAX = 100_000  # events per publisher waiting for a flush
CHANGES_MAX = 50_000  # topic-set changes kept for publishers' deltas
SUBSCRIBER_TTL_S = 30.0  # a subscriber that has not polled for this long is dropped

Event = tuple[str, str, dict]


class Routes(NamedTuple):
    """Who listens, as a publisher learns it: the subscribers of each topic, and where
    each subscriber takes events directly (`Subscriber`'s link; None: through PubSub).
    `full` is the whole map when a delta cannot be given (new caller, restart, too
    old); else `delta` lists `(topic, subscriber id, present)` since the caller's
    version, and `endpoints` covers the subscribers it adds."""

    epoch: str
    version: int
    full: dict[str, list[str]] | None
    delta: list[tuple[str, str, bool]]
    endpoints: dict[str, Endpoint | None]


def pattern_of(topic: str) -> str:
    return topic.split(":", 1)[0] + ":*"


class _Watcher:
    __slots__ = ("acked", "seen")

    def __init__(self) -> None:
        self.acked = -1  # the topic-set version this publisher has applied
        self.seen = time.monotonic()  # when its last watch call arrived


class _Sub:
    __slots__ = ("topics", "endpoint", "queue", "wake", "seen", "lost")

    def __init__(self, endpoint: Endpoint | None) -> None:
        self.topics: set[str] = set()
        self.endpoint = endpoint
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.seen = time.monotonic()
        self.lost = 0


@ray.remote(  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency
    max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=100_000
)
class PubSub:
    """The broker. State is memory only: after a restart subscribers register again."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.subs: dict[str, _Sub] = {}
        self.by_topic: dict[str, set[str]] = {}  # topic -> subscriber ids
        self.version = 0
        # (version, topic, subscriber id, present)
        self.changes: deque[tuple[int, str, str, bool]] = deque()
        self.watchers: dict[str, _Watcher] = {}
        self._topics_changed = asyncio.Event()  # replaced by a fresh one at each change
        self._acked = asyncio.Event()  # likewise, at each acknowledgement
        # After a restart, publishers may still trust a copy from the previous life:
        # new subscriptions wait until those have run out.
        self._trust_ends = time.monotonic() + (
            LEASE_S if ray.get_runtime_context().was_current_actor_reconstructed else 0.0
        )
        self.published = 0
        self.forwarded = 0
        self.delivered = 0
        self._reaper: asyncio.Task | None = None

    # -- subscribers -------------------------------------------------------------------

    def _start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap())

    def _add(self, sub_id: str, sub: _Sub, topic: str) -> bool:
        if topic in sub.topics:
            return False
        sub.topics.add(topic)
        self.by_topic.setdefault(topic, set()).add(sub_id)
        self._changed(topic, sub_id, True)
        return True

    def _remove(self, sub_id: str, sub: _Sub, topic: str) -> None:
        if topic not in sub.topics:
            return
        sub.topics.discard(topic)
        ids = self.by_topic.get(topic)
        if ids is not None:
            ids.discard(sub_id)
            if not ids:
                del self.by_topic[topic]
        self._changed(topic, sub_id, False)

    def _changed(self, topic: str, sub_id: str, present: bool) -> None:
        self.version += 1
        self.changes.append((self.version, topic, sub_id, present))
        while len(self.changes) > CHANGES_MAX:
            self.changes.popleft()
        self._topics_changed.set()
        self._topics_changed = asyncio.Event()

    async def _acknowledged(self, version: int) -> None:
        """Wait until every live watcher has applied `version` of the topic set."""
        pause = self._trust_ends - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        while True:
            now = time.monotonic()
            behind = [
                w.seen
                for w in self.watchers.values()
                if w.acked < version and now - w.seen < LEASE_S
            ]
            if not behind:
                return
            acked = self._acked
            try:
                await asyncio.wait_for(acked.wait(), timeout=min(behind) + LEASE_S - now)
            except TimeoutError:
                pass

    async def register(
        self, sub_id: str, topics: list[str], endpoint: Endpoint | None = None
    ) -> list[str]:
        """Add `topics` to the subscriber (created if unknown, taking events directly at
        `endpoint` if given); the ones it did not have. It answers once every watching
        publisher knows them."""
        self._start()
        sub = self.subs.get(sub_id)
        if sub is None:
            sub = self.subs[sub_id] = _Sub(endpoint)
        sub.seen = time.monotonic()
        new = [t for t in topics if self._add(sub_id, sub, t)]
        if new:
            await self._acknowledged(self.version)
        return new

    async def subscribe(
        self, sub_id: str, topics: list[str], endpoint: Endpoint | None = None
    ) -> tuple[bool, list[str]]:
        """`(known, new)`: `known` False means this broker did not know the subscriber
        (it restarted): the subscriber must `register` all its topics again."""
        known = sub_id in self.subs
        return known, await self.register(sub_id, topics, endpoint)

    async def unsubscribe(self, sub_id: str, topics: list[str]) -> None:
        sub = self.subs.get(sub_id)
        if sub is not None:
            for topic in topics:
                self._remove(sub_id, sub, topic)

    async def drop(self, sub_id: str) -> None:
        sub = self.subs.pop(sub_id, None)
        if sub is not None:
            for topic in list(sub.topics):
                self._remove(sub_id, sub, topic)
            sub.wake.set()

    async def poll(self, sub_id: str, wait_s: float = POLL_WAIT_S) -> tuple[bool, int, list[Event]]:
        """`(known, lost, events)`: the events queued for the subscriber, waiting up to
        `wait_s` for one; `lost` counts events dropped since the last poll (its queue
        overflowed). `known` False: register again."""
        self._start()
        sub = self.subs.get(sub_id)
        if sub is None:
            return False, 0, []
        sub.seen = time.monotonic()
        if not sub.queue:
            sub.wake.clear()
            try:
                await asyncio.wait_for(sub.wake.wait(), timeout=max(0.0, min(wait_s, 5.0)))
            except TimeoutError:
                pass
            if self.subs.get(sub_id) is not sub:
                return False, 0, []
        events = list(sub.queue)
        sub.queue.clear()
        lost, sub.lost = sub.lost, 0
        sub.seen = time.monotonic()
        return True, lost, events

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(SUBSCRIBER_TTL_S / 3)
            cutoff = time.monotonic() - SUBSCRIBER_TTL_S
            for publisher_id in [
                i for i, w in self.watchers.items() if w.seen < time.monotonic() - LEASE_S
            ]:
                del self.watchers[publisher_id]
            for sub_id in [i for i, s in self.subs.items() if s.seen < cutoff]:
                log.warning("dropping subscriber %s: no poll for %ss", sub_id, SUBSCRIBER_TTL_S)
                await self.drop(sub_id)

    # -- publishers --------------------------------------------------------------------

    def _enqueue(self, sub: _Sub, event: Event) -> None:
        if len(sub.queue) >= QUEUE_MAX:
            sub.queue.popleft()
            sub.lost += 1
        sub.queue.append(event)
        sub.wake.set()
        self.delivered += 1

    async def publish(
        self, events: list[Event], epoch: str | None = None, version: int = 0
    ) -> Routes:
        """Deliver `events` to every subscriber of their topics; answer the routes'
        changes since the caller's `(epoch, version)`."""
        self._start()
        self.published += len(events)
        for event in events:
            topic = event[0]
            targets = self.by_topic.get(topic)
            pattern = self.by_topic.get(pattern_of(topic))
            if pattern:
                targets = (targets | pattern) if targets else pattern
            for sub_id in targets or ():
                sub = self.subs.get(sub_id)
                if sub is not None:
                    self._enqueue(sub, event)
        return self.topics_since(epoch, version)

    async def forward(
        self, events: dict[str, list[Event]], epoch: str | None = None, version: int = 0
    ) -> Routes:
        """Queue each subscriber's events (`{subscriber id: events}`): those a publisher
        could not hand it directly. Answered as `publish`."""
        self._start()
        for sub_id, queued in events.items():
            self.forwarded += len(queued)
            sub = self.subs.get(sub_id)
            if sub is not None:
                for event in queued:
                    self._enqueue(sub, event)
        return self.topics_since(epoch, version)

    async def watch(
        self, publisher_id: str, epoch: str | None, version: int, hold_s: float = 0.0
    ) -> Routes:
        """A publisher's long poll: `(epoch, version)` are the routes it has applied
        (its acknowledgement); the answer is as `publish`'s, given as soon as there is
        a change, or after `hold_s` without one."""
        self._start()
        watcher = self.watchers.get(publisher_id)
        if watcher is None:
            watcher = self.watchers[publisher_id] = _Watcher()
        watcher.seen = time.monotonic()
        if epoch == self.epoch and version > watcher.acked:
            watcher.acked = version
            self._acked.set()
            self._acked = asyncio.Event()
        if hold_s > 0 and epoch == self.epoch and version == self.version:
            try:
                await asyncio.wait_for(
                    self._topics_changed.wait(), timeout=min(hold_s, LEASE_S / 2)
                )
            except TimeoutError:
                pass
        return self.topics_since(epoch, version)

    async def unwatch(self, publisher_id: str) -> None:
        """The publisher stopped trusting its copy: stop waiting for it."""
        if self.watchers.pop(publisher_id, None) is not None:
            self._acked.set()
            self._acked = asyncio.Event()

    def topics_since(self, epoch: str | None, version: int) -> Routes:
        if epoch == self.epoch and version == self.version:
            return Routes(self.epoch, self.version, None, [], {})
        oldest = self.changes[0][0] if self.changes else self.version + 1
        if epoch != self.epoch or version + 1 < oldest or version > self.version:
            full = {topic: list(ids) for topic, ids in self.by_topic.items()}
            return Routes(self.epoch, self.version, full, [], self._endpoints(self.subs))
        delta = [(t, s, present) for v, t, s, present in self.changes if v > version]
        return Routes(
            self.epoch, self.version, None, delta,
            self._endpoints(s for _, s, present in delta if present),
        )

    def _endpoints(self, sub_ids: Iterable[str]) -> dict[str, Endpoint | None]:
        return {s: sub.endpoint for s in sub_ids if (sub := self.subs.get(s)) is not None}

    async def ping(self) -> dict[str, Any]:
        self._start()
        return {
            "epoch": self.epoch,
            "subscribers": len(self.subs),
            "topics": len(self.by_topic),
            "watchers": len(self.watchers),
            "published": self.published,
            "forwarded": self.forwarded,
            "delivered": self.delivered,
        }


def pubsub_handle(namespace: str) -> Any:
    """The broker, created if missing (idempotent, from any process)."""
    return PubSub.options(  # type: ignore[attr-defined]
        name=NAME, namespace=namespace, lifetime="detached", get_if_exists=True
    ).remote()
