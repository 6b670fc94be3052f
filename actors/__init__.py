"""Lootify's runtime: wallet and market entities hosted on Ray, persisted to PostgreSQL.

import actors
lootify = actors.connect()
lootify.wallet(user_id).deposit(10_000, reference_id="dep-1")
"""

from .client import AsyncLootify, connect
from .wallet import Balance

__all__ = ["AsyncLootify", "Balance", "connect"]
