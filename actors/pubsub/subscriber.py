"""Subscribing to PubSub: one long-polling subscription per process."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from actors.runtime.liveness import is_actor_down

from .broker import (
    POLL_WAIT_S,
    Event,
    pattern_of,
    pubsub_handle,
)

log = logging.getLogger(__name__)

Callback = Callable[[str, str, dict], None]


class Subscriber:
    """One process's subscription to PubSub, shared by all its sockets and caches.

    `subscribe(topic, callback)` calls `callback(topic, event, payload)` for every
    event of `topic` (or of every topic matching a pattern such as `event:*`), in
    the order PubSub received them, on this process's event loop."""

    def __init__(self, namespace: str, *, poll_wait_s: float = POLL_WAIT_S) -> None:
        self.namespace = namespace
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
