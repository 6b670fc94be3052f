"""Reaching entities from any process: routers that batch, and the client API.

`AsyncLootify` is for code already in an event loop (Serve replicas, benchmarks,
host actors calling other hosts); `Lootify` wraps it for notebooks and scripts,
running its loop on a background thread so every method is a plain call.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from . import book, pricing
from . import market as m
from . import wallet as w
from .config import RuntimeSettings, service_dsn, use_ray_token_auth
from .errors import InvalidInput, LootifyError, Unavailable
from .money import check_amount, parse_odds
from .runtime import WrongHost, canonical_id, host_handles, new_id, shard_of
from .wire import decode_outcomes, encode_batch

T = TypeVar("T")
_HOST_DOWN = (RayActorError, ActorDiedError, ActorUnavailableError)
HOST_CACHE_MAX = 100_000


class Router:
    """Sends messages for one entity kind to their hosts, gathered per host.

    With batching on, a message waits up to `window` seconds (or until `max_batch`
    messages are waiting) and then travels with the others in one Ray call. A host
    that is down or restarting is retried until `deadline`; every message is
    idempotent by its reference id, so a retry never acts twice.
    """

    def __init__(
        self,
        kind: str,
        handles: list[Any],
        directory: list[int],
        settings: RuntimeSettings,
        *,
        batching: bool = True,
    ) -> None:
        self.kind = kind
        self.handles = handles
        self.directory = directory
        self.settings = settings
        self.window = settings.batch_window_ms / 1000 if batching else 0.0
        self.max_batch = settings.batch_max if batching else 1
        # entity id -> host index: hashing ids was a visible share of a busy caller.
        self._hosts: dict[str, int] = {}
        self.buffers: dict[int, list[Queued]] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.batches_sent = 0
        self.messages_sent = 0

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
        self._queue(entity_id, message, future)
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
        for index, (entity_id, message) in enumerate(calls):
            self._queue(entity_id, message, _Slot(gathered, index))
        return future

    def _queue(self, entity_id: str, message: Any, future: asyncio.Future | _Slot) -> None:
        host = self.host_of(entity_id)
        buffer = self.buffers.setdefault(host, [])
        buffer.append((entity_id, message, future))
        if len(buffer) >= self.max_batch or self.window == 0:
            self._flush(host)
        elif host not in self.timers:
            self.timers[host] = asyncio.get_running_loop().call_later(
                self.window, self._flush, host
            )

    def _flush(self, host: int) -> None:
        timer = self.timers.pop(host, None)
        if timer is not None:
            timer.cancel()
        batch = self.buffers.pop(host, [])
        if batch:
            asyncio.ensure_future(self._send(host, batch))

    async def _send(self, host: int, batch: list[Queued]) -> None:
        self.batches_sent += 1
        self.messages_sent += len(batch)
        deadline = time.monotonic() + self.settings.call_deadline_s
        delay = 0.02
        try:
            payload = encode_batch([(i, m) for i, m, _ in batch])
        except Exception as exc:  # a message that is not a plain value: nothing was sent
            _fail(batch, InvalidInput(f"a message could not be encoded: {exc!r:.200}"))
            return
        while True:
            try:
                outcomes = decode_outcomes(await self.handles[host].call.remote(payload))
                break
            except _HOST_DOWN:
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
        if moved:
            await self._refresh_directory()
            for entity_id, message, future in moved:
                _chain(self.call(entity_id, message), future)

    async def _refresh_directory(self) -> None:
        self.directory = await self.handles[0].directory_view.remote()
        self._hosts.clear()


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


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _text(value: object, field: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{field} must be 1-{limit} characters", field=field)
    return value.strip()


def _chain(source: asyncio.Future, target: asyncio.Future) -> None:
    def copy(done: asyncio.Future) -> None:
        if target.done():
            return
        if done.exception() is not None:
            target.set_exception(done.exception())
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


class AsyncWallet:
    """One user's wallet, addressed by id wherever its host runs."""

    def __init__(self, router: Router, host_query: Callable, user_id: str) -> None:
        self._router = router
        self._query = host_query
        self.user_id = user_id

    def _send(self, message: Any) -> asyncio.Future:
        return self._router.call(self.user_id, w.validate(message))

    async def balance(self) -> w.Balance:
        return await self._send(w.GetBalance())

    async def deposit(self, amount: int, reference_id: str) -> w.Balance:
        return await self._send(w.Deposit(amount, reference_id))

    async def withdraw(self, amount: int, reference_id: str) -> w.Balance:
        return await self._send(w.Withdraw(amount, reference_id))

    async def reserve(
        self, amount: int, reference_id: str, timeout_s: float | None = None
    ) -> w.Balance:
        return await self._send(w.Reserve(amount, reference_id, timeout_s))

    async def commit(
        self, reference_id: str, amount: int | None = None, target: str = "house"
    ) -> w.Balance:
        return await self._send(w.Commit(reference_id, amount, target))

    async def release(self, reference_id: str) -> w.Balance:
        return await self._send(w.Release(reference_id))

    async def credit(
        self, amount: int, reference_id: str, source: str = "house", kind: str = "payout"
    ) -> w.Balance:
        return await self._send(w.Credit(amount, reference_id, source, kind))

    async def transactions(self, limit: int = 50, before: str | None = None) -> list[dict]:
        args = {
            "wallet_id": self.user_id,
            "limit": max(1, min(limit, 500)),
            "before": canonical_id(before, field_name="before") if before else None,
        }
        return await self._query(self.user_id, "transactions", args)


class AsyncMarket:
    """One market's odds entity, addressed by id."""

    def __init__(self, router: Router, market_id: str) -> None:
        self._router = router
        self.market_id = market_id

    def _send(self, message: Any) -> asyncio.Future:
        return self._router.call(self.market_id, message)

    async def state(self) -> dict:
        return await self._send(m.GetMarket())

    async def odds(self) -> dict[str, Decimal | None]:
        view = await self.state()
        return {s["key"]: s["odds"] for s in view["selections"]}

    async def suspend(self) -> dict:
        return await self._send(m.Transition("suspend"))

    async def reopen(self) -> dict:
        return await self._send(m.Transition("reopen"))

    async def close(self) -> dict:
        return await self._send(m.Transition("close"))

    async def void(self) -> dict:
        return await self._send(m.Transition("void"))

    async def set_odds(self, odds: dict[str, object]) -> dict:
        if not isinstance(odds, dict) or not odds:
            raise InvalidInput("odds must name at least one selection", field="odds")
        pairs = tuple((str(k), pricing.odds_to_x100(parse_odds(v))) for k, v in odds.items())
        return await self._send(m.SetOdds(pairs))

    async def settle(self, winner: str) -> dict:
        return await self._send(m.Settle(str(winner)))


class AsyncLootify:
    """The cluster, seen from one process in an event loop."""

    def __init__(self, routers: dict[str, Router], settings: RuntimeSettings) -> None:
        self.routers = routers
        self.settings = settings

    @classmethod
    async def create(
        cls,
        *,
        batching: bool = True,
        kinds: tuple[str, ...] = ("wallets", "markets"),
        settings: RuntimeSettings | None = None,
    ) -> AsyncLootify:
        settings = settings or RuntimeSettings()
        routers = {}
        for kind in kinds:
            dsn = service_dsn("wallets" if kind == "wallets" else "bets")
            first = host_handles(kind, 1, dsn, settings)
            directory = await first[0].directory_view.remote()
            handles = host_handles(kind, max(directory) + 1, dsn, settings)
            routers[kind] = Router(kind, handles, directory, settings, batching=batching)
        return cls(routers, settings)

    def wallet(self, user_id: object) -> AsyncWallet:
        router = self.routers["wallets"]
        uid = canonical_id(user_id, field_name="user_id")
        return AsyncWallet(router, self._host_query(router), uid)

    def _host_query(self, router: Router) -> Callable:
        async def query(entity_id: str, name: str, args: dict) -> Any:
            return _unwrap(await router.handles[router.host_of(entity_id)].query.remote(name, args))

        return query

    def market(self, market_id: object) -> AsyncMarket:
        return AsyncMarket(self.routers["markets"], canonical_id(market_id, field_name="market_id"))

    async def _catalog(self, query: str, **args: Any) -> Any:
        router = self.routers["markets"]
        return _unwrap(await router.handles[0].query.remote(query, args))

    async def create_event(self, name: str, category: str, starts_at: datetime) -> dict:
        name, category = _text(name, "name"), _text(category, "category")
        if not isinstance(starts_at, datetime) or starts_at.tzinfo is None:
            raise InvalidInput("starts_at must be a time with its zone", field="starts_at")
        return await self._catalog(
            "create_event", name=name, category=category, starts_at=starts_at
        )

    async def list_events(self) -> list[dict]:
        return await self._catalog("list_events")

    async def get_event(self, event_id: object) -> dict:
        return await self._catalog(
            "get_event", event_id=canonical_id(event_id, field_name="event_id")
        )

    async def create_market(
        self,
        event_id: object,
        name: str,
        type: str,
        selections: list[dict],
        *,
        overround: object = None,
        takeout: object = None,
        min_stake: int | None = None,
        max_stake: int | None = None,
        max_payout: int | None = None,
    ) -> dict:
        """A new market on an event; it starts `open`. Stakes and payouts in minor units;
        `takeout` (pools) a fraction such as "0.1425"; fixed odds need every selection's odds."""
        event = await self.get_event(event_id)
        message = book.new_market_message(
            event["id"],
            name,
            type,
            selections,
            overround,
            takeout,
            min_stake,
            max_stake,
            max_payout,
        )
        return await self.routers["markets"].call(new_id(), message)

    async def place_bet(
        self,
        user_id: object,
        market_id: object,
        selection: str,
        amount: int,
        odds: object = None,
        accept_odds: str | None = None,
        bet_id: object = None,
    ) -> dict:
        """Reserve, accept, commit: the bet's id (given, or new) makes it idempotent."""
        uid = canonical_id(user_id, field_name="user_id")
        accept = accept_odds or "exact"
        if accept not in book.ACCEPT_POLICIES:
            raise InvalidInput("accept_odds must be exact, higher or any", field="accept_odds")
        message = m.PlaceBet(
            canonical_id(bet_id, field_name="bet_id") if bet_id else new_id(),
            uid,
            _text(selection, "selection"),
            check_amount(amount),
            None if odds is None else pricing.odds_to_x100(parse_odds(odds)),
            accept,
        )
        record = await self.routers["markets"].call(
            canonical_id(market_id, field_name="market_id"), message
        )
        return record.view()

    async def get_bet(self, user_id: object, bet_id: object) -> dict:
        return await self._catalog(
            "get_bet",
            user_id=canonical_id(user_id, field_name="user_id"),
            bet_id=canonical_id(bet_id, field_name="bet_id"),
        )

    async def list_bets(self, user_id: object, limit: int = 100) -> list[dict]:
        return await self._catalog(
            "list_bets",
            user_id=canonical_id(user_id, field_name="user_id"),
            limit=max(1, min(int(limit), 500)),
        )

    async def cancel_bet(self, user_id: object, bet_id: object) -> dict:
        bet = await self.get_bet(user_id, bet_id)
        record = await self.routers["markets"].call(
            bet["market_id"], m.CancelBet(bet["id"], bet["user_id"])
        )
        return record.view()

    async def create_round_series(
        self,
        event_id: object,
        name: str,
        selections: list[dict],
        *,
        takeout: str,
        starts_at: datetime,
        period_s: int,
        open_s: int,
        grace_s: int,
    ) -> str:
        """Recurring pool rounds run by the scheduler actor (see `actors.rounds`)."""
        return await self._catalog(
            "create_round_series",
            event_id=canonical_id(event_id, field_name="event_id"),
            name=_text(name, "name"),
            selections=selections,
            takeout=str(takeout),
            starts_at=starts_at,
            period_s=int(period_s),
            open_s=int(open_s),
            grace_s=int(grace_s),
        )

    async def post_round_result(self, series_id: object, round_no: int, winner: str) -> None:
        await self._catalog(
            "post_round_result",
            series_id=canonical_id(series_id, field_name="series_id"),
            round_no=int(round_no),
            winner=_text(winner, "winner"),
        )

    async def rounds(self, series_id: object) -> list[dict]:
        return await self._catalog(
            "list_rounds", series_id=canonical_id(series_id, field_name="series_id")
        )

    async def start_scheduler(self) -> None:
        from .rounds import scheduler

        await scheduler(self.settings).start.remote()

    async def hosts(self, kind: str = "wallets") -> list[dict]:
        """Each host's pid, RSS, entity count and round counters."""
        return list(await asyncio.gather(*(h.stats.remote() for h in self.routers[kind].handles)))


class _Sync:
    """Turns an async object's coroutine methods into blocking calls on a loop thread."""

    def __init__(self, target: Any, runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._runner.run_sync(lambda: attr(*args, **kwargs))
            if isinstance(result, (AsyncWallet, AsyncMarket)):
                return _Sync(result, self._runner)
            return result

        return call

    def __repr__(self) -> str:
        return f"<{type(self._target).__name__} {getattr(self._target, 'user_id', '')}>"


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="lootify-client"
        )
        self.thread.start()

    def run_sync(self, make: Callable[[], Any]) -> Any:
        async def runner() -> Any:
            value = make()
            if asyncio.isfuture(value) or asyncio.iscoroutine(value):
                return await value
            return value

        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    batching: bool = True,
    kinds: tuple[str, ...] = ("wallets", "markets"),
) -> Any:
    """Join the running cluster (RAY_ADDRESS, else `make up`'s head) and return a
    blocking client: `connect().wallet(user_id).deposit(10_000, reference_id="d-1")`."""
    settings = RuntimeSettings() if namespace is None else RuntimeSettings(namespace=namespace)
    if not ray.is_initialized():
        use_ray_token_auth()
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or _local_head(),
            namespace=settings.namespace,
            log_to_driver=False,
        )
    runner = _LoopThread()
    client = runner.run(AsyncLootify.create(batching=batching, kinds=kinds, settings=settings))
    return _Sync(client, runner)


def _local_head() -> str:
    from .config import DATA_DIR

    path = DATA_DIR / "ray_address"
    return path.read_text().strip() if path.exists() else "auto"


__all__ = ["AsyncLootify", "AsyncWallet", "LootifyError", "Router", "connect"]
