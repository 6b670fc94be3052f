"""Lootify's runtime: wallet and market entities hosted on Ray, persisted to PostgreSQL.

import actors
lootify = actors.connect()
lootify.wallet(user_id).deposit(10_000, reference_id="dep-1")
"""

from .client import AsyncLootify, Lootify, Settings, connect
from .wallets import Balance

__all__ = ["AsyncLootify", "Balance", "Lootify", "Settings", "connect"]
