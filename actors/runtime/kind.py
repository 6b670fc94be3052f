"""What a kind of entity is, as the host sees it, and the registry of kinds.

A kind (wallets, markets, ...) subclasses `EntityKind` and registers itself with
`register_kind`; the runtime never names one. Hosts are sized by the kind's own
settings (`KindSettings.hosts`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import asyncpg

from .commit import Fence, hold_epochs
from .errors import InvalidInput, LootifyError
from .settings import KindSettings

if TYPE_CHECKING:
    from .host import EntityHost

State = TypeVar("State")
Kind = TypeVar("Kind", bound="type[EntityKind[Any]]")


@dataclass
class Cycle:
    """What one commit cycle of a host writes, collected while its messages are applied.

    Handlers record their writes (each kind's own typed values) in `writes`; `mark`
    and `rollback` let the runtime discard the writes of a handler that crashed
    half-way.
    """

    writes: list[Any] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.writes)

    def rollback(self, mark: int) -> None:
        del self.writes[mark:]


@dataclass(slots=True)
class Op:
    entity_id: str
    message: Any
    future: asyncio.Future[Any]
    prepared: Any = None
    # Set by `finish` when what followed the commit turned the answer into a refusal.
    error: LootifyError | None = None


class EntityKind(Generic[State]):
    """The behaviour of one kind of entity, plugged into `EntityHost`.

    Handlers (`apply`) are synchronous and must validate before they mutate: a
    `LootifyError` means "refused, nothing changed"; any other exception means the
    entity may be half-changed, so the runtime drops it and reloads it.
    """

    name: ClassVar[str] = ""
    # The service whose database holds this kind (`LOOTIFY_<SERVICE>_DSN`).
    service: ClassVar[str] = ""
    settings_type: ClassVar[type[KindSettings]] = KindSettings

    def __init__(self, host: EntityHost | None, settings: KindSettings | None = None) -> None:
        self.host: Any = host
        self.settings = settings if settings is not None else self.settings_type()
        self.careful = False  # set for the cycle after a `RetryCycle`

    def take_careful(self) -> bool:
        """Whether this cycle reruns one whose guesses failed; the next one will not."""
        careful, self.careful = self.careful, False
        return careful

    async def load(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, State]:
        """Activate `ids` (all absent from memory) in one query; unknown ids get a
        fresh state."""
        raise NotImplementedError

    async def admit(self, ops: list[Op]) -> None:
        """Work on a delivered batch before it enters the mailbox, concurrently with the
        cycles (e.g. reserving money in other entities). It must not change entities."""

    async def prepare(self, conn: asyncpg.Connection, ops: list[Op]) -> None:
        """Fetch what the cycle's messages need besides entity state (e.g. earlier
        results for idempotency), before any of them is applied."""

    def apply(self, state: State, message: Any, cycle: Cycle, op: Op) -> Any:
        raise NotImplementedError

    async def commit(self, conn: asyncpg.Connection, cycle: Cycle, fence: Fence) -> None:
        """Write the cycle atomically, and only while `fence` holds (`Fenced`
        otherwise). Here: in one transaction, the fence and then `persist`. A kind may
        write it all in one statement instead (`actors.runtime.commit`)."""
        async with conn.transaction():
            await hold_epochs(conn, fence)
            await self.persist(conn, cycle)

    async def persist(self, conn: asyncpg.Connection, cycle: Cycle) -> None:
        """Write the cycle inside the transaction `commit` opened."""
        raise NotImplementedError

    def read(self, state: State, message: Any) -> Any:
        """Answer `message` from `state` alone if it only reads, else None (not a
        sentinel object: Ray ships the host's class by value, so it would not be the
        kind's). The host does so while PostgreSQL is unavailable, for entities whose
        memory is what was committed (none the cycle under way has changed)."""
        return None

    def can_passivate(self, state: State) -> bool:
        return True

    def finish(self, cycle: Cycle) -> Awaitable[None] | None:
        """Work that must follow the commit but precede the answers (e.g. moving money
        in other entities). It runs while the host goes on with the next cycle."""
        return None

    async def tick(self) -> None:
        """Periodic work (e.g. expiring reservations); failures are logged and retried."""

    async def reset(self) -> None:
        """Forget cached results (tests truncate the tables between cases)."""

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        """Reads that need no entity (history, listings) answered by the host."""
        raise InvalidInput(f"unknown query {name}")


_KINDS: dict[str, type[EntityKind[Any]]] = {}


def register_kind(cls: Kind) -> Kind:
    """Class decorator: make a kind known by its `name` (importing its module does)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    _KINDS[cls.name] = cls
    return cls


def kind_named(name: str) -> type[EntityKind[Any]]:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown entity kind {name!r}") from None
