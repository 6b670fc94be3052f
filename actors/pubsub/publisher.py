"""Publishing to PubSub: buffered, batched, and dropping what nobody listens to."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Hashable
from typing import Any

from actors.runtime.liveness import is_actor_down

from .broker import (
    BUFFER_MAX,
    FLUSH_S,
    KEEP_WATCHING_S,
    LEASE_S,
    WATCH_HOLD_S,
    Event,
    pattern_of,
    pubsub_handle,
)

log = logging.getLogger(__name__)


class Publisher:
    """Buffers events and sends them to PubSub in one call every ~`interval` seconds.

    `publish` never blocks and never raises for delivery problems: events are
    ephemeral (a lost one is made good when the client resyncs)."""

    def __init__(self, namespace: str, *, interval: float = FLUSH_S) -> None:
        self.namespace = namespace
        self.interval = interval
        self.id = uuid.uuid4().hex
        self._handle: Any = None
        self._buffer: list[Event | None] = []
        self._latest: dict[tuple, int] = {}  # coalescing key -> index in _buffer
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._epoch: str | None = None
        self._version = 0
        self._topics: set[str] = set()
        self._trusted_until = float("-inf")
        self._used_at = float("-inf")
        self._watcher: asyncio.Task | None = None
        self.sent = 0
        self.dropped = 0  # events nobody subscribed to
        self.lost = 0  # events that could not be delivered (PubSub down, overflow)

    def _trusted(self) -> bool:
        self._used_at = now = time.monotonic()
        if self._watcher is None or self._watcher.done():
            try:
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
            except RuntimeError:  # no loop here: flushes still ask for the topics
                pass
        return now < self._trusted_until

    def _pubsub(self) -> Any:
        if self._handle is None:
            self._handle = pubsub_handle(self.namespace)
        return self._handle

    async def _ask(self, hold_s: float) -> None:
        """One watch call: learn the topic set and acknowledge what was applied."""
        sent, watcher_id = time.monotonic(), self.id
        try:
            answer = await self._pubsub().watch.remote(
                watcher_id, self._epoch, self._version, hold_s
            )
        except Exception:
            self._trusted_until = float("-inf")
            raise
        self._learn(answer)
        # PubSub waits for this watcher until LEASE_S after the call arrived, unless it
        # was unwatched meanwhile (then the publisher watches under a new id).
        if watcher_id == self.id:
            self._trusted_until = max(self._trusted_until, sent + LEASE_S)

    async def _watch(self) -> None:
        """While the publisher is in use, keep its copy of the topic set current."""
        backoff = self.interval
        try:
            while time.monotonic() - self._used_at < KEEP_WATCHING_S:
                try:
                    await self._ask(WATCH_HOLD_S)
                    backoff = self.interval
                except Exception as exc:  # the next flush asks again
                    if is_actor_down(exc):
                        self._handle = None
                    log.debug("watching the topics failed: %r", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
        finally:
            # First stop trusting, then say so; a watch call still on its way cannot
            # renew the trust, as later calls go under a new id.
            self._trusted_until = float("-inf")
            watcher_id, self.id = self.id, uuid.uuid4().hex
            if self._handle is not None:
                self._handle.unwatch.remote(watcher_id)

    def _wanted(self, topic: str) -> bool:
        return topic in self._topics or pattern_of(topic) in self._topics

    def wants(self, topic: str) -> bool:
        """False only when `topic` is known to have no subscriber, so a publisher can
        skip building a payload nobody will read."""
        return not self._trusted() or self._wanted(topic)

    def publish(
        self, topic: str, event: str, payload: dict[str, Any], coalesce: Hashable = None
    ) -> None:
        """Queue an event. With `coalesce`, it replaces a queued event of the same topic,
        event and `coalesce` key (e.g. a market's id for its odds)."""
        if self._trusted() and not self._wanted(topic):
            self.dropped += 1
            return
        if coalesce is not None:
            key = (topic, event, coalesce)
            old = self._latest.get(key)
            if old is not None:
                self._buffer[old] = None
            self._latest[key] = len(self._buffer)
        self._buffer.append((topic, event, payload))
        if len(self._buffer) > BUFFER_MAX:
            self._trim()
        self._schedule()

    def _trim(self) -> None:
        keep = [e for e in self._buffer if e is not None][-BUFFER_MAX // 2 :]
        self.lost += len(self._buffer) - len(keep)
        self._buffer = list(keep)
        self._latest.clear()

    def _schedule(self) -> None:
        if self._timer is not None or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("Publisher.publish outside an event loop: event kept for later")
            return
        self._timer = loop.call_later(self.interval, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        backoff = self.interval
        while True:
            batch = [e for e in self._buffer if e is not None]
            self._buffer = []
            self._latest = {}
            try:
                if not self._trusted():
                    # Every event of the batch was published before this call, so its
                    # answer may drop the unwanted ones.
                    await self._ask(0.0)
                kept = [e for e in batch if self._wanted(e[0])]
                self.dropped += len(batch) - len(kept)
                batch = kept
                if batch:
                    answer = await self._pubsub().publish.remote(batch, self._epoch, self._version)
                    self.sent += len(batch)
                    self._learn(answer)
            except Exception as exc:  # delivery is best effort: drop, back off, go on
                self.lost += len(batch)
                self._epoch = None
                self._trusted_until = float("-inf")
                if is_actor_down(exc):
                    self._handle = None
                log.warning("publish of %d events failed: %s", len(batch), type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                if not self._buffer:
                    return
                continue
            if not self._buffer:
                return
            await asyncio.sleep(self.interval)

    def _learn(self, answer: tuple) -> None:
        epoch, version, full, delta = answer
        if epoch == self._epoch and version < self._version:
            return  # overtaken by a newer answer (a flush and a watch crossed)
        if full is not None:
            self._topics = set(full)
        else:
            for topic, present in delta:
                if present:
                    self._topics.add(topic)
                else:
                    self._topics.discard(topic)
        self._epoch, self._version = epoch, version

    async def drain(self) -> None:
        """Send what is buffered now (tests, shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._start_flush()
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


_publishers: dict[str, Publisher] = {}


def get_publisher(namespace: str) -> Publisher:
    """This process's publisher for `namespace`."""
    publisher = _publishers.get(namespace)
    if publisher is None:
        publisher = _publishers[namespace] = Publisher(namespace)
    return publisher
