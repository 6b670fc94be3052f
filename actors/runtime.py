"""The entity runtime: many entities (wallets, markets) hosted in a few Ray actors.

A Ray actor is a process (~95 MB); an entity must cost a few hundred bytes. So, as
Orleans silos host grains, a `EntityHost` actor hosts every entity of the logical
shards the durable directory gives it:

* an id hashes to one of `shards` logical shards; the directory maps shards to
  hosts; hosts are named detached actors, restarted by Ray after any crash;
* an entity is activated on its first message (loaded from PostgreSQL, many at
  once), handles its messages one at a time in arrival order, and is passivated
  after `idle_seconds` without one;
* a host works in rounds: it takes every message queued since the last round,
  applies them in order, writes all their changes in one PostgreSQL transaction
  (group commit), and only then answers them;
* an unexpected exception in a handler fails that message with `EntityCrashed`;
  the entity is dropped after the round and rebuilt from PostgreSQL on its next
  message, while the host and every other entity go on.

What an entity *is* lives in an `EntityKind` (see `actors.wallet`); callers reach
hosts through `Router` (see `actors.client`), which batches messages per host.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
import ray
from asyncpg.pgproto.pgproto import UUID as PgUUID

from .config import RuntimeSettings
from .errors import EntityCrashed, InvalidInput, LootifyError, Unavailable
from .pubsub import get_publisher, pubsub_handle
from .wire import decode_batch, encode_outcomes

log = logging.getLogger(__name__)

State = TypeVar("State")


def shard_of(entity_id: str, shards: int) -> int:
    """Stable across processes and Python versions (unlike `hash`)."""
    digest = hashlib.blake2b(entity_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_id(value: object, *, field_name: str = "id") -> str:
    """Entity ids are UUIDs; one spelling each, so one id is one entity."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value  # the usual case, checked without building a UUID
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{field_name} must be a UUID", field=field_name) from exc


_UUID_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_UUID_VARIANT_RFC = bytes(b & 0x3F | 0x80 for b in range(256))


def random_uuids(count: int) -> list[PgUUID]:
    """Version-4 UUIDs from one read of the system's randomness. The database's
    `gen_random_uuid()` reads it once per row, which was a tenth of the cost of
    storing an operation."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION_4)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT_RFC)
    data = bytes(raw)
    return [PgUUID(data[i : i + 16]) for i in range(0, 16 * count, 16)]


def new_id() -> str:
    """A new entity or bet id: a version-4 UUID in its canonical spelling, made at
    a third of the cost of `str(uuid.uuid4())` (a client makes one per bet)."""
    raw = bytearray(os.urandom(16))
    raw[6], raw[8] = _UUID_VERSION_4[raw[6]], _UUID_VARIANT_RFC[raw[8]]
    return str(PgUUID(bytes(raw)))


class StaleActivation(RuntimeError):
    """A versioned write matched fewer rows than it wrote: another activation wrote
    them since this one loaded them (the round fails and its entities are rebuilt)."""


def check_versioned_update(status: str, expected: int, what: str) -> None:
    """`status` is asyncpg's answer to an `update ... where version = stored` of
    `expected` rows; anything less means a stale activation."""
    if int(status.split()[-1]) != expected:
        raise StaleActivation(f"a {what} changed under this activation")


def host_name(kind: str, index: int) -> str:
    return f"{kind}-host-{index}"


class RetryRound(Exception):
    """Raised by `EntityKind.persist`: the round's guesses were wrong; run it again
    with `careful` set (nothing was committed, nothing answered)."""


class WrongHost(LootifyError):
    """The shard moved: the caller refreshes its directory and resends."""

    status = 503
    code = "wrong_host"


@dataclass
class Round:
    """What one round of a host writes, collected while its messages are applied.

    Handlers record their writes through the kind's own lists here; `mark` and
    `rollback` let the runtime discard the writes of a handler that crashed half-way.
    """

    writes: list[Any] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.writes)

    def rollback(self, mark: int) -> None:
        del self.writes[mark:]


class EntityKind(Generic[State]):
    """The behaviour of one kind of entity, plugged into `EntityHost`.

    Handlers (`apply`) are synchronous and must validate before they mutate: a
    `LootifyError` means "refused, nothing changed"; any other exception means the
    entity may be half-changed, so the runtime drops it and reloads it.
    """

    name: str = ""

    def __init__(self, host: EntityHost) -> None:
        self.host = host
        self.careful = False  # set for the round after a `RetryRound`

    async def load(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, State]:
        """Activate `ids` (all absent from memory) in one query; unknown ids get a
        fresh state."""
        raise NotImplementedError

    async def admit(self, ops: list[Op]) -> None:
        """Work on a delivered batch before it enters the mailbox, concurrently with the
        rounds (e.g. reserving money in other entities). It must not change entities."""

    async def prepare(self, conn: asyncpg.Connection, ops: list[Op]) -> None:
        """Fetch what the round's messages need besides entity state (e.g. earlier
        results for idempotency), before any of them is applied."""

    def apply(self, state: State, message: Any, round_: Round, op: Op) -> Any:
        raise NotImplementedError

    async def persist(self, conn: asyncpg.Connection, round_: Round) -> None:
        """Write the round inside the transaction the runtime opened."""
        raise NotImplementedError

    def can_passivate(self, state: State) -> bool:
        return True

    def finish(self, round_: Round) -> Awaitable[None] | None:
        """Work that must follow the commit but precede the answers (e.g. moving money
        in other entities). It runs while the host goes on with the next round."""
        return None

    async def tick(self) -> None:
        """Periodic work (e.g. expiring reservations); failures are logged and retried."""

    async def reset(self) -> None:
        """Forget cached results (tests truncate the tables between cases)."""

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        """Reads that need no entity (history, listings) answered by the host."""
        raise InvalidInput(f"unknown query {name}")


@dataclass(slots=True)
class Op:
    entity_id: str
    message: Any
    future: asyncio.Future
    prepared: Any = None
    # Set by `finish` when what followed the commit turned the answer into a refusal.
    error: LootifyError | None = None


class Entry:
    """One activated entity in the host's table."""

    __slots__ = ("state", "last_used")

    def __init__(self, state: Any, now: int) -> None:
        self.state = state
        self.last_used = now


def _kind_class(kind: str) -> type[EntityKind]:
    if kind == "wallets":
        from .wallet import WalletKind

        return WalletKind
    if kind == "markets":
        from .market import MarketKind

        return MarketKind
    raise ValueError(f"unknown entity kind {kind!r}")


async def ensure_directory(conn: asyncpg.Connection, kind: str, shards: int, hosts: int) -> None:
    await conn.execute(
        "insert into runtime.shard_directory (kind, shard, host) "
        "select $1, s, s % $3 from generate_series(0, $2 - 1) s "
        "on conflict do nothing",
        kind,
        shards,
        hosts,
    )


async def read_directory(conn: asyncpg.Connection, kind: str) -> list[int]:
    rows = await conn.fetch(
        "select shard, host from runtime.shard_directory where kind = $1 order by shard", kind
    )
    return [r["host"] for r in rows]


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=10_000)
class EntityHost:
    """A Ray actor hosting the entities of some shards of one kind.

    Lifecycle: `__init__` runs at creation and after every restart; it keeps no
    state of its own beyond PostgreSQL, so a restart loses only what was never
    acknowledged. Entities come back lazily on their next message.
    """

    def __init__(self, kind: str, index: int, dsn: str, settings: RuntimeSettings) -> None:
        # A host keeps millions of small long-lived objects; with the default thresholds
        # the cyclic collector rescans them every few thousand allocations.
        gc.set_threshold(100_000, 50, 1000)
        self.kind_name = kind
        self.index = index
        self.dsn = dsn
        self.settings = settings
        self.entities: dict[str, Entry] = {}
        self.queue: list[Op] = []
        self.wake = asyncio.Event()
        # Held by a running round; passivation and resets take it so they never drop
        # an entity a round is working on.
        self.round_lock = asyncio.Lock()
        self.pool: asyncpg.Pool | None = None
        self.directory: list[int] = []
        self.owned: set[int] = set()
        self.kind = _kind_class(kind)(self)
        self.rounds = 0
        self.ops_done = 0
        self.calls = 0
        # Seconds spent per phase of a round, summed (exported as metrics).
        self.phase_seconds = {"load": 0.0, "prepare": 0.0, "apply": 0.0, "commit": 0.0}
        self._started: asyncio.Future | None = None
        # Start right away, after a restart too (recovery must not wait for a caller):
        # the call runs once __init__ has returned.
        ray.get_runtime_context().current_actor.directory_view.remote()

    def _ready(self) -> asyncio.Future:
        # Started on the first call, inside the actor's running event loop.
        if self._started is None or (
            self._started.done() and not self._started.cancelled() and self._started.exception()
        ):
            self._started = asyncio.ensure_future(self._start())
        return self._started

    async def _start(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=4)
        async with self.pool.acquire() as conn:
            hosts = (
                self.settings.wallet_hosts
                if self.kind_name == "wallets"
                else self.settings.market_hosts
            )
            await ensure_directory(conn, self.kind_name, self.settings.shards, hosts)
            self.directory = await read_directory(conn, self.kind_name)
        self.owned = {s for s, h in enumerate(self.directory) if h == self.index}
        self.publisher = get_publisher(self.settings.namespace)
        asyncio.ensure_future(self._rounds())
        asyncio.ensure_future(self._housekeeping())

    # -- the Ray API -------------------------------------------------------------

    async def call(self, payload: bytes) -> bytes:
        """Deliver a batch of `(entity_id, message)` (`wire.encode_batch`); answer each
        `(ok, result|error)` in the same order (`wire.decode_outcomes`), once its effects
        are committed."""
        return encode_outcomes(await self._deliver(decode_batch(payload)))

    async def _deliver(self, batch: list[tuple[str, Any]]) -> list[tuple[bool, Any]]:
        await self._ready()
        self.calls += 1
        loop = asyncio.get_running_loop()
        ops = [Op(entity_id, message, loop.create_future()) for entity_id, message in batch]
        try:
            await self.kind.admit(ops)
        except Exception:
            log.exception("admission failed")
            return [(False, Unavailable("the host could not admit the batch; retry"))] * len(ops)
        self.queue.extend(ops)
        self.wake.set()
        outcomes: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                outcomes.append((True, await op.future))
            except LootifyError as exc:
                outcomes.append((False, exc))
        return outcomes

    async def query(self, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """A read (or catalog write) that needs no entity; answered `(ok, result|error)`."""
        await self._ready()
        try:
            return True, await self.kind.query(name, args)
        except LootifyError as exc:
            return False, exc

    async def directory_view(self) -> list[int]:
        await self._ready()
        return self.directory

    async def stats(self) -> dict[str, Any]:
        import psutil

        await self._ready()
        return {
            "kind": self.kind_name,
            "index": self.index,
            "pid": os.getpid(),
            "rss": psutil.Process().memory_info().rss,
            "entities": len(self.entities),
            "queued": len(self.queue),
            "calls": self.calls,
            "rounds": self.rounds,
            "ops": self.ops_done,
            "phase_seconds": dict(self.phase_seconds),
        }

    async def passivate_all(self) -> int:
        """Drop every idle entity now (tests and benchmarks; normal passivation is by age)."""
        await self._ready()
        async with self.round_lock:
            return self._passivate(cutoff=None)

    async def reset(self) -> None:
        """Forget every activated entity (tests clean the tables between cases)."""
        await self._ready()
        async with self.round_lock:
            self.entities.clear()
            await self.kind.reset()

    def pid(self) -> int:
        return os.getpid()

    # -- rounds ---------------------------------------------------------------------

    async def _rounds(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch, self.queue = self.queue, []
                try:
                    async with self.round_lock:
                        await self._run_round(batch)
                except Exception:  # the loop must survive anything a round does
                    log.exception("round failed")
                    for op in batch:  # memory may be ahead of the database: rebuild
                        self.entities.pop(op.entity_id, None)
                        if not op.future.done():
                            op.future.set_exception(Unavailable("the host failed; retry"))

    async def _run_round(self, batch: list[Op]) -> None:
        now = int(time.monotonic())
        ops: list[Op] = []
        for op in batch:
            # An activated entity was owned when it was loaded, and ownership lasts
            # as long as the host.
            if op.entity_id in self.entities or (
                shard_of(op.entity_id, self.settings.shards) in self.owned
            ):
                ops.append(op)
            else:
                op.future.set_exception(WrongHost(f"{op.entity_id} is not hosted here"))
        if not ops:
            return
        assert self.pool is not None
        round_ = Round()
        phases = self.phase_seconds
        async with self.pool.acquire() as conn:
            t0 = time.perf_counter()
            missing = list({op.entity_id for op in ops if op.entity_id not in self.entities})
            if missing:
                for entity_id, state in (await self.kind.load(conn, missing)).items():
                    self.entities[entity_id] = Entry(state, now)
            t1 = time.perf_counter()
            await self.kind.prepare(conn, ops)
            t2 = time.perf_counter()
            phases["load"] += t1 - t0
            phases["prepare"] += t2 - t1

            answered: list[tuple[Op, Any]] = []
            refused: list[tuple[Op, LootifyError]] = []
            crashed: set[str] = set()
            deferred: list[Op] = []
            for op in ops:
                if op.entity_id in crashed:
                    deferred.append(op)  # rerun after the entity is rebuilt
                    continue
                entry = self.entities[op.entity_id]
                entry.last_used = now
                mark = round_.mark()
                try:
                    answered.append((op, self.kind.apply(entry.state, op.message, round_, op)))
                except LootifyError as exc:
                    refused.append((op, exc))
                except Exception as exc:
                    log.exception("entity %s crashed on %r", op.entity_id, op.message)
                    round_.rollback(mark)
                    crashed.add(op.entity_id)
                    op.future.set_exception(
                        EntityCrashed(f"{type(exc).__name__} in {self.kind_name} entity; rebuilt")
                    )

            t3 = time.perf_counter()
            phases["apply"] += t3 - t2
            try:
                if round_.writes:
                    async with conn.transaction():
                        await self.kind.persist(conn, round_)
                phases["commit"] += time.perf_counter() - t3
            except RetryRound:
                # Memory acted on a guess the database refused (e.g. a reference id
                # used before this activation): rebuild and rerun the round carefully.
                for op in ops:
                    self.entities.pop(op.entity_id, None)
                self.kind.careful = True
                self.queue[:0] = [op for op in ops if not op.future.done()]
                self.wake.set()
                return
            except Exception as exc:  # whatever failed the commit, nothing of the round stands
                log.exception("round commit failed")
                # Memory ran ahead of the database: rebuild every touched entity.
                for op in ops:
                    self.entities.pop(op.entity_id, None)
                for op, _ in answered:
                    op.future.set_exception(Unavailable(f"storage failed: {type(exc).__name__}"))
                return

        for op, error in refused:
            op.future.set_exception(error)
        for entity_id in crashed:
            self.entities.pop(entity_id, None)
        for hook in round_.after_commit:
            hook()
        finishing = self.kind.finish(round_)
        if finishing is None:
            _answer(answered)
        else:
            asyncio.ensure_future(self._answer_after(finishing, answered))
        self.rounds += 1
        self.ops_done += len(ops)
        if deferred:
            self.queue[:0] = deferred
            self.wake.set()

    async def _answer_after(self, finishing: Awaitable[None], answered: list) -> None:
        try:
            await finishing
        except Exception:  # what finish leaves undone, the kind's recovery finishes
            log.exception("finishing a round failed")
        _answer(answered)

    async def _housekeeping(self) -> None:
        interval = max(0.05, min(1.0, self.settings.idle_seconds / 4))
        last_passivation = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.kind.tick()
            except Exception:
                log.exception("tick failed")
            if time.monotonic() - last_passivation >= self.settings.idle_seconds / 2:
                last_passivation = time.monotonic()
                async with self.round_lock:
                    self._passivate(cutoff=int(time.monotonic() - self.settings.idle_seconds))

    def _passivate(self, cutoff: int | None) -> int:
        busy = {op.entity_id for op in self.queue}
        idle = [
            entity_id
            for entity_id, entry in self.entities.items()
            if (cutoff is None or entry.last_used < cutoff)
            and entity_id not in busy
            and self.kind.can_passivate(entry.state)
        ]
        for entity_id in idle:
            del self.entities[entity_id]
        return len(idle)

    def submit(self, entity_id: str, message: Any, *, within: float = 0.0) -> asyncio.Future:
        """Queue a message from inside the host (timers, sagas). With `within`, an idle
        host waits up to that long before it runs a round for it, so that bookkeeping
        rides with the next messages instead of taking a round of its own."""
        loop = asyncio.get_running_loop()
        op = Op(entity_id, message, loop.create_future())
        self.queue.append(op)
        if within > 0:
            loop.call_later(within, self.wake.set)
        else:
            self.wake.set()
        return op.future


def _answer(answered: list[tuple[Op, Any]]) -> None:
    for op, result in answered:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(result)


def host_handles(
    kind: str, count: int, dsn: str, settings: RuntimeSettings
) -> list[ray.actor.ActorHandle]:
    """Get or create the named detached hosts of `kind` (idempotent, from any process),
    and the PubSub broker they publish to."""
    # The broker is made here, by whoever brings the hosts up, not by a host on its
    # first event: made from inside a busy host, it burnt ~0.05-0.08 cores more under
    # load (measured with the hot-market benchmark; the cause lies inside Ray).
    pubsub_handle(settings.namespace)
    return [
        EntityHost.options(
            name=host_name(kind, i),
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
        ).remote(kind, i, dsn, settings)
        for i in range(count)
    ]
