"""Subscribing to PubSub: one subscription per process, taking events over its own
link and long-polling PubSub for the rest."""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid
from collections.abc import Callable
from typing import Any

import ray

from actors.runtime.link import Endpoint, Listener
from actors.runtime.liveness import is_actor_down

from .broker import (
    LEASE_S,
    POLL_WAIT_S,
    Event,
    pattern_of,
    pubsub_handle,
)

log = logging.getLogger(__name__)

# Beyond the longest a working PubSub holds a call: a registration waits until the
# publishers know it (after a restart of PubSub, for their old leases to end first:
# twice LEASE_S at most), a poll its wait. A hung PubSub fails a socket's join after
# this long, instead of holding it and every join behind it.
CONTROL_TIMEOUT_S = 2 * LEASE_S + 2.0
POLL_MARGIN_S = 5.0

Callback = Callable[[str, str, dict], None]


class Subscriber:
    """One process's subscription to PubSub, shared by all its sockets and caches.

    `subscribe(topic, callback)` calls `callback(topic, event, payload)` for every
    event of `topic` (or of every topic matching a pattern such as `event:*`), in
    the order each publisher published them, on this process's event loop.

    With `direct`, publishers hand events to this process over links to its
    `Listener` (whose endpoint PubSub gives them); PubSub queues only what they could
    not hand over, and this process long-polls that queue."""

    def __init__(
        self, namespace: str, *, poll_wait_s: float = POLL_WAIT_S, direct: bool = True
    ) -> None:
        self.namespace = namespace
        self.id = uuid.uuid4().hex
        self.poll_wait_s = poll_wait_s
        self._listener = Listener(self._take) if direct else None
        self._listening: asyncio.Task[Endpoint | None] | None = None
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
        if self._listener is not None:
            self._listener.close()
        if self._handle is not None:
            try:
                await asyncio.wait_for(self._handle.drop.remote(self.id), timeout=2.0)
            except Exception:  # PubSub drops a subscriber that stops polling anyway
                pass

    async def _endpoint(self) -> Endpoint | None:
        """Where publishers hand this process its events (listening from the first
        call on); None: through PubSub only."""
        if self._listener is None:
            return None
        if self._listening is None:
            self._listening = asyncio.ensure_future(self._listen(self._listener))
        return await asyncio.shield(self._listening)

    async def _listen(self, listener: Listener) -> Endpoint | None:
        try:
            return await listener.start(ray.util.get_node_ip_address())
        except OSError as exc:
            log.warning("no direct delivery of events, all through PubSub: %r", exc)
            return None

    async def _take(self, payload: bytes, _request_ids: list[str] | None) -> bytes:
        """A batch a publisher handed over its link."""
        if not self._closed:
            events = pickle.loads(payload)
            self.received += len(events)
            self._dispatch(events)
        return b""

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
            await asyncio.wait_for(self._subscribe_remote(topic), CONTROL_TIMEOUT_S)
        except BaseException as exc:
            # PubSub may still take the subscription late: undo it there too.
            self.unsubscribe(topic, callback)
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
            endpoint = await self._endpoint()
            known, _ = await self._get_handle().subscribe.remote(self.id, [topic], endpoint)
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
                await asyncio.wait_for(
                    self._get_handle().unsubscribe.remote(self.id, [topic]), CONTROL_TIMEOUT_S
                )
            except Exception as exc:
                log.warning("unsubscribe %s failed: %s", topic, type(exc).__name__)

    async def _register(self) -> None:
        async with self._control:
            endpoint = await self._endpoint()
            await self._get_handle().register.remote(self.id, list(self.callbacks), endpoint)
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
                    await asyncio.wait_for(self._register(), CONTROL_TIMEOUT_S)
                    self.healthy = True
                known, lost, events = await asyncio.wait_for(
                    self._get_handle().poll.remote(self.id, self.poll_wait_s),
                    self.poll_wait_s + POLL_MARGIN_S,
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
                if is_actor_down(exc):
                    self._handle = None
                log.warning("PubSub poll failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, events: list[Event]) -> None:
        for topic, event, payload in events:
            for key in (pattern_of(topic), topic):
                for callback in list(self.callbacks.get(key, ())):
                    try:
                        callback(topic, event, payload)
                    except Exception:
                        log.exception("subscriber callback for %s failed", topic)
