"""The FastAPI application of one replica: routes, the contract's error shape, the
body-size limit, request metrics, `/health`, `/metrics` and the Phoenix socket."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import ray
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.errors import LootifyError, RateLimited, Unauthenticated

from . import api_accounts, api_betting, ws
from .schemas import HealthOut

if TYPE_CHECKING:
    from .context import Context

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

MAX_BODY = int(os.environ.get("LOOTIFY_MAX_BODY_BYTES", 64 * 1024))
_STATUS_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_input", 429: "rate_limited",
    503: "unavailable",
}
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.GetTimeoutError,
)


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _unwrap(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, LootifyError):
        return cause
    return exc


async def _lootify_error(request: Request, exc: Exception) -> JSONResponse:
    err = _unwrap(exc)
    if not isinstance(err, LootifyError):
        return await _internal_error(request, exc)
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.details.get("retry_after", 1))
    if isinstance(err, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(err.status, err.code, err.message, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return error_response(422, "invalid_input", f"{where}: {first.get('msg', 'invalid input')}")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable on %s: %r", request.url.path, exc)
    return error_response(503, "unavailable", "a dependency is unavailable; retry")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


class BodyLimit:
    """413 for a body over `limit` bytes, by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
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
                    raise _TooLarge()
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

    def __init__(self) -> None:
        super().__init__(413, f"the body is larger than {MAX_BODY} bytes")


class RequestMetrics:
    """Counts and times every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.metrics = ctx.metrics

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
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Lootify",
        version="1.0.0",
        description="Sports betting on Ray: wallets, events, markets and bets. Money and "
        "odds are decimal strings with two places; errors are "
        '`{"error": {"code", "message"}}`.',
    )
    app.state.ctx = ctx
    app.add_exception_handler(LootifyError, _lootify_error)
    app.add_exception_handler(ray.exceptions.RayTaskError, _lootify_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in _UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(api_accounts.router)
    app.include_router(api_betting.router)

    @app.get("/health", response_model=HealthOut, tags=["operations"],
             responses={503: {"model": HealthOut}})
    async def health() -> JSONResponse:
        status, checks = await check_health(ctx)
        return JSONResponse({"status": status, "checks": checks},
                            status_code=503 if status == "unhealthy" else 200)

    @app.get("/metrics", response_class=Response, tags=["operations"])
    async def metrics() -> Response:
        body, content_type = ctx.metrics.render()
        return Response(body, media_type=content_type)

    @app.websocket("/socket/websocket")
    async def socket(websocket: WebSocket) -> None:
        await ws.serve_socket(websocket, ctx)

    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics, ctx=ctx)
    return app


async def _timed(coro: Any, timeout: float) -> tuple[bool, Any, float]:
    start = time.perf_counter()
    try:
        value = await asyncio.wait_for(coro, timeout)
        return True, value, (time.perf_counter() - start) * 1000
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:200], (time.perf_counter() - start) * 1000


async def check_health(ctx: Context) -> tuple[str, dict[str, Any]]:
    """PostgreSQL, every host actor, PubSub. Unhealthy (503) when PostgreSQL or a whole
    kind of hosts is down; degraded when PubSub or some hosts are."""

    async def pg() -> Any:
        async with ctx.db().acquire(timeout=2) as c:
            return await c.fetchval("select 1")

    async def hosts() -> dict[str, Any]:
        aio = await ctx.aio()
        out = {}
        for kind in aio.routers:
            results = await asyncio.gather(
                *(_timed(h.stats.remote(), 2.0) for h in aio.routers[kind].handles)
            )
            out[kind] = results
        return out

    async def pubsub() -> Any:
        return await ctx.subscriber._get_handle().ping.remote()

    (pg_ok, pg_val, pg_ms), (h_ok, h_val, _), (ps_ok, ps_val, ps_ms) = await asyncio.gather(
        _timed(pg(), 2.0), _timed(hosts(), 3.0), _timed(pubsub(), 2.0)
    )
    checks: dict[str, Any] = {
        "postgres": {"status": "ok" if pg_ok else "error", "latency_ms": round(pg_ms, 2)}
        | ({} if pg_ok else {"error": pg_val}),
        "pubsub": {"status": "ok" if ps_ok and ctx.subscriber.healthy else "error",
                   "latency_ms": round(ps_ms, 2)}
        | ({"subscribers": ps_val["subscribers"]} if ps_ok else {"error": ps_val}),
        "catalog": {"status": "ok" if ctx.catalog.loaded else "loading",
                    "events": len(ctx.catalog.events)},
    }
    unhealthy = not pg_ok
    degraded = not (ps_ok and ctx.subscriber.healthy)
    if not h_ok:
        checks["hosts"] = {"status": "error", "error": h_val}
        unhealthy = True
    else:
        for kind, results in h_val.items():
            up = [v for ok, v, _ in results if ok]
            checks[f"{kind}_hosts"] = {
                "status": "ok" if len(up) == len(results) else ("degraded" if up else "error"),
                "up": len(up), "total": len(results),
                "entities": sum(v["entities"] for v in up),
            }
            unhealthy = unhealthy or not up
            degraded = degraded or len(up) < len(results)
    status = "unhealthy" if unhealthy else ("degraded" if degraded else "healthy")
    return status, checks
