"""This replica's fan-out of PubSub events to its sockets.

`Hub` holds, per topic, the sockets of this replica that joined it, and one
`Subscriber` callback per topic: a PubSub event is formatted once and then queued to
each socket.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from actors.errors import LootifyError, Unavailable
from actors.pubsub import Subscriber

from .. import views
from ..metrics import Metrics

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)


class Pushable(Protocol):
    def push(self, topic: str, event: str, payload: Any) -> None: ...

    def close(self, code: int) -> None: ...


class Hub:
    def __init__(self, subscriber: Subscriber, metrics: Metrics, currency: str) -> None:
        self.subscriber = subscriber
        self.metrics = metrics
        self.currency = currency
        self.sockets: dict[str, set[Pushable]] = {}
        self.connected: set[Pushable] = set()

    def close_all(self, code: int) -> None:
        """Close every socket of this replica with `code` (the cluster is stopping)."""
        for sock in list(self.connected):
            sock.close(code)

    async def join(self, topic: str, sock: Pushable) -> None:
        self.sockets.setdefault(topic, set()).add(sock)
        try:
            await self.subscriber.subscribe(topic, self._deliver)
        except BaseException as exc:
            self.leave(topic, sock)
            if isinstance(exc, Exception) and not isinstance(exc, LootifyError):
                log.warning("subscribing to %s failed: %r", topic, exc)
                raise Unavailable("live updates are unavailable; rejoin later") from exc
            raise

    def leave(self, topic: str, sock: Pushable) -> None:
        socks = self.sockets.get(topic)
        if socks is None:
            return
        socks.discard(sock)
        if not socks:
            del self.sockets[topic]
            self.subscriber.unsubscribe(topic, self._deliver)

    def _deliver(self, topic: str, event: str, payload: Any) -> None:
        socks = self.sockets.get(topic)
        if not socks or event.startswith("_"):
            return
        body = views.push(event, payload, self.currency)
        for sock in list(socks):
            sock.push(topic, event, body)
        self.metrics.pushes.labels(event).inc(len(socks))
