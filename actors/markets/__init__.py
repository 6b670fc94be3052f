"""The odds entity: one per market, its bets, their saga and recurring series."""

from .kind import MarketKind
from .messages import (
    ACCEPT_POLICIES,
    BetRecord,
    CancelBet,
    CreateMarket,
    GetMarket,
    MoneyMoved,
    PlaceBet,
    Recover,
    SetOdds,
    Settle,
    Transition,
    new_market_message,
)
from .raffle import new_raffle_message
from .settings import MarketSettings

__all__ = [
    "ACCEPT_POLICIES",
    "BetRecord",
    "CancelBet",
    "CreateMarket",
    "GetMarket",
    "MarketKind",
    "MarketSettings",
    "MoneyMoved",
    "PlaceBet",
    "Recover",
    "SetOdds",
    "Settle",
    "Transition",
    "new_market_message",
    "new_raffle_message",
]
