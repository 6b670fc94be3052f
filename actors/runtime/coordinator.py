"""The coordinator: the one decision maker for placement (Akka's ShardCoordinator).

A named detached singleton actor. For each kind registered with it (every router
registers its kind when it connects) it keeps the shard directory in PostgreSQL,
starts the hosts, and moves shards between them:

* a move is a hand-off: the owner stops admitting the shards' messages, lets its
  cycle in flight commit and the money it is moving settle, passivates their
  entities (`EntityHost.release`); then the directory gives the shards to the new
  host with their epochs bumped, the new host takes them up (`adopt`), and only then
  do callers asking where they are (`placement`) learn the new owner. Shards are
  released only to a host that has started, so callers wait for a hand-off, never
  for a new host's process to start;
* an owner that does not let go within the hand-off time-out (paused, partitioned,
  on a dead node) is moved from anyway: fencing (`commit.hold_epochs`)
  refuses whatever it still tries to commit;
* `scale` sets how many hosts a kind keeps; rebalancing moves a few shards a round
  until the counts differ by at most one, and retires hosts left without shards;
* with `hosts_per_node` set it follows the nodes: hosts of each kind per node with
  CPUs, new hosts placed on the node with the fewest. A host on a node that died is
  restarted elsewhere by Ray (detached, `max_restarts=-1`) and serves its shards again.

A coordinator that restarts forgets its kinds until routers register them again (they
do when it answers that it does not know theirs); the directory itself is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import ray

from .directory import (
    Placement,
    ensure_directory,
    move_shards,
    read_directory,
    set_host_target,
)
from .host import start_host
from .kind import EntityKind
from .liveness import ACTOR_DOWN
from .placement import by_source, is_balanced, plan_moves, round_limit
from .settings import KindSettings, RuntimeSettings

log = logging.getLogger(__name__)

COORDINATOR_NAME = "shard-coordinator"


@dataclass(frozen=True)
class Registration:
    """What the coordinator needs to run a kind's hosts."""

    kind: type[EntityKind[Any]]
    dsn: str
    kind_settings: KindSettings


class _Placed:
    """One kind under the coordinator: its directory as committed, and its hosts."""

    def __init__(
        self,
        registration: Registration,
        pool: asyncpg.Pool,
        epoch: int,
        target: int,
        directory: list[int],
    ) -> None:
        self.registration = registration
        self.pool = pool
        self.epoch = epoch
        self.target = target
        self.directory = directory
        self.handles: list[Any] = []
        self.nodes: dict[int, str] = {}  # host index -> the node it was last seen on
        self.retiring: dict[int, asyncio.TimerHandle] = {}  # host index -> its end
        self.rebalancing: asyncio.Task[None] | None = None
        # One round of hand-offs at a time: a shard is never in two moves.
        self.moving = asyncio.Lock()
        self.shards_moved = 0

    def placement(self) -> Placement:
        return Placement(self.epoch, list(self.directory), list(self.handles))


@ray.remote(  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency
    max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=1000
)
class Coordinator:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.kinds: dict[str, _Placed] = {}
        self.registering: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.watcher: asyncio.Task[None] | None = None

    # -- what callers ask ------------------------------------------------------------

    async def register(self, registration: Registration) -> Placement:
        """Take charge of a kind (idempotent): its directory, its hosts started."""
        name = registration.kind.name
        async with self.registering[name]:
            placed = self.kinds.get(name)
            if placed is None:
                placed = self.kinds[name] = await self._take_charge(registration)
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._watch())
        self._rebalance(placed)
        return placed.placement()

    async def placement(self, kind: str) -> Placement | None:
        """Where a kind's shards are now; None if this coordinator does not know the kind
        (it restarted): the caller registers it again."""
        placed = self.kinds.get(kind)
        return None if placed is None else placed.placement()

    async def scale(self, kind: str, hosts: int) -> None:
        """Keep `hosts` hosts of `kind`; the moves run in the background (`status`)."""
        if hosts < 1:
            raise ValueError("a kind needs at least one host")
        placed = self.kinds[kind]
        async with placed.pool.acquire() as conn:
            await asyncio.wait_for(
                set_host_target(conn, kind, hosts), self.settings.call_deadline_s
            )
        placed.target = hosts
        nodes = await self._nodes_with_cpus() if self.settings.hosts_per_node > 0 else []
        for index in range(len(placed.handles), hosts):
            placed.handles.append(self._start(placed, index, nodes))
        self._rebalance(placed)

    async def move(self, kind: str, shards: list[int], target: int) -> int:
        """Hand `shards` off to host `target` now (operators, tests); returns the
        directory's epoch after the move."""
        placed = self.kinds[kind]
        if not 0 <= target < len(placed.handles):
            raise ValueError(f"{kind} has no host {target}")
        async with placed.moving:
            sources: dict[int, list[int]] = defaultdict(list)
            for shard in shards:
                if placed.directory[shard] != target:
                    sources[placed.directory[shard]].append(shard)
            await asyncio.gather(
                *(
                    self._hand_off(placed, source, {target: moving})
                    for source, moving in sources.items()
                )
            )
        return placed.epoch

    async def status(self) -> dict[str, Any]:
        """Nodes, hosts (kind, index, node, shards, entities, mailbox) and epochs."""
        nodes = await asyncio.to_thread(ray.nodes)
        hosts: list[dict[str, Any]] = []
        for name, placed in self.kinds.items():
            shards = Counter(placed.directory)
            stats = await asyncio.gather(
                *(asyncio.wait_for(h.stats.remote(), 2.0) for h in placed.handles),
                return_exceptions=True,
            )
            for index, answer in enumerate(stats):
                row: dict[str, Any] = {"kind": name, "index": index, "shards": shards[index]}
                if isinstance(answer, BaseException):
                    row.update(node=placed.nodes.get(index), entities=None, up=False)
                else:
                    placed.nodes[index] = answer["node"]
                    row.update(
                        node=answer["node"],
                        entities=answer["entities"],
                        mailbox=answer["queued"],
                        pid=answer["pid"],
                        up=True,
                    )
                hosts.append(row)
        return {
            "nodes": [
                {
                    "node": n["NodeID"],
                    "address": n["NodeManagerAddress"],
                    "alive": n["Alive"],
                    "cpus": n["Resources"].get("CPU", 0),
                }
                for n in nodes
            ],
            "hosts": hosts,
            "epoch": {name: placed.epoch for name, placed in self.kinds.items()},
            "kinds": {
                name: {
                    "target": placed.target,
                    "hosts": len(placed.handles),
                    "balanced": is_balanced(placed.directory, placed.target)
                    and len(placed.handles) == placed.target,
                    "shards_moved": placed.shards_moved,
                }
                for name, placed in self.kinds.items()
            },
        }

    # -- taking charge -------------------------------------------------------------

    async def _take_charge(self, registration: Registration) -> _Placed:
        name, deadline = registration.kind.name, self.settings.call_deadline_s
        pool = await asyncpg.create_pool(registration.dsn, min_size=1, max_size=2, timeout=deadline)
        try:
            async with pool.acquire() as conn:
                await asyncio.wait_for(
                    ensure_directory(
                        conn, name, self.settings.shards, registration.kind_settings.hosts
                    ),
                    deadline,
                )
                epoch, target, directory = await asyncio.wait_for(
                    read_directory(conn, name), deadline
                )
        except BaseException:
            await pool.close()
            raise
        placed = _Placed(registration, pool, epoch, target, directory)
        nodes = await self._nodes_with_cpus() if self.settings.hosts_per_node > 0 else []
        placed.handles = [
            self._start(placed, index, nodes) for index in range(max(target, max(directory) + 1))
        ]
        # A running host may hold a release the coordinator before this one never
        # recorded (it died mid-hand-off): taking up the directory again undoes it.
        await asyncio.gather(
            *(asyncio.wait_for(h.adopt.remote(), deadline) for h in placed.handles),
            return_exceptions=True,
        )
        return placed

    def _start(self, placed: _Placed, index: int, nodes: list[str]) -> Any:
        retiring = placed.retiring.pop(index, None)
        if retiring is not None:  # wanted again before it was stopped
            retiring.cancel()
        node = None
        if nodes:
            load = Counter({node: 0 for node in nodes})
            load.update(n for i, n in placed.nodes.items() if n in load and i != index)
            node = min(nodes, key=lambda n: (load[n], nodes.index(n)))
            placed.nodes[index] = node
        r = placed.registration
        return start_host(r.kind, index, r.dsn, self.settings, r.kind_settings, node)

    # -- moving shards ---------------------------------------------------------------

    def _rebalance(self, placed: _Placed) -> None:
        if placed.rebalancing is None or placed.rebalancing.done():
            placed.rebalancing = asyncio.ensure_future(self._rebalancing(placed))

    async def _rebalancing(self, placed: _Placed) -> None:
        s = self.settings
        limit = round_limit(s.shards, s.rebalance_max_shards, s.rebalance_max_share)
        while True:
            moves = plan_moves(placed.directory, placed.target, limit)
            if not moves:
                self._retire(placed)
                return
            if not await self._started(placed, {target for _, _, target in moves}):
                await asyncio.sleep(s.watch_interval_s)
                continue
            try:
                async with placed.moving:
                    await asyncio.gather(
                        *(
                            self._hand_off(placed, source, targets)
                            for source, targets in by_source(moves).items()
                        )
                    )
            except Exception:  # e.g. PostgreSQL away: try again a little later
                log.exception("a rebalance round failed")
                await asyncio.sleep(s.watch_interval_s)

    async def _started(self, placed: _Placed, hosts: set[int]) -> bool:
        """Whether `hosts` have started (their lease taken). Shards are released only
        to a host that takes them up at once: their callers then wait for a hand-off,
        not for a new process to start (seconds, on a node that just joined)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(placed.handles[i].shards.remote() for i in hosts)),
                self.settings.call_deadline_s,
            )
            return True
        except (TimeoutError, *ACTOR_DOWN):
            log.warning("%s hosts %s not started yet", placed.registration.kind.name, hosts)
            return False

    async def _hand_off(self, placed: _Placed, source: int, targets: dict[int, list[int]]) -> None:
        s, name = self.settings, placed.registration.kind.name
        shards = [shard for moving in targets.values() for shard in moving]
        try:
            await asyncio.wait_for(
                placed.handles[source].release.remote(shards),
                # The owner waits up to the time-out for money under way, then passivates.
                2 * s.handoff_timeout_s,
            )
        except (TimeoutError, *ACTOR_DOWN):
            log.warning(
                "%s host %d did not let go of %d shards: moving them anyway",
                name,
                source,
                len(shards),
            )
        for target, moving in targets.items():
            try:
                async with placed.pool.acquire() as conn:
                    epoch, moved = await asyncio.wait_for(
                        move_shards(conn, name, moving, source, target), s.call_deadline_s
                    )
            except BaseException:
                # The move is not recorded: the source takes its shards up again.
                placed.handles[source].adopt.remote()
                raise
            try:
                await asyncio.wait_for(placed.handles[target].adopt.remote(), s.call_deadline_s)
            except (TimeoutError, *ACTOR_DOWN):
                log.warning(
                    "%s host %d did not answer: it reads the directory as it restarts", name, target
                )
            # Callers learn the new owner only now that it holds the shards.
            for shard in moved:
                placed.directory[shard] = target
            placed.epoch = max(placed.epoch, epoch)
            placed.shards_moved += len(moved)

    def _retire(self, placed: _Placed) -> None:
        """Hosts beyond the target own no shard any more: stop them, after a call
        deadline in which they answer `WrongHost` to callers that still send to them
        (those ask where the shards went instead of retrying a host that is gone)."""
        loop = asyncio.get_running_loop()
        for index in range(placed.target, len(placed.handles)):
            placed.retiring[index] = loop.call_later(
                self.settings.call_deadline_s, ray.kill, placed.handles[index]
            )
        for index in range(placed.target, len(placed.handles)):
            placed.nodes.pop(index, None)
        del placed.handles[placed.target :]

    # -- following the nodes ------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            if self.settings.hosts_per_node <= 0:
                continue
            try:
                await self._follow_nodes()
            except Exception:  # the next look may succeed; the hosts serve meanwhile
                log.exception("following the nodes failed")

    async def _follow_nodes(self) -> None:
        nodes = await self._nodes_with_cpus()
        if not nodes:
            return
        target = self.settings.hosts_per_node * len(nodes)
        for name, placed in list(self.kinds.items()):
            # Where the hosts are now: Ray restarts those of a dead node elsewhere.
            stats = await asyncio.gather(
                *(asyncio.wait_for(h.stats.remote(), 2.0) for h in placed.handles),
                return_exceptions=True,
            )
            for index, answer in enumerate(stats):
                if isinstance(answer, dict):
                    placed.nodes[index] = answer["node"]
            if placed.target != target:
                await self.scale(name, target)

    async def _nodes_with_cpus(self) -> list[str]:
        nodes = await asyncio.to_thread(ray.nodes)
        return [n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def coordinator_handle(settings: RuntimeSettings) -> Any:
    """The coordinator of the cluster's namespace, created if missing (from any process)."""
    return Coordinator.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote(settings)
