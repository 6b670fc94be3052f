"""What a commit cycle's write checks, and how its failures read.

A cycle commits only while its host holds its shards (`Fence`, checked by
`runtime.hold_epochs` inside the commit), and versioned writes must match every row
they meant to (`runtime.expect_rows`). Both are SQL functions (migration 0009), so a
kind may write a cycle, checks included, in a single statement: one round trip
instead of one per table and per check. `commit_checks` reads their refusals as
`Fenced` and `StaleActivation`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg

FENCED = "LTF01"
STALE = "LTS01"

# The fence's check as the first five parameters of a statement.
HOLD_EPOCHS_SQL = "runtime.hold_epochs($1, $2, $3, $4::int[], $5::bigint[])"


class RetryCycle(Exception):
    """Raised by a kind's commit: the cycle's guesses were wrong; run it again with
    `careful` set (nothing was committed, nothing answered)."""


class StaleActivation(RuntimeError):
    """A versioned write matched fewer rows than it wrote: another activation wrote
    them since this one loaded them (the cycle fails and its entities are rebuilt)."""


class Fenced(Exception):
    """Inside a commit: this process no longer holds a shard of the cycle in the epoch
    it loaded it in (the shard moved, or the host was restarted elsewhere)."""


@dataclass(frozen=True)
class Fence:
    """What a cycle commits under: the host, the incarnation this process holds, and
    the epoch it holds for each of the cycle's shards (shard -> epoch)."""

    kind: str
    host: int
    incarnation: int
    epochs: dict[int, int]

    def args(self) -> tuple[str, int, int, list[int], list[int]]:
        """The parameters of `HOLD_EPOCHS_SQL`, in order."""
        return self.kind, self.host, self.incarnation, list(self.epochs), list(self.epochs.values())


async def hold_epochs(conn: asyncpg.Connection, fence: Fence) -> None:
    """Inside a commit's transaction: lock the fence's lease and directory rows until
    the commit, or raise `Fenced`."""
    with commit_checks():
        await conn.execute(
            "select runtime.hold_epochs($1, $2, $3, $4::int[], $5::bigint[])", *fence.args()
        )


@contextmanager
def commit_checks() -> Iterator[None]:
    """Read the commit checks' refusals as `Fenced` and `StaleActivation`."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == FENCED:
            raise Fenced(str(exc)) from exc
        if exc.sqlstate == STALE:
            raise StaleActivation(str(exc)) from exc
        raise


def check_versioned_update(status: str, expected: int, what: str) -> None:
    """`status` is asyncpg's answer to an `update ... where version = stored` of
    `expected` rows; anything less means a stale activation."""
    if int(status.split()[-1]) != expected:
        raise StaleActivation(f"a {what} changed under this activation")


@contextmanager
def retry_carefully_on_duplicate(reason: str, constraint: str | None = None) -> Iterator[None]:
    """Inserts guessed to be new (a reference or bet id this activation has not
    seen): a duplicate (of `constraint`, if named) means the guess was wrong, so the
    cycle reruns carefully."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if constraint is not None and exc.constraint_name != constraint:
            raise
        raise RetryCycle(reason) from exc
