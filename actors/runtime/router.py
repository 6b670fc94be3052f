"""Routers: how any process reaches the entities of one kind, batched per host."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.exceptions import RayTaskError

from .coordinator import Registration, coordinator_handle
from .directory import Placement
from .errors import InvalidInput, LootifyError, Unavailable, WrongHost
from .ids import shard_of
from .kind import EntityKind
from .link import Link, LinkDown, LinkSlot
from .liveness import ACTOR_DOWN
from .logs import REQUEST_ID
from .settings import KindSettings, RuntimeSettings
from .wire import decode_outcomes, encode_batch

log = logging.getLogger(__name__)

HOST_CACHE_MAX = 100_000
# A link that could not be opened (or broke) is tried again after this long.
LINK_RETRY_S = 1.0


class Router:
    """Sends messages for one entity kind to their hosts, gathered per host.

    With batching on, batches grow with load, not with a timer (smart batching, as in
    the LMAX disruptor): a message for a host with fewer than `calls_in_flight` calls
    under way leaves at once; otherwise it waits with the others for the next free
    call, which takes up to `max_batch` of them. An idle caller pays no wait, and a
    busy one pays each call's fixed cost once for many messages. A host that is down
    or restarting is retried until the call deadline; every message is idempotent by
    its reference id, so a retry never acts twice. A message a host answers
    `WrongHost` (its shard moved) is sent again where the coordinator says the shard
    is now, or fails `Unavailable` if the coordinator names no new owner within the
    deadline. With `direct`, calls go over a link of their own to each host once it is
    open (`actors.runtime.link`); `close` closes them.
    """

    def __init__(
        self,
        kind: str,
        handles: list[Any],
        directory: list[int],
        settings: RuntimeSettings,
        *,
        batching: bool = True,
        direct: bool = False,
        epoch: int = 0,
        registration: Registration | None = None,
    ) -> None:
        self.kind = kind
        self.direct = direct
        self.links: dict[int, _LinkSlot] = {}
        self.handles = handles
        self.directory = directory
        self.epoch = epoch
        self.settings = settings
        # Given again to a coordinator that restarted and forgot the kind.
        self.registration = registration
        self._coordinator: Any = None
        self.max_batch = settings.batch_max if batching else 1
        self.calls_in_flight = settings.calls_in_flight if batching else None
        # entity id -> host index: hashing ids was a visible share of a busy caller.
        self._hosts: dict[str, int] = {}
        self.buffers: dict[int, list[Queued]] = {}
        self.in_flight: dict[int, int] = {}
        self.batches_sent = 0
        self.messages_sent = 0
        # The request id each queued message was sent under (`logs.REQUEST_ID`), if any.
        self.request_ids: dict[asyncio.Future | _Slot, str] = {}

    def host_of(self, entity_id: str) -> int:
        host = self._hosts.get(entity_id)
        if host is None:
            if len(self._hosts) >= HOST_CACHE_MAX:
                self._hosts.clear()
            host = self._hosts[entity_id] = self.directory[
                shard_of(entity_id, self.settings.shards)
            ]
        return host

    def call(self, entity_id: str, message: Any) -> asyncio.Future:
        """Queue one message; the future resolves to its result or raises its error."""
        future = asyncio.get_running_loop().create_future()
        request_id = REQUEST_ID.get()
        if request_id is not None:
            self.request_ids[future] = request_id
        self._send_when_free(self._queue(entity_id, message, future))
        return future

    def call_many(self, calls: list[tuple[str, Any]]) -> asyncio.Future:
        """Queue messages to many entities at once; the future resolves to their
        outcomes in order, each `(True, result)` or `(False, error)`. Cheaper than
        gathering one future per message, which a host does for every bet."""
        future = asyncio.get_running_loop().create_future()
        if not calls:
            future.set_result([])
            return future
        gathered = _Gathered(len(calls), future)
        hosts = {
            self._queue(entity_id, message, _Slot(gathered, index))
            for index, (entity_id, message) in enumerate(calls)
        }
        for host in hosts:
            self._send_when_free(host)
        return future

    def _queue(self, entity_id: str, message: Any, future: asyncio.Future | _Slot) -> int:
        host = self.host_of(entity_id)
        self.buffers.setdefault(host, []).append((entity_id, message, future))
        return host

    def _send_when_free(self, host: int) -> None:
        """Start calls to `host` while it has waiting messages and a free call, or a
        full batch waiting (waiting longer would not make it bigger)."""
        limit = self.calls_in_flight
        buffer = self.buffers.get(host)
        while buffer and (
            limit is None
            or self.in_flight.get(host, 0) < limit
            or len(buffer) >= self.max_batch
        ):
            batch, buffer = buffer[: self.max_batch], buffer[self.max_batch :]
            self.buffers[host] = buffer
            self.in_flight[host] = self.in_flight.get(host, 0) + 1
            asyncio.ensure_future(self._send(host, batch))

    async def _send(self, host: int, batch: list[Queued]) -> None:
        try:
            await self._deliver(host, batch)
        finally:
            self.in_flight[host] -= 1
            self._send_when_free(host)

    async def _deliver(self, host: int, batch: list[Queued]) -> None:
        self.batches_sent += 1
        self.messages_sent += len(batch)
        deadline = time.monotonic() + self.settings.call_deadline_s
        delay = 0.02
        request_ids = None
        if self.request_ids:
            tagged = [self.request_ids.pop(f, None) for _, _, f in batch]
            request_ids = [request_id for request_id in tagged if request_id is not None]
        try:
            payload = encode_batch([(i, m) for i, m, _ in batch])
        except Exception as exc:  # a message that is not a plain value: nothing was sent
            _fail(batch, InvalidInput(f"a message could not be encoded: {exc!r:.200}"))
            return
        args = (payload, request_ids) if request_ids else (payload,)
        while True:
            if host >= len(self.handles):  # a refresh retired the host: send where it says
                for entity_id, message, future in batch:
                    _chain(self.call(entity_id, message), future)
                return
            link = self._link(host) if self.direct else None
            try:
                # Bounded: a host that is alive but stuck (paused, or its commit hung)
                # raises nothing. The messages may still take effect there; each is
                # idempotent by its reference id, so the caller's retry is safe.
                answer = link.call(*args) if link else self.handles[host].call.remote(*args)
                remaining = max(0.0, deadline - time.monotonic())
                outcomes = decode_outcomes(await asyncio.wait_for(answer, remaining))
                break
            except TimeoutError:
                if link is not None:  # a host cut off keeps its link open while Ray
                    link.close()  # restarts it elsewhere: let Ray find the live one
                _fail(batch, Unavailable(f"{self.kind} host {host} did not answer in time"))
                return
            except LinkDown:
                continue  # the host may be down or restarting: through Ray, which knows
            except ACTOR_DOWN:
                if await self._rerouted(host, batch):
                    return
                if time.monotonic() >= deadline:
                    _fail(batch, Unavailable(f"{self.kind} host {host} is down: retry later"))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except Exception as exc:  # e.g. a message the host could not unpickle
                refused = f"{self.kind} host {host} refused the batch: {exc!r:.200}"
                _fail(batch, Unavailable(refused))
                return
        moved = []
        for (entity_id, message, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, WrongHost):
                moved.append((entity_id, message, future))
            else:
                future.set_exception(value)
        if moved:  # on its own: the call's slot is free for the host's other shards
            if link is not None:  # perhaps a fenced old process: Ray reaches the new one
                link.close()
            asyncio.ensure_future(self._redirect(host, moved))

    async def _rerouted(self, host: int, batch: list[Queued]) -> bool:
        """A host that is down may be one the coordinator retired (its shards went
        elsewhere, it will not come back): if the directory now sends the batch's
        messages elsewhere, send them there. False: retry the same host."""
        await self._refresh_directory(time.monotonic() + min(1.0, self.settings.call_deadline_s))
        if all(self.host_of(entity_id) == host for entity_id, _, _ in batch):
            return False
        for entity_id, message, future in batch:
            _chain(self.call(entity_id, message), future)
        return True

    async def _redirect(self, refused_by: int, moved: list[Queued]) -> None:
        """Send again, where the coordinator now places them, the messages `refused_by`
        answered `WrongHost`. While their shard is being handed off the coordinator
        still names the old owner: ask again, backing off, until the call deadline."""
        deadline = time.monotonic() + self.settings.call_deadline_s
        delay = 0.02
        waiting = moved
        while True:
            await self._refresh_directory(deadline)
            for entity_id, message, future in waiting:
                if self.host_of(entity_id) != refused_by:
                    _chain(self.call(entity_id, message), future)
            waiting = [q for q in waiting if self.host_of(q[0]) == refused_by]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                _fail(waiting, Unavailable(f"{self.kind} shards are moving; retry later"))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _link(self, host: int) -> Link | None:
        """The open link to `host`, if any. Otherwise one is being opened in the
        background (at most once every LINK_RETRY_S), and calls go through Ray."""
        handle = self.handles[host]
        slot = self.links.get(host)
        if slot is None or slot.handle is not handle:  # a new host there
            if slot is not None:
                slot.close()
            slot = self.links[host] = _LinkSlot(handle)
        if slot.link is not None and not slot.link.closed:
            return slot.link
        now = time.monotonic()
        if slot.opening is None and now - slot.tried_at >= LINK_RETRY_S:
            slot.tried_at = now
            slot.opening = asyncio.ensure_future(self._open_link(slot))
        return None

    async def _open_link(self, slot: _LinkSlot) -> None:
        try:
            endpoint = await asyncio.wait_for(
                slot.handle.endpoint.remote(), self.settings.call_deadline_s
            )
            if endpoint is not None:
                link = await Link.open(endpoint)
                if slot.closed:
                    link.close()
                else:
                    slot.link = link
        except Exception as exc:  # noqa: BLE001  (Ray carries the calls meanwhile)
            log.debug("%s: no link to a host yet: %r", self.kind, exc)
        finally:
            slot.opening = None

    def close(self) -> None:
        """Close the links to the hosts (a router is usable after, through Ray)."""
        for slot in self.links.values():
            slot.close()
        self.links.clear()

    async def refresh(self) -> None:
        """Learn where the shards are now (after hosts were added or retired)."""
        await self._refresh_directory(time.monotonic() + self.settings.call_deadline_s)

    async def _refresh_directory(self, deadline: float) -> None:
        """Ask the coordinator where the shards are, within the deadline; a coordinator
        that cannot answer leaves the directory as it was."""
        try:
            placement = await asyncio.wait_for(
                self._placement(), max(0.05, deadline - time.monotonic())
            )
        except (TimeoutError, *ACTOR_DOWN):
            return
        if placement is not None and placement.epoch >= self.epoch:
            self.epoch = placement.epoch
            self.directory = placement.directory
            self.handles = placement.handles
            self._hosts.clear()

    async def _placement(self) -> Placement | None:
        if self._coordinator is None:
            self._coordinator = coordinator_handle(self.settings)
        placement = await self._coordinator.placement.remote(self.kind)
        if placement is None and self.registration is not None:
            placement = await self._coordinator.register.remote(self.registration)
        return placement


class _LinkSlot(LinkSlot):
    """The link to one host handle, and when it was last tried."""

    __slots__ = ("handle", "tried_at")

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self.handle = handle
        self.tried_at = float("-inf")


class _Gathered:
    """The outcomes of one `call_many`, resolved together once all are in."""

    __slots__ = ("outcomes", "missing", "future")

    def __init__(self, count: int, future: asyncio.Future) -> None:
        self.outcomes: list[tuple[bool, Any] | None] = [None] * count
        self.missing = count
        self.future = future

    def settle(self, index: int, outcome: tuple[bool, Any]) -> None:
        self.outcomes[index] = outcome
        self.missing -= 1
        if self.missing == 0 and not self.future.done():
            self.future.set_result(self.outcomes)


class _Slot:
    """One message's place in a `call_many`; the router settles it like a future."""

    __slots__ = ("gathered", "index", "settled")

    def __init__(self, gathered: _Gathered, index: int) -> None:
        self.gathered = gathered
        self.index = index
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, value: Any) -> None:
        self._settle((True, value))

    def set_exception(self, error: BaseException) -> None:
        self._settle((False, error))

    def _settle(self, outcome: tuple[bool, Any]) -> None:
        if not self.settled:
            self.settled = True
            self.gathered.settle(self.index, outcome)


# A queued message: its entity, itself, and what its outcome settles.
Queued = tuple[str, Any, "asyncio.Future | _Slot"]


def _fail(batch: list[Queued], error: LootifyError) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any] | _Slot) -> None:
    def copy(done: asyncio.Future[Any]) -> None:
        if target.done():
            return
        error = done.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


async def connect_router(
    kind: type[EntityKind[Any]],
    dsn: str,
    settings: RuntimeSettings,
    kind_settings: KindSettings,
    *,
    batching: bool = True,
    direct: bool = False,
) -> Router:
    """A router to every host of `kind`: the coordinator takes charge of the kind (its
    directory, its hosts) if it had not. `Unavailable` when that is not done within
    the call deadline (e.g. PostgreSQL does not answer)."""
    registration = Registration(kind, dsn, kind_settings)
    try:
        placement = await asyncio.wait_for(
            coordinator_handle(settings).register.remote(registration), settings.call_deadline_s
        )
    except TimeoutError as exc:
        raise Unavailable(
            f"{kind.name} hosts did not start within {settings.call_deadline_s}s"
        ) from exc
    except RayTaskError as exc:
        raise Unavailable(f"{kind.name} hosts could not start: {exc.cause!r:.200}") from exc
    return Router(
        kind.name,
        placement.handles,
        placement.directory,
        settings,
        batching=batching,
        direct=direct and settings.direct_calls,
        epoch=placement.epoch,
        registration=registration,
    )
