"""A market's state in its host: its book of bets, prices and exposure."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from actors.errors import (
    InvalidInput,
    MarketNotOpen,
    OddsChanged,
    PayoutTooHigh,
    StakeTooHigh,
    StakeTooLow,
)

from . import pricing
from .clock import to_datetime
from .messages import BetRecord, PlaceBet
from .raffle import Raffle


class Refusal(NamedTuple):
    """A keyed bet the market refused, and why."""

    user_id: str
    request_hash: str
    code: str
    message: str


class Bet:
    __slots__ = (
        "id",
        "user_id",
        "selection",
        "amount",
        "odds_x100",
        "potential",
        "status",
        "payout",
        "stake",
        "payout_state",
        "placed_at",
        "settled_at",
        "request_hash",
    )

    def __init__(
        self,
        id: str,
        user_id: str,
        selection: str,
        amount: int,
        odds_x100: int | None,
        potential: int | None,
        status: str = "accepted",
        payout: int = 0,
        stake: str = "reserved",
        payout_state: str = "none",
        placed_at: float | None = None,
        settled_at: float | None = None,
        request_hash: str | None = None,
    ) -> None:
        self.id = id
        self.user_id = user_id
        self.selection = selection
        self.amount = amount
        self.odds_x100 = odds_x100
        self.potential = potential
        self.status = status
        self.payout = payout
        self.stake = stake
        self.payout_state = payout_state
        self.placed_at = placed_at if placed_at is not None else time.time()
        self.settled_at = settled_at
        self.request_hash = request_hash

    def first_answer(self, market_id: str) -> BetRecord:
        """The bet as it was answered when placed, for a replay of its idempotency key."""
        return self.record(market_id)._replace(
            status="accepted", payout=0, settled_at=None, replayed=True
        )

    def record(self, market_id: str) -> BetRecord:
        return BetRecord(
            self.id,
            self.user_id,
            market_id,
            self.selection,
            self.amount,
            self.odds_x100,
            self.potential,
            self.status,
            self.payout,
            self.placed_at,
            self.settled_at,
        )

    def view(self, market_id: str) -> dict[str, Any]:
        return self.record(market_id).view()


class Market:
    __slots__ = (
        "id",
        "event_id",
        "name",
        "type",
        "status",
        "keys",
        "names",
        "model",
        "takeout_bp",
        "min_stake",
        "max_stake",
        "max_payout",
        "winner",
        "version",
        "stored_version",
        "exposure",
        "odds",
        "bets",
        "refused",
        "unstaked",
        "settled_at",
        "closes_at",
        "in_play",
        "raffle",
    )

    def __init__(self, market_id: str) -> None:
        self.id = market_id
        self.event_id: str | None = None  # None: no such market yet
        # Set when the market is created or loaded.
        self.name = ""
        self.type = "fixed_odds"
        self.status = "open"
        self.keys: list[str] = []
        self.names: list[str] = []
        self.takeout_bp = 0
        self.min_stake = 0
        self.max_stake = 0
        self.max_payout: int | None = None
        self.version = 0
        self.stored_version = -1
        self.bets: dict[str, Bet] = {}
        # The refusals of keyed bets (migration 0007), kept for replays; mostly none.
        self.refused: dict[str, Refusal] | None = None
        # Ids of the bets whose stake is still reserved (see migration 0006).
        self.unstaked: set[str] = set()
        self.exposure: dict[str, int] = {}  # fixed odds: liability; pool: stakes
        self.odds: Mapping[str, int | None] = {}
        self.model: pricing.FixedOddsModel | None = None
        self.winner: str | None = None
        self.settled_at: float | None = None
        self.closes_at: float | None = None  # epoch seconds; None: in play
        self.in_play = False
        self.raffle: Raffle | None = None

    def reprice(self) -> None:
        if self.raffle is not None:
            self.odds = {}  # a ticket has a price, not odds
        elif self.type == "pool":
            self.odds = pricing.pool_odds(self.exposure, self.takeout_bp)
        else:
            assert self.model is not None
            self.odds = self.model.price(self.exposure)

    def add_exposure(self, bet: Bet, sign: int) -> None:
        if self.raffle is not None:  # a raffle's exposure is who holds which number
            if sign > 0:
                self.raffle.holders[bet.selection] = bet.id
            else:
                self.raffle.holders.pop(bet.selection, None)
            return
        self.exposure[bet.selection] += sign * (
            bet.amount if self.type == "pool" else (bet.potential or 0)
        )

    def quote(self, msg: PlaceBet, now: float) -> int | None:
        """The price a bet would be accepted at `now`, or the reason it is refused."""
        if self.status != "open":
            raise MarketNotOpen(f"the market is {self.status}", status=self.status)
        # Housekeeping closes the market within a second; no bet slips in meanwhile.
        if self.closes_at is not None and now >= self.closes_at:
            raise MarketNotOpen("the market closed at its closes_at", status="closed")
        if self.raffle is not None:
            self.raffle.check(msg)
            return None
        if msg.selection not in self.odds:
            raise InvalidInput(f"unknown selection {msg.selection!r}", field="selection")
        if msg.amount < self.min_stake:
            raise StakeTooLow(f"the minimum stake is {self.min_stake}", min_stake=self.min_stake)
        if msg.amount > self.max_stake:
            raise StakeTooHigh(f"the maximum stake is {self.max_stake}", max_stake=self.max_stake)
        current = self.odds[msg.selection]
        if self.type == "pool":
            return current
        assert current is not None
        if msg.odds_x100 is not None and msg.accept != "any":
            if msg.accept == "exact" and current != msg.odds_x100:
                raise OddsChanged("the price moved", odds=current)
            if msg.accept == "higher" and current < msg.odds_x100:
                raise OddsChanged("the price moved below yours", odds=current)
        cap = self.max_payout
        if cap is not None and pricing.fixed_payout(msg.amount, current) > cap:
            raise PayoutTooHigh(f"the maximum payout is {cap}", max_payout=cap)
        return current

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "selections": [
                {"key": k, "name": n, "odds": pricing.x100_to_odds(self.odds[k])}
                for k, n in zip(self.keys, self.names, strict=True)
            ],
            "min_stake": self.min_stake,
            "max_stake": self.max_stake,
            "max_payout": self.max_payout,
            "winner": self.winner,
            "takeout_bp": self.takeout_bp if self.type == "pool" else None,
            "version": self.version,
            "closes_at": to_datetime(self.closes_at),
            "in_play": self.in_play,
            **(self.raffle.view(self.status, self.winner) if self.raffle else {}),
        }

    def odds_view(self) -> dict[str, Any]:
        return {k: pricing.x100_to_odds(v) for k, v in self.odds.items()}


def pricing_json(m: Market) -> dict:
    if m.raffle is not None:
        return m.raffle.to_json()
    if m.type == "pool":
        return {"model": "pool", "takeout_bp": m.takeout_bp}
    assert m.model is not None
    return m.model.to_json()
