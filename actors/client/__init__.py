"""The engineers' client: `AsyncLootify` in an event loop, `Lootify` (from
`connect`) in notebooks and scripts."""

from .aio import AsyncLootify, AsyncMarket, AsyncWallet
from .blocking import LoopThread, Lootify, Market, Wallet, connect
from .settings import Settings

__all__ = [
    "AsyncLootify",
    "AsyncMarket",
    "AsyncWallet",
    "LoopThread",
    "Lootify",
    "Market",
    "Settings",
    "Wallet",
    "connect",
]
