"""Phoenix.PubSub, mirrored on Ray: host actors publish, Serve replicas subscribe.

* `PubSub` is one named detached actor (`pubsub`, restarted by Ray). It keeps, per
  subscriber (a Serve replica), the set of topics it wants and a bounded queue of
  events for it; a subscriber long-polls that queue (`poll`, waiting up to ~1 s).
  Topics are exact (`user:<id>`) or prefix patterns ending in `*` (`event:*`).
* `Publisher` (one per process, `get_publisher`) buffers `publish()` calls and sends
  them every ~15 ms in one Ray call, dropping events nobody listens to. To know
  who listens, a publisher in use *watches* the set of subscribed topics: a watch
  call (a long poll) answers as soon as the set changes, and the next watch call
  acknowledges the change. A subscription whose topic is new answers only once
  every watching publisher has acknowledged it, so an event published after
  `Subscriber.subscribe` returned is never dropped. A watcher that goes quiet for
  `LEASE_S` is no longer waited for, and a publisher trusts its copy only until
  `LEASE_S` after it sent its last watch call, so neither side outlives the other.
  A publisher that does not trust its copy asks for the set before a flush.
* `Subscriber` (one per replica) keeps the local callbacks per topic, registers its
  topics with PubSub, and re-registers them after PubSub restarts (PubSub then no
  longer knows it). Events are ephemeral: whatever was lost meanwhile, clients
  resync when they rejoin; `on_resync` callbacks (the read caches) reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from .config import RuntimeSettings

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


def _pattern_of(topic: str) -> str:
    return topic.split(":", 1)[0] + ":*"


class _Watcher:
    __slots__ = ("acked", "seen")

    def __init__(self) -> None:
        self.acked = -1  # the topic-set version this publisher has applied
        self.seen = time.monotonic()  # when its last watch call arrived


class _Sub:
    __slots__ = ("topics", "queue", "wake", "seen", "lost")

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.seen = time.monotonic()
        self.lost = 0


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=100_000)
class PubSub:
    """The broker. State is memory only: after a restart subscribers register again."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.subs: dict[str, _Sub] = {}
        self.counts: dict[str, int] = {}  # topic -> subscribers
        self.by_topic: dict[str, set[str]] = {}  # topic -> subscriber ids
        self.version = 0
        self.changes: deque[tuple[int, str, bool]] = deque()  # (version, topic, present)
        self.watchers: dict[str, _Watcher] = {}
        self._topics_changed = asyncio.Event()  # replaced by a fresh one at each change
        self._acked = asyncio.Event()  # likewise, at each acknowledgement
        # After a restart, publishers may still trust a copy from the previous life:
        # new subscriptions wait until those have run out.
        self._trust_ends = time.monotonic() + (
            LEASE_S if ray.get_runtime_context().was_current_actor_reconstructed else 0.0
        )
        self.published = 0
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
        count = self.counts.get(topic, 0)
        self.counts[topic] = count + 1
        if count == 0:
            self._changed(topic, True)
            return True
        return False

    def _remove(self, sub_id: str, sub: _Sub, topic: str) -> None:
        if topic not in sub.topics:
            return
        sub.topics.discard(topic)
        ids = self.by_topic.get(topic)
        if ids is not None:
            ids.discard(sub_id)
            if not ids:
                del self.by_topic[topic]
        count = self.counts.get(topic, 0) - 1
        if count <= 0:
            self.counts.pop(topic, None)
            self._changed(topic, False)
        else:
            self.counts[topic] = count

    def _changed(self, topic: str, present: bool) -> None:
        self.version += 1
        self.changes.append((self.version, topic, present))
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

    async def register(self, sub_id: str, topics: list[str]) -> list[str]:
        """Add `topics` to the subscriber (created if unknown); the ones that had no
        subscriber anywhere before."""
        self._start()
        sub = self.subs.get(sub_id)
        if sub is None:
            sub = self.subs[sub_id] = _Sub()
        sub.seen = time.monotonic()
        new = [t for t in topics if self._add(sub_id, sub, t)]
        if new:
            await self._acknowledged(self.version)
        return new

    async def subscribe(self, sub_id: str, topics: list[str]) -> tuple[bool, list[str]]:
        """`(known, new)`: `known` False means this broker did not know the subscriber
        (it restarted): the subscriber must `register` all its topics again."""
        known = sub_id in self.subs
        return known, await self.register(sub_id, topics)

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

    async def publish(
        self, events: list[Event], epoch: str | None = None, version: int = 0
    ) -> tuple[str, int, list[str] | None, list[tuple[str, bool]]]:
        """Deliver `events`; answer the subscribed-topic changes since the caller's
        `(epoch, version)`: `(epoch, version, full, delta)` with `full` the whole set
        when a delta cannot be given (new caller, restart, too old)."""
        self._start()
        self.published += len(events)
        for event in events:
            topic = event[0]
            targets = self.by_topic.get(topic)
            pattern = self.by_topic.get(_pattern_of(topic))
            if pattern:
                targets = (targets | pattern) if targets else pattern
            if not targets:
                continue
            for sub_id in targets:
                sub = self.subs.get(sub_id)
                if sub is None:
                    continue
                if len(sub.queue) >= QUEUE_MAX:
                    sub.queue.popleft()
                    sub.lost += 1
                sub.queue.append(event)
                sub.wake.set()
                self.delivered += 1
        return self.topics_since(epoch, version)

    async def watch(
        self, publisher_id: str, epoch: str | None, version: int, hold_s: float = 0.0
    ) -> tuple[str, int, list[str] | None, list[tuple[str, bool]]]:
        """A publisher's long poll: `(epoch, version)` is the topic set it has applied
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

    def topics_since(
        self, epoch: str | None, version: int
    ) -> tuple[str, int, list[str] | None, list[tuple[str, bool]]]:
        if epoch == self.epoch and version == self.version:
            return self.epoch, self.version, None, []
        oldest = self.changes[0][0] if self.changes else self.version + 1
        if epoch != self.epoch or version + 1 < oldest or version > self.version:
            return self.epoch, self.version, list(self.counts), []
        delta = [(t, present) for v, t, present in self.changes if v > version]
        return self.epoch, self.version, None, delta

    async def ping(self) -> dict[str, Any]:
        self._start()
        return {
            "epoch": self.epoch,
            "subscribers": len(self.subs),
            "topics": len(self.counts),
            "watchers": len(self.watchers),
            "published": self.published,
            "delivered": self.delivered,
        }


def pubsub_handle(namespace: str | None = None) -> Any:
    """The broker, created if missing (idempotent, from any process)."""
    ns = namespace or RuntimeSettings().namespace
    return PubSub.options(name=NAME, namespace=ns, lifetime="detached", get_if_exists=True).remote()


# -- publishing ----------------------------------------------------------------------------


class Publisher:
    """Buffers events and sends them to PubSub in one call every ~`interval` seconds.

    `publish` never blocks and never raises for delivery problems: events are
    ephemeral (a lost one is made good when the client resyncs)."""

    def __init__(self, namespace: str | None = None, *, interval: float = FLUSH_S) -> None:
        self.namespace = namespace or RuntimeSettings().namespace
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
                    if isinstance(exc, ray.exceptions.ActorDiedError):
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
        return topic in self._topics or _pattern_of(topic) in self._topics

    def wants(self, topic: str) -> bool:
        """False only when `topic` is known to have no subscriber, so a publisher can
        skip building a payload nobody will read."""
        return not self._trusted() or self._wanted(topic)

    def publish(self, topic: str, event: str, payload: dict, coalesce: bool = False) -> None:
        if self._trusted() and not self._wanted(topic):
            self.dropped += 1
            return
        if coalesce:
            key = (topic, event, payload.get("market_id"))
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
                if isinstance(exc, ray.exceptions.ActorDiedError):
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


def get_publisher(namespace: str | None = None) -> Publisher:
    """This process's publisher for `namespace` (default: the settings' namespace)."""
    ns = namespace or RuntimeSettings().namespace
    publisher = _publishers.get(ns)
    if publisher is None:
        publisher = _publishers[ns] = Publisher(ns)
    return publisher


# -- subscribing ---------------------------------------------------------------------------

Callback = Callable[[str, str, dict], None]


class Subscriber:
    """One process's subscription to PubSub, shared by all its sockets and caches.

    `subscribe(topic, callback)` calls `callback(topic, event, payload)` for every
    event of `topic` (or of every topic matching a pattern such as `event:*`), in
    the order PubSub received them, on this process's event loop."""

    def __init__(self, namespace: str | None = None, *, poll_wait_s: float = POLL_WAIT_S) -> None:
        self.namespace = namespace or RuntimeSettings().namespace
        self.id = uuid.uuid4().hex
        self.poll_wait_s = poll_wait_s
        self.callbacks: dict[str, set[Callback]] = {}
        self.on_resync: list[Callable[[], None]] = []
        self._handle: Any = None
        self._registered = False
        self._control = asyncio.Lock()
        self._pending: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self._closed = False
        self.healthy = False
        self.received = 0
        self.lost = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._handle is not None:
            try:
                await asyncio.wait_for(self._handle.drop.remote(self.id), timeout=2.0)
            except Exception:
                pass

    def _get_handle(self) -> Any:
        if self._handle is None:
            self._handle = pubsub_handle(self.namespace)
        return self._handle

    async def subscribe(self, topic: str, callback: Callback) -> None:
        """Deliver `topic`'s events to `callback` from the moment this returns (an
        event published by anyone after that is not dropped)."""
        callbacks = self.callbacks.setdefault(topic, set())
        first = not callbacks
        callbacks.add(callback)
        pending = self._pending.get(topic)
        if not first:
            if pending is not None:  # another socket's subscription is on its way
                await asyncio.shield(pending)
            return
        pending = self._pending[topic] = asyncio.get_running_loop().create_future()
        try:
            await self._subscribe_remote(topic)
        except BaseException as exc:
            self._forget(topic, callback)
            pending.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            pending.exception()  # retrieved: no "never retrieved" warning
            raise
        else:
            pending.set_result(None)
        finally:
            if self._pending.get(topic) is pending:
                del self._pending[topic]

    async def _subscribe_remote(self, topic: str) -> None:
        async with self._control:
            if topic not in self.callbacks:  # unsubscribed meanwhile
                return
            known, _ = await self._get_handle().subscribe.remote(self.id, [topic])
            if not known:
                self._registered = False  # the poll loop registers every topic again

    def unsubscribe(self, topic: str, callback: Callback) -> None:
        if self._forget(topic, callback):
            asyncio.ensure_future(self._unsubscribe_remote(topic))

    def _forget(self, topic: str, callback: Callback) -> bool:
        callbacks = self.callbacks.get(topic)
        if callbacks is None:
            return False
        callbacks.discard(callback)
        if callbacks:
            return False
        del self.callbacks[topic]
        return True

    async def _unsubscribe_remote(self, topic: str) -> None:
        async with self._control:
            if topic in self.callbacks:  # subscribed again meanwhile
                return
            try:
                await self._get_handle().unsubscribe.remote(self.id, [topic])
            except Exception as exc:
                log.warning("unsubscribe %s failed: %s", topic, type(exc).__name__)

    async def _register(self) -> None:
        async with self._control:
            await self._get_handle().register.remote(self.id, list(self.callbacks))
            self._registered = True
        for hook in list(self.on_resync):
            try:
                hook()
            except Exception:
                log.exception("resync hook failed")

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                if not self._registered:
                    await self._register()
                    self.healthy = True
                known, lost, events = await self._get_handle().poll.remote(
                    self.id, self.poll_wait_s
                )
                self.healthy = True
                backoff = 0.05
                if not known:
                    self._registered = False
                    continue
                if lost:
                    self.lost += lost
                    for hook in list(self.on_resync):
                        hook()
                self.received += len(events)
                self._dispatch(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.healthy = False
                self._registered = False
                if isinstance(exc, ray.exceptions.ActorDiedError):
                    self._handle = None
                log.warning("PubSub poll failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, events: list[Event]) -> None:
        for topic, event, payload in events:
            for key in (_pattern_of(topic), topic):
                for callback in list(self.callbacks.get(key, ())):
                    try:
                        callback(topic, event, payload)
                    except Exception:
                        log.exception("subscriber callback for %s failed", topic)
