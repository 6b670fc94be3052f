"""The cluster seen from one process in an event loop (Serve replicas, benchmarks,
scripts): wallets and markets addressed by id, events, bets and series."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ray

from actors import markets, wallets
from actors.errors import AlreadySettled, InvalidInput, InvalidTransition
from actors.markets import pricing
from actors.markets.series import SCHEDULER_NAME, scheduler
from actors.money import check_amount, parse_odds
from actors.pubsub import pubsub_handle
from actors.runtime import Router, canonical_id, connect_router, kind_named, new_id
from actors.settings import service_dsn

from .settings import Settings

HostQuery = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _text(value: object, field: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{field} must be 1-{limit} characters", field=field)
    return value.strip()


class AsyncWallet:
    """One user's wallet, addressed by id wherever its host runs."""

    def __init__(self, router: Router, host_query: HostQuery, user_id: str) -> None:
        self._router = router
        self._query = host_query
        self.user_id = user_id

    def _send(self, message: Any) -> asyncio.Future[Any]:
        return self._router.call(self.user_id, wallets.validate(message))

    async def balance(self) -> wallets.Balance:
        return await self._send(wallets.GetBalance())

    async def deposit(
        self, amount: int, reference_id: str, key_id: str | None = None
    ) -> wallets.Balance:
        return await self._send(wallets.Deposit(amount, reference_id, key_id))

    async def withdraw(
        self, amount: int, reference_id: str, key_id: str | None = None
    ) -> wallets.Balance:
        return await self._send(wallets.Withdraw(amount, reference_id, key_id))

    async def reserve(
        self, amount: int, reference_id: str, timeout_s: float | None = None,
        key_id: str | None = None,
    ) -> wallets.Balance:
        return await self._send(wallets.Reserve(amount, reference_id, timeout_s, key_id=key_id))

    async def commit(
        self, reference_id: str, amount: int | None = None, target: str = "house"
    ) -> wallets.Balance:
        return await self._send(wallets.Commit(reference_id, amount, target))

    async def release(self, reference_id: str) -> wallets.Balance:
        return await self._send(wallets.Release(reference_id))

    async def credit(
        self, amount: int, reference_id: str, source: str = "house", kind: str = "payout"
    ) -> wallets.Balance:
        return await self._send(wallets.Credit(amount, reference_id, source, kind))

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

    def _send(self, message: Any) -> asyncio.Future[Any]:
        return self._router.call(self.market_id, message)

    async def state(self) -> dict:
        return await self._send(markets.GetMarket())

    async def odds(self) -> dict[str, Decimal | None]:
        view = await self.state()
        return {s["key"]: s["odds"] for s in view["selections"]}

    async def suspend(self) -> dict:
        return await self._send(markets.Transition("suspend"))

    async def reopen(self) -> dict:
        return await self._send(markets.Transition("reopen"))

    async def close(self) -> dict:
        return await self._send(markets.Transition("close"))

    async def void(self) -> dict:
        return await self._send(markets.Transition("void"))

    async def set_odds(self, odds: dict[str, object]) -> dict:
        if not isinstance(odds, dict) or not odds:
            raise InvalidInput("odds must name at least one selection", field="odds")
        pairs = tuple((str(k), pricing.odds_to_x100(parse_odds(v))) for k, v in odds.items())
        return await self._send(markets.SetOdds(pairs))

    async def settle(self, winner: str) -> dict:
        return await self._send(markets.Settle(str(winner)))


class AsyncLootify:
    """The cluster, seen from one process in an event loop."""

    def __init__(self, routers: dict[str, Router], settings: Settings) -> None:
        self.routers = routers
        self.settings = settings

    @classmethod
    async def create(
        cls,
        *,
        batching: bool = True,
        direct: bool = False,
        kinds: tuple[str, ...] = ("wallets", "markets"),
        settings: Settings | None = None,
    ) -> AsyncLootify:
        """`direct`: for a long-lived server process, send over direct links to the
        hosts (`actors.runtime.link`); `close` them when done."""
        settings = settings or Settings()
        # The broker is made here, by whoever brings the hosts up, not by a host on its
        # first event: made from inside a busy host, it burnt ~0.05-0.08 cores more under
        # load (measured with the hot-market benchmark; the cause lies inside Ray).
        pubsub_handle(settings.namespace)
        routers = {}
        for name in kinds:
            kind = kind_named(name)
            routers[name] = await connect_router(
                kind,
                service_dsn(kind.service),
                settings.runtime,
                settings.of_kind(name),
                batching=batching,
                direct=direct,
            )
        return cls(routers, settings)

    def close(self) -> None:
        """Close the direct links (calls after go through Ray)."""
        for router in self.routers.values():
            router.close()

    def wallet(self, user_id: object) -> AsyncWallet:
        router = self.routers["wallets"]
        uid = canonical_id(user_id, field_name="user_id")
        return AsyncWallet(router, self._host_query(router), uid)

    def _host_query(self, router: Router) -> HostQuery:
        async def query(entity_id: str, name: str, args: dict[str, Any]) -> Any:
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
        closes_at: datetime | None = None,
        in_play: bool = False,
    ) -> dict:
        """A new market on an event; it starts `open`. Stakes and payouts in minor units;
        `takeout` (pools) a fraction such as "0.1425"; fixed odds need every selection's odds.
        It closes by itself at `closes_at`, by default the event's start unless `in_play`."""
        event = await self.get_event(event_id)
        if closes_at is not None and (not isinstance(closes_at, datetime) or not closes_at.tzinfo):
            raise InvalidInput("closes_at must be a time with its zone", field="closes_at")
        if closes_at is None and not in_play:
            closes_at = event["starts_at"]
        message = markets.new_market_message(
            event["id"],
            name,
            type,
            selections,
            overround,
            takeout,
            min_stake,
            max_stake,
            max_payout,
            closes_at=None if closes_at is None else closes_at.timestamp(),
            in_play=bool(in_play),
        )
        return await self.routers["markets"].call(new_id(), message)

    async def create_raffle(
        self,
        event_id: object,
        name: str,
        *,
        tickets: int,
        ticket_price: int,
        prize: int,
        lottery: str | None = None,
        result_grace_s: int | None = None,
        closes_at: datetime | None = None,
    ) -> dict:
        """A raffle of `tickets` numbered tickets (100, 1000 or 10000) at `ticket_price`;
        the holder of the number a draw ends with is paid `prize` (minor units). With
        `lottery`, that lottery's first draw after closing settles it, and none within
        `result_grace_s` voids it. It closes at `closes_at`, by default the event's start."""
        event = await self.get_event(event_id)
        if closes_at is not None and (not isinstance(closes_at, datetime) or not closes_at.tzinfo):
            raise InvalidInput("closes_at must be a time with its zone", field="closes_at")
        closes_at = closes_at or event["starts_at"]
        message = markets.new_raffle_message(
            event["id"], name, tickets, ticket_price, prize, lottery, result_grace_s,
            closes_at=closes_at.timestamp(),
        )
        return await self.routers["markets"].call(new_id(), message)

    async def post_lottery_draw(
        self, lottery: str, draw: str, drawn_at: datetime | None = None
    ) -> dict:
        """A lottery's result: it settles every closed raffle waiting for it."""
        drawn_at = drawn_at or datetime.now(UTC)
        if not isinstance(draw, str) or not draw.isascii() or not draw.isdigit():
            raise InvalidInput("a draw is a string of digits", field="draw")
        if len(draw) < 4:
            raise InvalidInput("a draw has at least 4 digits", field="draw")
        return await self._catalog(
            "post_lottery_draw", lottery=_text(lottery, "lottery", 64), draw=draw,
            drawn_at=drawn_at,
        )

    async def void_event(self, event_id: object) -> dict:
        """Cancel the event and void each of its markets not yet settled (refunds)."""
        event = await self.get_event(event_id)
        await self._catalog("cancel_event", event_id=event["id"])
        for m in event["markets"]:
            if m["status"] in ("settled", "void"):
                continue
            try:
                await self.market(m["id"]).void()
            except (InvalidTransition, AlreadySettled):
                pass  # settled or voided since the event was read
        return await self.get_event(event["id"])

    async def place_bet(
        self,
        user_id: object,
        market_id: object,
        selection: str,
        amount: int,
        odds: object = None,
        accept_odds: str | None = None,
        bet_id: object = None,
        request_hash: str | None = None,
    ) -> dict:
        """Reserve, accept, commit: the bet's id (given, or new) makes it idempotent.
        With `request_hash` (the gateway's, for an Idempotency-Key) a replay gets the
        first answer, refusals included, and another request with the key a conflict."""
        uid = canonical_id(user_id, field_name="user_id")
        accept = accept_odds or "exact"
        if accept not in markets.ACCEPT_POLICIES:
            raise InvalidInput("accept_odds must be exact, higher or any", field="accept_odds")
        message = markets.PlaceBet(
            canonical_id(bet_id, field_name="bet_id") if bet_id else new_id(),
            uid,
            _text(selection, "selection"),
            check_amount(amount),
            None if odds is None else pricing.odds_to_x100(parse_odds(odds)),
            accept,
            request_hash,
        )
        record = await self.routers["markets"].call(
            canonical_id(market_id, field_name="market_id"), message
        )
        return {**record.view(), "replayed": True} if record.replayed else record.view()

    async def get_bet(self, user_id: object, bet_id: object) -> dict:
        return await self._catalog(
            "get_bet",
            user_id=canonical_id(user_id, field_name="user_id"),
            bet_id=canonical_id(bet_id, field_name="bet_id"),
        )

    async def bet_id_taken(self, bet_id: object) -> bool:
        """Whether a bet, placed or refused, has this id."""
        return await self._catalog("bet_id_taken", bet_id=canonical_id(bet_id, field_name="bet_id"))

    async def list_bets(self, user_id: object, limit: int = 100) -> list[dict]:
        return await self._catalog(
            "list_bets",
            user_id=canonical_id(user_id, field_name="user_id"),
            limit=max(1, min(int(limit), 500)),
        )

    async def cancel_bet(self, user_id: object, bet_id: object) -> dict:
        bet = await self.get_bet(user_id, bet_id)
        record = await self.routers["markets"].call(
            bet["market_id"], markets.CancelBet(bet["id"], bet["user_id"])
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
        """Recurring pool rounds run by the scheduler actor (see `actors.markets.series`)."""
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

    async def create_daily_series(
        self,
        event_id: object,
        name: str,
        selections: list[dict],
        *,
        takeout: str,
        time_of_day: str,
        timezone: str,
        lock_delay_s: int = 0,
        settle_delay_s: int = 0,
        grace_s: int = 1800,
        oracle: str | None = None,
    ) -> dict:
        """Pool rounds locking daily at `time_of_day` in `timezone` (+ `lock_delay_s`),
        settled from `settle_delay_s` after the lock by an operator's result or the
        `oracle` adapter's, voided with refunds when none came `grace_s` later."""
        return await self._catalog(
            "create_daily_series",
            event_id=canonical_id(event_id, field_name="event_id"),
            name=_text(name, "name"), selections=selections, takeout=str(takeout),
            time_of_day=time_of_day, timezone=timezone, lock_delay_s=lock_delay_s,
            settle_delay_s=settle_delay_s, grace_s=grace_s, oracle=oracle,
        )

    async def get_series(self, series_id: object) -> dict:
        """A series with its rounds so far."""
        return await self._catalog(
            "get_series", series_id=canonical_id(series_id, field_name="series_id"))

    async def list_series(self) -> list[dict]:
        return await self._catalog("list_series")

    async def stop_series(self, series_id: object) -> dict:
        """No new rounds; one already open still locks and settles."""
        return await self._catalog(
            "stop_series", series_id=canonical_id(series_id, field_name="series_id"))

    async def scheduler_status(self) -> dict:
        """The running scheduler's last tick; ValueError when there is none."""
        handle = await asyncio.to_thread(ray.get_actor, SCHEDULER_NAME, self.settings.namespace)
        return await handle.status.remote()

    async def start_scheduler(self) -> None:
        await scheduler(self.settings).start.remote()

    async def hosts(self, kind: str = "wallets") -> list[dict]:
        """Each host's pid, RSS, entity count and round counters."""
        return list(await asyncio.gather(*(h.stats.remote() for h in self.routers[kind].handles)))
