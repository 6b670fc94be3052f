"""A circuit breaker in front of PostgreSQL: closed, open, half-open.

Without one, every caller of a dead or hung database waits out its own time-out, and
a host's commit cycles queue up behind the one that hangs. With one, the first few
failures (or one statement stuck past `slow_s`) open the circuit, and while it is
open callers fail at once with `CircuitOpen` (503 `unavailable`) without touching the
database. After `open_s` the circuit is half-open: one call goes through as the probe
(every other caller still fails fast); its success closes the circuit, its failure
opens it again for twice as long (exponential backoff with jitter, up to
`max_open_s`), so a database that stays down is probed ever less often, and one that
came back is found within `max_open_s` of its return.

Only failures of the database itself count: a statement PostgreSQL refused (a
constraint, a serialization failure) is an answer, and so a success here. A statement
that is merely slow (waiting for a lock) is no hang while PostgreSQL answers anything
else: a hang is a call in flight past `slow_s` with no answer from PostgreSQL for as
long. A process whose calls are few or serial (a host: one cycle at a time) gives a
`ping` (a fresh connection's `select 1`), and then a hang counts only once a ping has
gone unanswered (`watch`), so a lock, or the process itself being paused, is not taken
for one.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .errors import Unavailable
from .settings import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

# What says the database is unreachable or hung, rather than that it answered.
OUTAGES: tuple[type[BaseException], ...] = (
    OSError,  # connection refused or reset (ConnectionError, socket errors)
    TimeoutError,  # a connect or a statement past its time-out (asyncio.TimeoutError)
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection was closed under the statement
    asyncpg.InternalClientError,  # a connection left mid-statement when the server went
    asyncpg.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
)


# How long a ping may take before PostgreSQL counts as silent.
PING_TIMEOUT_S = 1.0


class CircuitOpen(Unavailable):
    """The database is known to be down: refused at once, nothing was tried."""


class Breaker:
    """One per process and database. Use `guard()` around each use of the database,
    or `admit()` / `succeeded()` / `failed()` by hand; `state` and `snapshot()` tell
    /health and /metrics."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.ping = ping
        # When PostgreSQL last answered anything; without a ping, silence is presumed
        # once a call is slow, with one only once a ping went unanswered.
        self._last_answer = clock()
        self._silent = ping is None
        self.settings = settings or BreakerSettings.from_env()
        self.clock = clock
        self._state = CLOSED
        self._failures = 0
        self._open_for = self.settings.open_s
        self._retry_at = 0.0
        self._probing = False
        # The calls in flight, oldest first: a hang shows as the first one growing old.
        self._in_flight: dict[int, float] = {}
        self._tickets = itertools.count()
        self.opened = 0  # times the circuit opened (a counter for /metrics)
        self.refused = 0  # calls refused without trying

    @property
    def state(self) -> str:
        if self._state == CLOSED and self._hung():
            return OPEN
        if self._state == OPEN and not self._hung() and self.clock() >= self._retry_at:
            return HALF_OPEN
        return self._state

    def healthy(self) -> bool:
        """Closed and nothing hung: the database answers."""
        return self.state == CLOSED

    def _suspect(self) -> bool:
        """A call is slow and PostgreSQL has answered nothing for as long."""
        if not self._in_flight:
            return False
        now, slow = self.clock(), self.settings.slow_s
        oldest = next(iter(self._in_flight.values()))
        return now - oldest > slow and now - self._last_answer > slow

    def _hung(self) -> bool:
        return self._suspect() and (self.ping is None or self._silent)

    def alive(self) -> None:
        """PostgreSQL answered something (a call, a ping)."""
        self._last_answer = self.clock()
        if self.ping is not None:
            self._silent = False

    async def watch(self, interval_s: float) -> None:
        """Ping PostgreSQL whenever a call looks hung (see the module's docstring)."""
        assert self.ping is not None
        while True:
            await asyncio.sleep(interval_s)
            if not self._suspect():
                continue
            task = asyncio.ensure_future(self.ping())
            # Not wait_for: cancelling a hung connection attempt waits on PostgreSQL.
            await asyncio.wait({task}, timeout=PING_TIMEOUT_S)
            if task.done() and task.exception() is None:
                self.alive()
            else:
                self._silent = True
                if not task.done():
                    task.cancel()
                task.add_done_callback(_retrieve)

    def admit(self) -> int:
        """A ticket for one call, or `CircuitOpen`. Hand the ticket to `succeeded` or
        `failed` when the call is over."""
        state = self.state
        if state == OPEN or (state == HALF_OPEN and self._probing):
            self.refused += 1
            raise CircuitOpen(f"{self.name}: PostgreSQL is unavailable; retry shortly")
        if state == HALF_OPEN:
            self._state = HALF_OPEN
            self._probing = True
        ticket = next(self._tickets)
        self._in_flight[ticket] = self.clock()
        return ticket

    def check(self) -> None:
        """`CircuitOpen` while open; a use that must not be the probe (nor count)."""
        if self.state == OPEN:
            self.refused += 1
            raise CircuitOpen(f"{self.name}: PostgreSQL is unavailable; retry shortly")

    def restart(self, ticket: int) -> None:
        """Time the call from now on (kept oldest first: now is the latest start)."""
        if self._in_flight.pop(ticket, None) is not None:
            self._in_flight[ticket] = self.clock()

    def succeeded(self, ticket: int) -> None:
        if self._in_flight.pop(ticket, None) is None:
            return  # its outcome was counted already
        self.alive()
        if self._state != CLOSED:
            self._state = CLOSED
            self._open_for = self.settings.open_s
        self._probing = False
        self._failures = 0

    def failed(self, ticket: int) -> None:
        started = self._in_flight.pop(ticket, None)
        if started is None:
            return  # its outcome was counted already
        probe = self._state == HALF_OPEN
        self._failures += 1
        if probe:
            self._open(backoff=True)
        elif self._state == CLOSED and (
            self._failures >= self.settings.failures
            # A call that hung until it failed, with PostgreSQL silent meanwhile.
            or (self.clock() - started > self.settings.slow_s and self._hung_since(started))
        ):
            self._open(backoff=False)

    def _hung_since(self, started: float) -> bool:
        return self._last_answer <= started and (self.ping is None or self._silent)

    def _open(self, *, backoff: bool) -> None:
        if backoff:
            self._open_for = min(self._open_for * 2, self.settings.max_open_s)
        else:
            self._open_for = self.settings.open_s
            self.opened += 1
        self._state = OPEN
        self._probing = False
        # Jitter: the replicas and hosts that saw the same outage probe at different times.
        self._retry_at = self.clock() + self._open_for * random.uniform(0.5, 1.0)

    def outcome(self, ticket: int, exc: BaseException | None) -> None:
        """Record how a call ended: failed only if `exc` says the database is out."""
        if exc is not None and is_outage(exc):
            self.failed(ticket)
        else:
            self.succeeded(ticket)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[int]:
        """`async with breaker.guard():` around one use of the database (its ticket)."""
        ticket = self.admit()
        try:
            yield ticket
        except asyncio.CancelledError:
            # The caller gave up (its deadline): that says something only of a call
            # that had been hanging.
            started = self._in_flight.get(ticket, self.clock())
            if self.clock() - started > self.settings.slow_s:
                self.failed(ticket)
            else:
                self.forget(ticket)
            raise
        except BaseException as exc:
            self.outcome(ticket, exc)
            raise
        self.succeeded(ticket)

    def forget(self, ticket: int) -> None:
        """A call that ended without telling anything (cancelled early): a probe's
        turn passes to the next caller."""
        self._in_flight.pop(ticket, None)
        if self._state == HALF_OPEN:
            self._probing = False

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self._failures, "opened": self.opened,
                "refused": self.refused}


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGES) and not isinstance(exc, CircuitOpen)


class GuardedPool:
    """An asyncpg pool whose every `acquire` passes `breaker` (the gateway's: its
    statements go through `acquire`): `CircuitOpen` at once while PostgreSQL is known
    to be down, and each use's outcome counted."""

    def __init__(self, pool: asyncpg.Pool, breaker: Breaker) -> None:
        self.pool = pool
        self.breaker = breaker

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        async with self.breaker.guard() as ticket, self.pool.acquire(timeout=timeout) as conn:
            # Timed from here: waiting for a free connection under load is not a hang.
            self.breaker.restart(ticket)
            yield conn

    async def close(self) -> None:
        await self.pool.close()


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
