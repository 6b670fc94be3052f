"""The ASGI middleware of a replica's app: the body-size limit, the request deadline
and request metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_handlers import error_response
from .metrics import Metrics

SETTLE_ROUTE = "/api/markets/{market_id}/settle"


class BodyLimit:
    """413 for a body over `limit` bytes, by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large",
                                  f"the body is larger than {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised from `receive`: FastAPI re-raises HTTPExceptions met while reading the
    body (others become 400), and the handler turns it into the 413 error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class Deadline:
    """503 `unavailable` for an HTTP request not answered within `seconds`: with a
    dependency hung (PostgreSQL stopped), callers learn it in bounded time instead of
    waiting on it. The work is cancelled, not undone: a money operation that still
    completes later is idempotent by its `Idempotency-Key`, so a retry with the same key
    learns the true outcome."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = abandoned = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if abandoned:
                return  # the caller has had its 503
            started = started or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        # Not wait_for: it waits for the cancelled work to finish, and cancelling a
        # query on a hung PostgreSQL waits on PostgreSQL (asyncpg sends a cancel request).
        await asyncio.wait({work}, timeout=self.seconds)
        if work.done():
            work.result()
            return
        if started:
            await work  # answering already: a deadline cannot replace a started answer
            return
        abandoned = True
        work.cancel()
        work.add_done_callback(_retrieve_outcome)
        response = error_response(
            503, "unavailable", f"no answer within {self.seconds:g} s; retry "
            "(with the same Idempotency-Key to learn what became of this request)")
        await response(scope, receive, send)


def _retrieve_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class RequestMetrics:
    """Counts and times every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(label, method, str(status)).inc()
            elapsed = time.perf_counter() - start
            self.metrics.latency.labels(label, method).observe(elapsed)
            if label == SETTLE_ROUTE and status == 200:
                self.metrics.settlement.observe(elapsed)
