"""The blocking client for notebooks and scripts: every method is a plain call.

It runs an `AsyncLootify` on a loop of its own, in a background thread, and has a
real method (with its docstring) for each of the async client's, so `dir()`, tab
completion and `help()` show what an engineer can do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import ray

from actors.runtime import Router
from actors.settings import ray_address, use_ray_token_auth
from actors.wallets import Balance

from .aio import AsyncLootify, AsyncMarket, AsyncWallet
from .settings import Settings

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="lootify-client"
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


class Wallet:
    """One user's wallet. Amounts are integers of minor units (cents); every movement
    carries a reference id and is idempotent by it."""

    def __init__(self, wallet: AsyncWallet, loop: LoopThread) -> None:
        self._wallet = wallet
        self._loop = loop

    @property
    def user_id(self) -> str:
        return self._wallet.user_id

    def __repr__(self) -> str:
        return f"<Wallet {self.user_id}>"

    def balance(self) -> Balance:
        """`Balance(balance, available, reserved)`, as of the last committed operation."""
        return self._loop.run(self._wallet.balance())

    def deposit(self, amount: int, reference_id: str, key_id: str | None = None) -> Balance:
        """Money in from outside (journal: external -a, user +a). `key_id`: the client's
        Idempotency-Key as an id (`actors.wallets.messages`), if it sent one."""
        return self._loop.run(self._wallet.deposit(amount, reference_id, key_id))

    def withdraw(self, amount: int, reference_id: str, key_id: str | None = None) -> Balance:
        """Money out; refused with `InsufficientFunds` beyond what is available."""
        return self._loop.run(self._wallet.withdraw(amount, reference_id, key_id))

    def reserve(self, amount: int, reference_id: str, timeout_s: float | None = None,
                key_id: str | None = None) -> Balance:
        """Hold `amount` (a pending transfer) until committed, released or timed out."""
        return self._loop.run(self._wallet.reserve(amount, reference_id, timeout_s, key_id))

    def commit(
        self, reference_id: str, amount: int | None = None, target: str = "house"
    ) -> Balance:
        """Spend a reservation, wholly (`amount=None`) or in part; the rest returns."""
        return self._loop.run(self._wallet.commit(reference_id, amount, target))

    def release(self, reference_id: str) -> Balance:
        """Give a reservation back to the user."""
        return self._loop.run(self._wallet.release(reference_id))

    def credit(
        self, amount: int, reference_id: str, source: str = "house", kind: str = "payout"
    ) -> Balance:
        """Money in from an account of the platform: a payout or a bet's refund."""
        return self._loop.run(self._wallet.credit(amount, reference_id, source, kind))

    def transactions(self, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
        """The operations that changed the balance, newest first (`before`: an id)."""
        return self._loop.run(self._wallet.transactions(limit, before))


class Market:
    """One market's odds entity. Every transition answers the market as it now is."""

    def __init__(self, market: AsyncMarket, loop: LoopThread) -> None:
        self._market = market
        self._loop = loop

    @property
    def market_id(self) -> str:
        return self._market.market_id

    def __repr__(self) -> str:
        return f"<Market {self.market_id}>"

    def state(self) -> dict[str, Any]:
        """Status, selections with their odds, limits, winner and version."""
        return self._loop.run(self._market.state())

    def odds(self) -> dict[str, Decimal | None]:
        """Each selection's current decimal odds."""
        return self._loop.run(self._market.odds())

    def suspend(self) -> dict[str, Any]:
        """Stop taking bets for a while (`reopen` takes them again)."""
        return self._loop.run(self._market.suspend())

    def reopen(self) -> dict[str, Any]:
        return self._loop.run(self._market.reopen())

    def close(self) -> dict[str, Any]:
        """Stop taking bets for good, before settling."""
        return self._loop.run(self._market.close())

    def void(self) -> dict[str, Any]:
        """Call the market off: every accepted stake is refunded."""
        return self._loop.run(self._market.void())

    def set_odds(self, odds: dict[str, object]) -> dict[str, Any]:
        """New odds for some selections (fixed-odds markets), e.g. `{"home": "2.10"}`."""
        return self._loop.run(self._market.set_odds(odds))

    def settle(self, winner: str) -> dict[str, Any]:
        """Settle a closed market: winners are paid, the rest lose their stakes."""
        return self._loop.run(self._market.settle(winner))


class Lootify:
    """The cluster, from a notebook or a script (see `actors.connect`)."""

    def __init__(self, client: AsyncLootify, loop: LoopThread) -> None:
        self._client = client
        self._loop = loop

    def __repr__(self) -> str:
        return f"<Lootify namespace={self._client.settings.namespace!r}>"

    @property
    def settings(self) -> Settings:
        return self._client.settings

    @property
    def routers(self) -> dict[str, Router]:
        """The routers per entity kind, for sending messages of your own."""
        return self._client.routers

    def wallet(self, user_id: object) -> Wallet:
        """The wallet of `user_id` (a UUID), wherever its host runs."""
        return Wallet(self._client.wallet(user_id), self._loop)

    def market(self, market_id: object) -> Market:
        """The odds entity of `market_id` (a UUID)."""
        return Market(self._client.market(market_id), self._loop)

    def create_event(self, name: str, category: str, starts_at: datetime) -> dict[str, Any]:
        """A new event (`starts_at` with its time zone)."""
        return self._loop.run(self._client.create_event(name, category, starts_at))

    def list_events(self) -> list[dict[str, Any]]:
        """Events to come, under way, or of the last day, with their markets."""
        return self._loop.run(self._client.list_events())

    def get_event(self, event_id: object) -> dict[str, Any]:
        return self._loop.run(self._client.get_event(event_id))

    def create_market(
        self,
        event_id: object,
        name: str,
        type: str,
        selections: list[dict[str, Any]],
        *,
        overround: object = None,
        takeout: object = None,
        min_stake: int | None = None,
        max_stake: int | None = None,
        max_payout: int | None = None,
        closes_at: datetime | None = None,
        in_play: bool = False,
    ) -> dict[str, Any]:
        """A new `fixed_odds` or `pool` market on an event; it starts `open`. Stakes and
        payouts in minor units; `takeout` (pools) a fraction such as "0.1425"; fixed
        odds need every selection's odds. It closes by itself at `closes_at`, by
        default the event's start, unless `in_play`."""
        return self._loop.run(
            self._client.create_market(
                event_id,
                name,
                type,
                selections,
                overround=overround,
                takeout=takeout,
                min_stake=min_stake,
                max_stake=max_stake,
                max_payout=max_payout,
                closes_at=closes_at,
                in_play=in_play,
            )
        )

    def create_raffle(self, event_id: object, name: str, **terms: Any) -> dict[str, Any]:
        """A raffle: `tickets`, `ticket_price`, `prize`, and optionally `lottery`,
        `result_grace_s`, `closes_at` (see `AsyncLootify.create_raffle`)."""
        return self._loop.run(self._client.create_raffle(event_id, name, **terms))

    def post_lottery_draw(
        self, lottery: str, draw: str, drawn_at: datetime | None = None
    ) -> dict[str, Any]:
        """A lottery's result: it settles every closed raffle waiting for it."""
        return self._loop.run(self._client.post_lottery_draw(lottery, draw, drawn_at))

    def void_event(self, event_id: object) -> dict[str, Any]:
        """Cancel the event and void its markets not yet settled (stakes refunded)."""
        return self._loop.run(self._client.void_event(event_id))

    def place_bet(
        self,
        user_id: object,
        market_id: object,
        selection: str,
        amount: int,
        odds: object = None,
        accept_odds: str | None = None,
        bet_id: object = None,
    ) -> dict[str, Any]:
        """Stake `amount` on `selection`: at `odds` exactly, or any `higher`, or `any`
        price (`accept_odds`). The bet's id (given, or new) makes it idempotent."""
        return self._loop.run(
            self._client.place_bet(user_id, market_id, selection, amount, odds, accept_odds, bet_id)
        )

    def get_bet(self, user_id: object, bet_id: object) -> dict[str, Any]:
        return self._loop.run(self._client.get_bet(user_id, bet_id))

    def list_bets(self, user_id: object, limit: int = 100) -> list[dict[str, Any]]:
        """A user's bets, newest first."""
        return self._loop.run(self._client.list_bets(user_id, limit))

    def cancel_bet(self, user_id: object, bet_id: object) -> dict[str, Any]:
        """Cancel an accepted bet while its market is open; the stake is refunded."""
        return self._loop.run(self._client.cancel_bet(user_id, bet_id))

    def create_round_series(
        self,
        event_id: object,
        name: str,
        selections: list[dict[str, Any]],
        *,
        takeout: str,
        starts_at: datetime,
        period_s: int,
        open_s: int,
        grace_s: int,
    ) -> str:
        """Recurring pool rounds: one every `period_s` from `starts_at`, open for bets
        `open_s`, voided if no result comes `grace_s` after closing. Its id."""
        return self._loop.run(
            self._client.create_round_series(
                event_id,
                name,
                selections,
                takeout=takeout,
                starts_at=starts_at,
                period_s=period_s,
                open_s=open_s,
                grace_s=grace_s,
            )
        )

    def post_round_result(self, series_id: object, round_no: int, winner: str) -> None:
        """The winner of a series' round; the scheduler settles it."""
        self._loop.run(self._client.post_round_result(series_id, round_no, winner))

    def rounds(self, series_id: object) -> list[dict[str, Any]]:
        """A series' rounds so far: number, market, lock time and status."""
        return self._loop.run(self._client.rounds(series_id))

    def start_scheduler(self) -> None:
        """Start the cluster's series scheduler (idempotent)."""
        self._loop.run(self._client.start_scheduler())

    def hosts(self, kind: str = "wallets") -> list[dict[str, Any]]:
        """Each host of `kind`: pid, RSS, entities, queue, calls and commit cycles."""
        return self._loop.run(self._client.hosts(kind))


def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    batching: bool = True,
    kinds: tuple[str, ...] = ("wallets", "markets"),
) -> Lootify:
    """Join the running cluster (`address`, else RAY_ADDRESS, else `make up`'s head)
    and return a blocking client:
    `connect().wallet(user_id).deposit(10_000, reference_id="d-1")`."""
    settings = Settings()
    if namespace is not None:
        settings = replace(settings, runtime=replace(settings.runtime, namespace=namespace))
    if not ray.is_initialized():
        use_ray_token_auth()
        ray.init(
            address=address or ray_address(), namespace=settings.namespace, log_to_driver=False
        )
    loop = LoopThread()
    client = loop.run(AsyncLootify.create(batching=batching, kinds=kinds, settings=settings))
    return Lootify(client, loop)
