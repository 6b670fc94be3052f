"""The host: a Ray actor hosting many entities of one kind.

A Ray actor is a process (~95 MB); an entity must cost a few hundred bytes. So, as
Orleans silos host grains, an `EntityHost` hosts every entity of the logical shards
the durable directory gives it:

* an id hashes to one of `shards` logical shards; the directory maps shards to
  hosts; hosts are named detached actors, restarted by Ray after any crash;
* an entity is activated on its first message (loaded from PostgreSQL, many at
  once), handles its messages one at a time in arrival order, and is passivated
  after `idle_seconds` without one;
* a host works in commit cycles: it takes every message queued since the last
  cycle, applies them in order, writes all their changes in one PostgreSQL
  transaction (group commit), and only then answers them;
* an unexpected exception in a handler fails that message with `EntityCrashed`;
  the entity is dropped after the cycle and rebuilt from PostgreSQL on its next
  message, while the host and every other entity go on.

What an entity *is* lives in an `EntityKind` (`actors.runtime.kind`); callers reach
hosts through a `Router` (`actors.runtime.router`), which batches messages per host.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg
import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .breaker import OPEN, PING_TIMEOUT_S, Breaker, CircuitOpen
from .commit import Fence, Fenced, RetryCycle
from .directory import host_name, take_lease, take_up_shards
from .errors import EntityCrashed, LootifyError, Unavailable, WrongHost
from .ids import shard_of
from .kind import Cycle, EntityKind, Op
from .link import Endpoint, Listener
from .logs import log_json
from .settings import KindSettings, RuntimeSettings
from .wire import decode_batch, encode_outcomes

log = logging.getLogger(__name__)

# Upper bounds of the buckets of the hosts' histograms (exported by the gateway).
CYCLE_SIZE_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
COMMIT_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Opening a connection: asyncpg's default (60 s) would hold a cycle through a hang.
CONNECT_TIMEOUT_S = 5.0
# A cycle's statement takes arrays of any length, against tables that start empty and
# grow: a plan cached once for every call (PostgreSQL's generic plan, made from the
# table sizes of its first calls) scanned a whole table per cycle after the tables had
# grown. Each cycle is planned for its own arrays, at a fraction of a millisecond.
CYCLE_SESSION = {"plan_cache_mode": "force_custom_plan"}
# How often a host looks for messages waiting on a hung cycle.
SHED_INTERVAL_S = 0.1
HUNG = "PostgreSQL is not answering; retry (by reference id) to learn the outcome"
# How often a draining host looks whether its queue and cycles are done.
DRAIN_POLL_S = 0.02


class Entry:
    """One activated entity in the host's table."""

    __slots__ = ("state", "last_used")

    def __init__(self, state: Any, now: int) -> None:
        self.state = state
        self.last_used = now


@ray.remote(  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency
    max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=10_000
)
class EntityHost:
    """A Ray actor hosting the entities of some shards of one kind.

    Lifecycle: `__init__` runs at creation and after every restart; it keeps no
    state of its own beyond PostgreSQL, so a restart loses only what was never
    acknowledged. Entities come back lazily on their next message.
    """

    def __init__(
        self,
        kind: type[EntityKind[Any]],
        index: int,
        dsn: str,
        settings: RuntimeSettings,
        kind_settings: KindSettings,
    ) -> None:
        # A host keeps millions of small long-lived objects; with the default thresholds
        # the cyclic collector rescans them every few thousand allocations.
        gc.set_threshold(100_000, 50, 1000)
        log_json("actors", settings.log_level)
        self.kind_name = kind.name
        self.index = index
        self.dsn = dsn
        self.settings = settings
        self.kind_settings = kind_settings
        self.entities: dict[str, Entry] = {}
        self.queue: list[Op] = []
        self.wake = asyncio.Event()
        # Held by a running cycle; passivation and resets take it so they never drop
        # an entity a cycle is working on.
        self.cycle_lock = asyncio.Lock()
        self.pool: asyncpg.Pool | None = None
        # In front of PostgreSQL: while it is down or hung, messages are refused at once
        # (reads of entities in memory are answered from it) instead of queueing up
        # behind a cycle that cannot commit.
        self.breaker = Breaker(f"{kind.name}-host-{index}", settings.breaker, ping=self._ping)
        # Routers' batches over their own connections, beside Ray's calls (`call`).
        self.listener = Listener(self.call)
        # The messages of the cycle under way, and the entities it has changed so far:
        # their memory may be ahead of PostgreSQL until it commits.
        self.running: list[Op] = []
        self.changed: set[str] = set()
        # Set by `drain` (the cluster is stopping): nothing more is admitted.
        self.draining = False
        # The shards this process owns, with the epoch of each (see `directory`), and
        # the incarnation of the host it is: both are checked inside every commit.
        self.owned: set[int] = set()
        self.epochs: dict[int, int] = {}
        self.incarnation = 0
        # What follows committed cycles (a saga moving money): a hand-off waits for it.
        self.finishing: set[asyncio.Future[None]] = set()
        self.fenced_cycles = 0
        self.kind = kind(self, kind_settings)
        self.cycles = 0
        self.ops_done = 0
        self.calls = 0
        # Seconds spent per phase of a cycle, summed (exported as metrics).
        self.phase_seconds = {"load": 0.0, "prepare": 0.0, "apply": 0.0, "commit": 0.0}
        # Per bucket of the bounds above, plus one past the last: counted per cycle.
        self.cycle_sizes = [0] * (len(CYCLE_SIZE_BOUNDS) + 1)
        self.commit_seconds = [0] * (len(COMMIT_SECONDS_BOUNDS) + 1)
        self.activations = 0
        self.passivations = 0
        self.shards_handed_off = 0
        self._started: asyncio.Future[None] | None = None
        # Start right away, after a restart too (recovery must not wait for a caller):
        # the call runs once __init__ has returned.
        ray.get_runtime_context().current_actor.shards.remote()

    def _ready(self) -> asyncio.Future:
        # Started on the first call, inside the actor's running event loop.
        if self._started is None or (
            self._started.done() and not self._started.cancelled() and self._started.exception()
        ):
            self._started = asyncio.ensure_future(self._start())
        return self._started

    async def _start(self) -> None:
        # Every statement of the host is bounded: a stuck one would hold the commit
        # cycle, and with it every entity here. Past the call deadline its callers have
        # given up anyway; the cycle fails whole and they retry by reference id.
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=2, max_size=4, command_timeout=self.settings.call_deadline_s,
            timeout=CONNECT_TIMEOUT_S, reset=_keep_session, server_settings=CYCLE_SESSION,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            self.incarnation = await take_lease(conn, self.kind_name, self.index)
            self._own(await take_up_shards(conn, self.kind_name, self.index, self.incarnation))
        try:
            await self.listener.start(ray.util.get_node_ip_address())
        except OSError as exc:  # routers reach this host through Ray alone
            log.warning("%s host %d: no direct link: %r", self.kind_name, self.index, exc)
        asyncio.ensure_future(self._cycles())
        asyncio.ensure_future(self._housekeeping())
        asyncio.ensure_future(self._shed_when_hung())
        asyncio.ensure_future(self.breaker.watch(SHED_INTERVAL_S))

    # -- the Ray API -------------------------------------------------------------

    async def call(self, payload: bytes, request_ids: list[str] | None = None) -> bytes:
        """Deliver a batch of `(entity_id, message)` (`wire.encode_batch`); answer each
        `(ok, result|error)` in the same order (`wire.decode_outcomes`), once its effects
        are committed. `request_ids`: the requests the messages were sent for, logged
        with the call at DEBUG, or at WARNING when it is slow."""
        if request_ids is None:
            return encode_outcomes(await self._deliver(decode_batch(payload)))
        started = time.perf_counter()
        outcomes = await self._deliver(decode_batch(payload))
        elapsed = time.perf_counter() - started
        slow = elapsed >= self.settings.slow_call_s
        if slow or log.isEnabledFor(logging.DEBUG):
            log.log(
                logging.WARNING if slow else logging.DEBUG,
                "slow call" if slow else "call",
                extra={
                    "host": f"{self.kind_name}-{self.index}",
                    "request_ids": request_ids,
                    "messages": len(outcomes),
                    "refused": sum(not ok for ok, _ in outcomes),
                    "ms": round(elapsed * 1000, 2),
                },
            )
        return encode_outcomes(outcomes)

    async def endpoint(self) -> Endpoint | None:
        """Where routers open a direct link to this process (`actors.runtime.link`)."""
        await self._ready()
        return self.listener.endpoint

    def set_log_level(self, level: str) -> None:
        """DEBUG logs every call with its request ids; INFO only slow calls and faults."""
        log_json("actors", level)

    async def _deliver(self, batch: list[tuple[str, Any]]) -> list[tuple[bool, Any]]:
        await self._ready()
        self.calls += 1
        loop = asyncio.get_running_loop()
        # A shard being handed off admits nothing more (a bet would reserve money): its
        # messages are answered `WrongHost`, and the caller asks where the shard went.
        shards = self.settings.shards
        here = [shard_of(entity_id, shards) in self.owned for entity_id, _ in batch]
        ops = [
            Op(entity_id, message, loop.create_future())
            for (entity_id, message), owned in zip(batch, here, strict=True)
            if owned
        ]
        pending = self._admissible(ops)
        if pending:
            try:
                await self.kind.admit(pending)
            except Exception:
                log.exception("admission failed")
                return [(False, Unavailable("the host could not admit the batch; retry"))] * len(
                    batch
                )
            self.queue.extend(pending)
            self.wake.set()
        outcomes: list[tuple[bool, Any]] = []
        admitted = iter(ops)
        for (entity_id, _), owned in zip(batch, here, strict=True):
            if not owned:
                outcomes.append((False, WrongHost(f"{entity_id} is not hosted here")))
                continue
            op = next(admitted)
            try:
                outcomes.append((True, await op.future))
            except LootifyError as exc:
                outcomes.append((False, exc))
        return outcomes

    def _admissible(self, ops: list[Op]) -> list[Op]:
        """The ops that go on to a cycle. A read of an entity in memory is answered from
        it at once, with no cycle and no PostgreSQL, unless a message sent to the entity
        before it is still queued (arrival order) or the cycle under way changed it
        (its memory may be ahead of PostgreSQL). While the breaker is open, the rest are
        refused at once; half-open, they go on and the next cycle is the probe. While the
        cluster stops, nothing is admitted."""
        if self.draining:
            for op in ops:
                _fail(op, Unavailable("the host is shutting down; retry"))
            return []
        refuse = self.breaker.state == OPEN
        pending: list[Op] = []
        waiting: set[str] | None = None  # entities with messages queued before these
        for op in ops:
            entry = self.entities.get(op.entity_id)
            if entry is not None and op.entity_id not in self.changed:
                answer = self.kind.read(entry.state, op.message)
                if answer is not None:
                    if waiting is None:
                        waiting = {q.entity_id for q in self.queue}
                    if op.entity_id not in waiting:
                        entry.last_used = int(time.monotonic())
                        if not op.future.done():
                            op.future.set_result(answer)
                        continue
            if refuse:
                self.breaker.refused += 1
                _fail(op, CircuitOpen("PostgreSQL is unavailable; retry shortly"))
                continue
            pending.append(op)
            if waiting is not None:
                waiting.add(op.entity_id)
        return pending

    async def query(self, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """A read (or catalog write) that needs no entity; answered `(ok, result|error)`."""
        await self._ready()
        try:
            self.breaker.check()
            return True, await self.kind.query(name, args)
        except LootifyError as exc:
            return False, exc

    async def shards(self) -> list[int]:
        """The shards this process owns now."""
        await self._ready()
        return sorted(self.owned)

    async def release(self, shards: list[int]) -> int:
        """Hand `shards` off (the coordinator's `BeginHandOff` and `HandOff` in one):
        admit no more of their messages, let the cycle in flight commit and what follows
        it (money a saga is moving) finish, then passivate their entities. Returns how
        many were passivated. Messages still queued for them are answered `WrongHost`."""
        await self._ready()
        leaving = set(shards)
        self.shards_handed_off += len(leaving & self.owned)
        self.owned -= leaving
        for shard in leaving:
            self.epochs.pop(shard, None)
        async with self.cycle_lock:
            pass  # the cycle in flight has committed
        if self.finishing:
            # Past the hand-off time-out the new owner's recovery finishes the rest.
            await asyncio.wait(set(self.finishing), timeout=self.settings.handoff_timeout_s)
        async with self.cycle_lock:
            leavers = [
                entity_id
                for entity_id in self.entities
                if shard_of(entity_id, self.settings.shards) in leaving
            ]
            for entity_id in leavers:
                del self.entities[entity_id]
        self.passivations += len(leavers)
        return len(leavers)

    async def drain(self) -> int:
        """Stop for good (the cluster is shutting down): admit no more messages (they
        are answered `Unavailable`), let those queued and the cycle in flight commit
        and what follows them (money a saga is moving) finish, within
        `drain_timeout_s`. Returns the messages left unanswered (0: all were)."""
        await self._ready()
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.queue or self.cycle_lock.locked() or self.finishing:
            if time.monotonic() >= deadline:
                break
            self.wake.set()
            await asyncio.sleep(DRAIN_POLL_S)
        return len(self.queue) + sum(not op.future.done() for op in self.running)

    async def adopt(self) -> list[int]:
        """Take up whatever the directory gives this host now (after a hand-off to it,
        or to undo a release the coordinator never recorded); returns the shards owned."""
        await self._ready()
        await self._reload_ownership()
        return sorted(self.owned)

    async def _reload_ownership(self) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "select incarnation from runtime.host_leases where kind = $1 and host = $2",
                self.kind_name,
                self.index,
            )
            if current != self.incarnation:  # a newer process is this host now
                self._own({})
                return
            self._own(await take_up_shards(conn, self.kind_name, self.index, self.incarnation))

    def _own(self, epochs: dict[int, int]) -> None:
        lost = self.owned - epochs.keys()
        self.epochs = epochs
        self.owned = set(epochs)
        if lost:
            for entity_id in [
                e for e in self.entities if shard_of(e, self.settings.shards) in lost
            ]:
                del self.entities[entity_id]

    async def stats(self) -> dict[str, Any]:
        await self._ready()
        return {
            "kind": self.kind_name,
            "index": self.index,
            "node": ray.get_runtime_context().get_node_id(),
            "shards": len(self.owned),
            "incarnation": self.incarnation,
            "fenced_cycles": self.fenced_cycles,
            "pid": os.getpid(),
            "rss": psutil.Process().memory_info().rss,
            "entities": len(self.entities),
            "queued": len(self.queue),
            "calls": self.calls,
            "linked_calls": self.listener.served,
            "cycles": self.cycles,
            "ops": self.ops_done,
            "phase_seconds": dict(self.phase_seconds),
            "cycle_sizes": (CYCLE_SIZE_BOUNDS, list(self.cycle_sizes)),
            "commit_seconds": (COMMIT_SECONDS_BOUNDS, list(self.commit_seconds)),
            "activations": self.activations,
            "passivations": self.passivations,
            "shards_handed_off": self.shards_handed_off,
            "breaker": self.breaker.snapshot(),
        }

    async def activated(self) -> list[str]:
        """The ids of the entities in memory now (the audit compares them with PostgreSQL)."""
        await self._ready()
        return list(self.entities)

    async def passivate_all(self) -> int:
        """Drop every idle entity now (tests and benchmarks; normal passivation is by age)."""
        await self._ready()
        async with self.cycle_lock:
            return self._passivate(cutoff=None)

    async def reset(self) -> None:
        """Forget every activated entity (tests clean the tables between cases)."""
        await self._ready()
        async with self.cycle_lock:
            self.entities.clear()
            await self.kind.reset()

    def pid(self) -> int:
        return os.getpid()

    # -- commit cycles----------------------------------------------------------------

    async def _cycles(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch, self.queue = self.queue, []
                try:
                    async with self.cycle_lock:
                        await self._run_cycle(batch)
                except Exception:  # the loop must survive anything a cycle does
                    log.exception("cycle failed")
                    for op in batch:  # memory may be ahead of the database: rebuild
                        self.entities.pop(op.entity_id, None)
                        _fail(op, Unavailable("the host failed; retry"))

    async def _run_cycle(self, batch: list[Op]) -> None:
        now = int(time.monotonic())
        ops: list[Op] = []
        # The epochs this cycle commits under, taken now: a release after this point
        # waits for the cycle, and a move after the release makes the commit refused.
        fence: dict[int, int] = {}
        for op in batch:
            shard = shard_of(op.entity_id, self.settings.shards)
            epoch = self.epochs.get(shard)
            if epoch is None:
                _fail(op, WrongHost(f"{op.entity_id} is not hosted here"))
            else:
                fence[shard] = epoch
                ops.append(op)
        if not ops:
            return
        try:
            ticket = self.breaker.admit()
        except CircuitOpen as exc:  # nothing was applied: the entities stay as they are
            for op in ops:
                _fail(op, CircuitOpen(exc.message))
            return
        self.running = ops
        try:
            await self._run_admitted(ops, fence, now, ticket)
            # Only now: giving the connection back (asyncpg resets it) waits on PostgreSQL
            # too. A no-op if the commit's failure was counted already.
            self.breaker.succeeded(ticket)
        except Exception as exc:  # PostgreSQL failed it (a load, a prepare), or a bug did
            self.breaker.outcome(ticket, exc)
            log.exception("cycle failed")
            self._forget_changed()
            for op in ops:
                _fail(op, Unavailable(f"the host failed: {type(exc).__name__}; retry"))
        except BaseException as exc:
            self.breaker.outcome(ticket, exc)
            raise
        finally:
            self.running = []
            self.changed = set()

    async def _run_admitted(
        self, ops: list[Op], fence: dict[int, int], now: int, ticket: int
    ) -> None:
        assert self.pool is not None
        cycle = Cycle()
        phases = self.phase_seconds
        async with self.pool.acquire() as conn:
            t0 = time.perf_counter()
            missing = list({op.entity_id for op in ops if op.entity_id not in self.entities})
            if missing:
                self.activations += len(missing)
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
                mark = cycle.mark()
                try:
                    answered.append((op, self.kind.apply(entry.state, op.message, cycle, op)))
                    if cycle.mark() > mark:  # a handler changes nothing it does not write
                        self.changed.add(op.entity_id)
                except LootifyError as exc:
                    refused.append((op, exc))
                except Exception as exc:
                    log.exception("entity %s crashed on %r", op.entity_id, op.message)
                    cycle.rollback(mark)
                    crashed.add(op.entity_id)
                    self.changed.add(op.entity_id)
                    _fail(op, EntityCrashed(
                        f"{type(exc).__name__} in {self.kind_name} entity; rebuilt"))

            t3 = time.perf_counter()
            phases["apply"] += t3 - t2
            try:
                if cycle.writes:
                    await self.kind.commit(
                        conn, cycle, Fence(self.kind_name, self.index, self.incarnation, fence)
                    )
                committed = time.perf_counter() - t3
                phases["commit"] += committed
                self.commit_seconds[bisect.bisect_left(COMMIT_SECONDS_BOUNDS, committed)] += 1
            except Fenced:
                # A shard of the cycle moved, or a newer process is this host: nothing of
                # the cycle stands, and its callers go to the owner the directory names.
                self.fenced_cycles += 1
                log.warning("%s host %d: cycle refused, not the owner", self.kind_name, self.index)
                for op in ops:
                    self.entities.pop(op.entity_id, None)
                    _fail(op, WrongHost("the shard moved during the cycle"))
                await self._reload_ownership()
                return
            except RetryCycle:
                # Memory acted on a guess the database refused (e.g. a reference id
                # used before this activation): rebuild and rerun the cycle carefully.
                for op in ops:
                    self.entities.pop(op.entity_id, None)
                self.kind.careful = True
                self.queue[:0] = [op for op in ops if not op.future.done()]
                self.wake.set()
                return
            except Exception as exc:  # whatever failed the commit, nothing of the cycle stands
                self.breaker.outcome(ticket, exc)
                log.exception("cycle commit failed")
                # Memory ran ahead of the database: rebuild every entity the cycle changed
                # (the others still hold what was committed, and can answer reads while
                # PostgreSQL is away). Every message is answered, refusals too: they were
                # decided on that memory.
                self._forget_changed()
                failed = f"storage failed: {type(exc).__name__}; retry"
                for op in ops:
                    _fail(op, Unavailable(failed))
                return

        for op, error in refused:
            _fail(op, error)
        for entity_id in crashed:
            self.entities.pop(entity_id, None)
        for hook in cycle.after_commit:
            hook()
        finishing = self.kind.finish(cycle)
        if finishing is None:
            _answer(answered)
        else:
            task = asyncio.ensure_future(self._answer_after(finishing, answered))
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)
        self.cycles += 1
        self.ops_done += len(ops)
        self.cycle_sizes[bisect.bisect_left(CYCLE_SIZE_BOUNDS, len(ops))] += 1
        deferred = [op for op in deferred if not op.future.done()]
        if deferred:
            self.queue[:0] = deferred
            self.wake.set()

    def _forget_changed(self) -> None:
        for entity_id in self.changed:
            self.entities.pop(entity_id, None)

    async def _answer_after(self, finishing: Awaitable[None], answered: list) -> None:
        try:
            await finishing
        except Exception:  # what finish leaves undone, the kind's recovery finishes
            log.exception("finishing a cycle failed")
        _answer(answered)

    async def _housekeeping(self) -> None:
        interval = max(0.05, min(1.0, self.settings.idle_seconds / 4))
        last_passivation = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if not self.breaker.healthy():
                continue  # PostgreSQL is down: housekeeping waits for it
            try:
                await self.kind.tick()
            except Exception:
                log.exception("tick failed")
            if time.monotonic() - last_passivation >= self.settings.idle_seconds / 2:
                last_passivation = time.monotonic()
                async with self.cycle_lock:
                    self._passivate(cutoff=int(time.monotonic() - self.settings.idle_seconds))

    async def _ping(self) -> None:
        """Is PostgreSQL there? On a connection of its own: a cycle stuck on a lock may
        hold one of the pool's, and the pool's may all be taken."""
        conn = await asyncpg.connect(self.dsn, timeout=PING_TIMEOUT_S)
        try:
            await conn.fetchval("select 1", timeout=PING_TIMEOUT_S)
        finally:
            conn.terminate()

    async def _shed_when_hung(self) -> None:
        """Once the breaker sees a cycle hang on PostgreSQL, its callers are not kept
        waiting for it: its own messages are answered `Unavailable` (their outcome is
        unknown until PostgreSQL answers; a retry by reference id learns it, as after a
        caller's deadline), and those queued behind it as those arriving now are: reads
        from memory, the rest refused. A caller's call to this host, and every message
        the caller batches behind it, is then free again."""
        while True:
            await asyncio.sleep(SHED_INTERVAL_S)
            if self.breaker.state != OPEN or not self.cycle_lock.locked():
                continue
            for op in self.running:
                if not op.future.done():
                    op.future.set_exception(Unavailable(HUNG))
            if self.queue:
                queued, self.queue = self.queue, []
                self.queue = self._admissible(queued)

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
        self.passivations += len(idle)
        return len(idle)

    def submit(self, entity_id: str, message: Any, *, within: float = 0.0) -> asyncio.Future:
        """Queue a message from inside the host (timers, sagas). With `within`, an idle
        host waits up to that long before it runs a cycle for it, so that bookkeeping
        rides with the next messages instead of taking a cycle of its own."""
        loop = asyncio.get_running_loop()
        op = Op(entity_id, message, loop.create_future())
        self.queue.append(op)
        if within > 0:
            loop.call_later(within, self.wake.set)
        else:
            self.wake.set()
        return op.future


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A host's connection goes back to its pool as it is: the host sets no session
    state (no SET, LISTEN, advisory lock or cursor), so asyncpg's default reset query
    would be a round trip and a transaction in PostgreSQL per commit cycle for
    nothing. asyncpg still rolls back a transaction left open."""


def ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Done-callback for a submitted message nobody awaits: its failure is expected
    and retried elsewhere, so it must not be logged as never retrieved."""
    if not future.cancelled():
        future.exception()


def _fail(op: Op, error: BaseException) -> None:
    """Answer `op` with `error`, unless it was answered already (`Unavailable` when
    its cycle hung)."""
    if not op.future.done():
        op.future.set_exception(error)


def _answer(answered: list[tuple[Op, Any]]) -> None:
    for op, result in answered:
        if op.future.done():
            continue
        if op.error is not None:
            _fail(op, op.error)
        else:
            op.future.set_result(result)


def start_host(
    kind: type[EntityKind[Any]],
    index: int,
    dsn: str,
    settings: RuntimeSettings,
    kind_settings: KindSettings,
    node_id: str | None = None,
) -> Any:
    """Get or create the named detached host `index` of `kind` (the coordinator does,
    and only it decides how many there are). With `node_id`, a new host starts on that
    node if it can, and Ray moves it if the node is gone."""
    options: dict[str, Any] = {
        "name": host_name(kind.name, index),
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
    }
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        # Ray ignores a soft affinity for an actor that asks for no CPU at all.
        options["num_cpus"] = 0.01
    return EntityHost.options(**options).remote(  # type: ignore[attr-defined]
        kind, index, dsn, settings, kind_settings
    )
