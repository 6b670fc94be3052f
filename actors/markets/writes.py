"""What a market's commit cycle records: one type per kind of write, persisted by
`store`, published by `events`, and followed by the saga's money moves."""

from __future__ import annotations

from typing import NamedTuple

from actors.runtime import Op

from .state import Bet, Market, Refusal


class MarketChanged(NamedTuple):
    market: Market
    # "status_changed" or "odds" (published), or "stakes": only its count of
    # unstaked bets was set right, which nobody needs to hear about.
    change: str


class BetPlaced(NamedTuple):
    market_id: str
    bet: Bet
    op: Op


class BetRefused(NamedTuple):
    """A keyed bet refused: its refusal is kept for replays of the key."""

    market_id: str
    bet_id: str
    refusal: Refusal


class BetChanged(NamedTuple):
    market_id: str
    bet: Bet


class StakeCommitted(NamedTuple):
    market_id: str
    bet: Bet


class MarketSettled(NamedTuple):
    market_id: str
    winner: str
    accepted: list[Bet]
    pool: int  # pools: every stake; fixed odds: 0
    winning: int  # pools: the stakes on the winner; fixed odds: 1


class StakeReturned(NamedTuple):
    """A bet refused after its stake was taken: the saga gives the stake back."""

    market_id: str
    user_id: str
    bet_id: str
    amount: int


class StakeKept(NamedTuple):
    """An open stake whose bet the market has: the saga closes it."""

    user_id: str
    bet_id: str


class BetsToRecover(NamedTuple):
    """Bets whose money a crash left half-way: the saga moves it again."""

    market_id: str
    bets: list[Bet]
