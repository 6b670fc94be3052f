"""Which failures mean "a dependency is down, retry" (503 `unavailable`) rather than a
bug (500 `internal_error`): PostgreSQL refusing or dropping connections, an actor dead
or restarting, a wait that timed out. HTTP (`error_handlers`) and the Phoenix socket
(`realtime.phoenix`) answer them alike.

An actor that met one of them raises it wrapped in a `RayTaskError`; the wrapped cause
decides (a market host's query while PostgreSQL restarts is `RayTaskError`
around `CannotConnectNowError`)."""

from __future__ import annotations

import asyncio

import asyncpg
import ray

DEPENDENCY_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # What the pool raises giving back a connection PostgreSQL dropped mid-statement (a
    # shutdown): seen by the chaos run in the Idempotency-Key's claim, answered 500.
    asyncpg.InternalClientError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.GetTimeoutError,
)


def dependency_failure(exc: BaseException) -> bool:
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        return isinstance(cause, DEPENDENCY_FAILURES)
    return isinstance(exc, DEPENDENCY_FAILURES)
