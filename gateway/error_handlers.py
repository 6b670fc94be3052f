"""The contract's error shape, `{"error": {"code", "message"}}`, for every failure:
`LootifyError`s (also when raised in an actor), validation and routing errors,
unavailable dependencies (503) and anything unexpected (500)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.errors import LootifyError

from .errors import RateLimited, Unauthenticated

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

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
    asyncpg.InternalClientError,  # a connection left mid-statement when the server went
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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LootifyError, _lootify_error)
    app.add_exception_handler(ray.exceptions.RayTaskError, _lootify_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in _UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(Exception, _internal_error)


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


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return error_response(422, "invalid_input", f"{where}: {first.get('msg', 'invalid input')}")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
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
