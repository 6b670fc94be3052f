"""`gateway.failures`: a dependency down is 503 `unavailable`, also when an actor met
it (HTTP answered such a `RayTaskError` 500 `internal_error`, found by the chaos run)."""

from __future__ import annotations

import asyncpg
import ray

from gateway.failures import dependency_failure


def raised_in_actor(cause: Exception) -> Exception:
    return ray.exceptions.RayTaskError("EntityHost.query", "", cause).as_instanceof_cause()


def test_dependency_failures_also_from_inside_an_actor():
    assert dependency_failure(asyncpg.CannotConnectNowError("starting up"))
    assert dependency_failure(ConnectionRefusedError())
    assert dependency_failure(asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"))
    assert dependency_failure(raised_in_actor(asyncpg.CannotConnectNowError("shutting down")))
    assert dependency_failure(raised_in_actor(ConnectionResetError()))


def test_bugs_stay_internal_errors():
    assert not dependency_failure(ValueError("bug"))
    assert not dependency_failure(raised_in_actor(KeyError("bug")))
