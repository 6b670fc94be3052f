"""The circuit breaker's states on a clock the test moves: closed, open after failures
or a hang, half-open with one probe, backoff while the probes fail."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from actors.runtime.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, CircuitOpen
from actors.runtime.settings import BreakerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker() -> tuple[Breaker, Clock]:
    clock = Clock()
    settings = BreakerSettings(failures=3, slow_s=2.0, open_s=0.5, max_open_s=2.0)
    return Breaker("test", settings, clock), clock


def _fail(b: Breaker, exc: BaseException) -> None:
    b.outcome(b.admit(), exc)


def test_opens_after_failures_in_a_row_and_refuses_without_trying() -> None:
    b, _ = _breaker()
    _fail(b, ConnectionRefusedError())
    _fail(b, ConnectionRefusedError())
    assert b.state == CLOSED
    _fail(b, asyncpg.CannotConnectNowError("starting up"))
    assert b.state == OPEN and b.opened == 1
    with pytest.raises(CircuitOpen) as refused:
        b.admit()
    assert refused.value.status == 503 and refused.value.code == "unavailable"


def test_answers_of_postgres_are_successes() -> None:
    b, _ = _breaker()
    for _ in range(5):
        _fail(b, asyncpg.UniqueViolationError("duplicate"))
        _fail(b, ValueError("a bug, not an outage"))
    assert b.state == CLOSED


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    b, clock = _breaker()
    for _ in range(3):
        _fail(b, TimeoutError())
    clock.now += 1.0  # past open_s with any jitter
    assert b.state == HALF_OPEN
    probe = b.admit()
    with pytest.raises(CircuitOpen):
        b.admit()  # one probe at a time
    b.succeeded(probe)
    assert b.state == CLOSED
    b.succeeded(b.admit())


def test_failed_probes_back_off_up_to_the_ceiling() -> None:
    b, clock = _breaker()
    for _ in range(3):
        _fail(b, OSError())
    waits = []
    for _ in range(5):
        opened_at = clock.now
        while b.state == OPEN:
            clock.now += 0.01
        waits.append(clock.now - opened_at)
        _fail(b, OSError())  # the probe fails
    assert waits[0] <= 0.5 + 0.02
    assert max(waits) <= 2.0 + 0.02
    assert waits[-1] > 0.5  # it backed off


def test_a_hung_call_opens_the_circuit_while_it_hangs() -> None:
    b, clock = _breaker()
    hung = b.admit()
    clock.now += 2.5
    assert b.state == OPEN and not b.healthy()
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.now += 10  # no probe while the hang goes on
    assert b.state == OPEN
    b.succeeded(hung)  # PostgreSQL came back and answered it
    assert b.state == CLOSED


def test_guard_counts_a_cancelled_call_only_if_it_had_hung() -> None:
    b, clock = _breaker()

    async def cancelled_after(seconds: float) -> None:
        async def call() -> None:
            async with b.guard():
                clock.now += seconds
                await asyncio.Event().wait()

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_after(0.1))
    assert b.snapshot()["failures"] == 0 and b.state == CLOSED
    asyncio.run(cancelled_after(3.0))
    assert b.state == OPEN  # a hang that long opens it at once


def test_with_a_ping_a_slow_call_is_a_hang_only_once_postgres_is_silent() -> None:
    """A host's cycle stuck on a lock (PostgreSQL answers pings) is no hang; one on a
    stopped server (the ping goes unanswered) is."""

    async def watched(ping) -> str:
        clock = Clock()
        b = Breaker("host", BreakerSettings(slow_s=2.0), clock, ping=ping)
        b.admit()
        clock.now += 3.0
        assert b.state == CLOSED  # suspicious, not yet confirmed
        watcher = asyncio.ensure_future(b.watch(0.01))
        await asyncio.sleep(1.3)  # past one ping's time-out
        watcher.cancel()
        return b.state

    async def answers() -> None:
        return None

    async def silent() -> None:
        await asyncio.Event().wait()

    assert asyncio.run(watched(answers)) == CLOSED
    assert asyncio.run(watched(silent)) == OPEN
