"""Publishing: buffered, batched, handed to each subscriber directly, and dropping
what nobody listens to."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections.abc import Hashable
from typing import Any

from actors.runtime.link import Endpoint, Link, LinkDown, LinkRefused, LinkSlot
from actors.runtime.liveness import is_actor_down

from .broker import (
    BUFFER_MAX,
    FLUSH_S,
    KEEP_WATCHING_S,
    LEASE_S,
    WATCH_HOLD_S,
    Event,
    Routes,
    pattern_of,
    pubsub_handle,
)

log = logging.getLogger(__name__)


# A subscriber whose link failed is reached through PubSub meanwhile; its link is
# opened again in the background after LINK_RETRY_S, then after twice as long at each
# failure, up to LINK_RETRY_MAX_S (a node that is gone costs no flush a wait).
LINK_RETRY_S = 1.0
LINK_RETRY_MAX_S = 30.0
# A subscriber that takes longer than this to take a batch is not waited for.
HAND_TIMEOUT_S = 2.0
# Nor is PubSub, beyond a watch's hold: a flush that cannot reach it counts its
# events lost, and the next one tries again.
PUBSUB_TIMEOUT_S = 5.0


class Publisher:
    """Buffers events and sends them every ~`interval` seconds: each subscriber's share
    in one message over a link of its own (as Phoenix.PubSub broadcasts to each node's
    server), or through PubSub in one call for those it cannot reach.

    `publish` never blocks and never raises for delivery problems: events are
    ephemeral (a lost one is made good when the client resyncs). A batch handed over
    a link that broke is sent again through PubSub, so a subscriber may see an event
    twice, or out of order, around a broken link."""

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
        self._routes: dict[str, set[str]] = {}  # topic -> subscriber ids
        self._endpoints: dict[str, Endpoint | None] = {}  # subscriber id -> its link's
        self._peers: dict[str, _Peer] = {}
        self._trusted_until = float("-inf")
        self._used_at = float("-inf")
        self._watcher: asyncio.Task | None = None
        self.sent = 0  # events that had a subscriber
        self.linked = 0  # deliveries handed to a subscriber over its link
        self.forwarded = 0  # deliveries sent through PubSub
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
            answer = await asyncio.wait_for(
                self._pubsub().watch.remote(watcher_id, self._epoch, self._version, hold_s),
                hold_s + PUBSUB_TIMEOUT_S,
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
            self._close_links()

    def _wanted(self, topic: str) -> bool:
        return topic in self._routes or pattern_of(topic) in self._routes

    def _targets(self, topic: str) -> set[str]:
        exact, pattern = self._routes.get(topic), self._routes.get(pattern_of(topic))
        if exact and pattern:
            return exact | pattern
        return exact or pattern or set()

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
                await self._deliver(batch)
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

    async def _deliver(self, batch: list[Event]) -> None:
        shares: dict[str, list[Event]] = {}
        for event in batch:
            targets = self._targets(event[0])
            if not targets:
                self.dropped += 1
                continue
            self.sent += 1
            for sub_id in targets:
                shares.setdefault(sub_id, []).append(event)
        direct = [s for s in shares if self._endpoints.get(s) is not None]
        handed = await asyncio.gather(*(self._hand(s, shares[s]) for s in direct))
        for sub_id, ok in zip(direct, handed, strict=True):
            if ok:
                self.linked += len(shares.pop(sub_id))
        if shares:
            answer = await asyncio.wait_for(
                self._pubsub().forward.remote(shares, self._epoch, self._version),
                PUBSUB_TIMEOUT_S,
            )
            self.forwarded += sum(len(share) for share in shares.values())
            self._learn(answer)

    async def _hand(self, sub_id: str, events: list[Event]) -> bool:
        """Whether the subscriber took `events` over its link."""
        link = await self._link(sub_id)
        if link is None:
            return False
        peer = self._peers[sub_id]
        try:
            await asyncio.wait_for(link.call(pickle.dumps(events, protocol=5)), HAND_TIMEOUT_S)
        except (LinkDown, LinkRefused, TimeoutError) as exc:
            log.debug("handing events to subscriber %s failed: %r", sub_id, exc)
            peer.failed()
            return False
        peer.retry_s = LINK_RETRY_S
        return True

    async def _link(self, sub_id: str) -> Link | None:
        """The subscriber's open link. The first one is opened now, so that its events
        keep their order; one that failed is opened again in the background, and
        meanwhile (None) its events go through PubSub."""
        endpoint = self._endpoints.get(sub_id)
        peer = self._peers.get(sub_id)
        if peer is None or peer.endpoint != endpoint:
            if peer is not None:
                peer.close()
            peer = self._peers[sub_id] = _Peer(endpoint)
        if peer.link is None and peer.retry_at == float("-inf"):
            await peer.open()
        elif (peer.link is None or peer.link.closed) and peer.opening is None:
            if time.monotonic() >= peer.retry_at:
                peer.opening = asyncio.ensure_future(peer.open())
        if peer.link is None or peer.link.closed or self._peers.get(sub_id) is not peer:
            return None
        return peer.link

    def _learn(self, answer: Routes) -> None:
        epoch, version, full, delta, endpoints = answer
        if epoch == self._epoch and version < self._version:
            return  # overtaken by a newer answer (a flush and a watch crossed)
        self._endpoints.update(endpoints)
        if full is not None:
            self._routes = {topic: set(ids) for topic, ids in full.items()}
            gone = set(self._endpoints) - set(endpoints)
        else:
            gone = set()
            for topic, sub_id, present in delta:
                ids = self._routes.get(topic)
                if present:
                    if ids is None:
                        ids = self._routes[topic] = set()
                    ids.add(sub_id)
                elif ids is not None:
                    ids.discard(sub_id)
                    gone.add(sub_id)
                    if not ids:
                        del self._routes[topic]
            if gone:
                gone -= set().union(*self._routes.values())
        for sub_id in gone:
            self._endpoints.pop(sub_id, None)
            peer = self._peers.pop(sub_id, None)
            if peer is not None:
                peer.close()
        self._epoch, self._version = epoch, version

    async def drain(self) -> None:
        """Send what is buffered now (tests, shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._start_flush()
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


    def _close_links(self) -> None:
        """An idle publisher keeps no connections: the next flush opens them again."""
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()


class _Peer(LinkSlot):
    """The link to one subscriber, and when to try it again."""

    __slots__ = ("endpoint", "retry_at", "retry_s")

    def __init__(self, endpoint: Endpoint | None) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.retry_at = float("-inf")
        self.retry_s = LINK_RETRY_S

    async def open(self) -> None:
        try:
            if self.endpoint is None:
                return
            link = await Link.open(self.endpoint)
        except (OSError, TimeoutError, LinkDown) as exc:
            log.debug("no link to a subscriber: %r", exc)
            self.failed()
        else:
            if self.closed:
                link.close()
            else:
                self.link = link
        finally:
            self.opening = None

    def failed(self) -> None:
        if self.link is not None:
            self.link.close()
        self.retry_at = time.monotonic() + self.retry_s
        self.retry_s = min(self.retry_s * 2, LINK_RETRY_MAX_S)


_publishers: dict[str, Publisher] = {}


def get_publisher(namespace: str) -> Publisher:
    """This process's publisher for `namespace`."""
    publisher = _publishers.get(namespace)
    if publisher is None:
        publisher = _publishers[namespace] = Publisher(namespace)
    return publisher
