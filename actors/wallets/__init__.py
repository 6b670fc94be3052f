"""The wallet entity: one per user, with TigerBeetle's two-phase transfers."""

from .kind import WalletKind
from .messages import (
    Balance,
    Commit,
    Credit,
    Deposit,
    Expire,
    GetBalance,
    Release,
    Reserve,
    Stake,
    Withdraw,
    validate,
)
from .settings import WalletSettings

__all__ = [
    "Balance",
    "Commit",
    "Credit",
    "Deposit",
    "Expire",
    "GetBalance",
    "Release",
    "Reserve",
    "Stake",
    "WalletKind",
    "WalletSettings",
    "Withdraw",
    "validate",
]
