"""The markets' settings, read from the environment once, when a process builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.runtime.settings import KindSettings, env_float, env_int


@dataclass(frozen=True)
class MarketSettings(KindSettings):
    hosts: int = field(default_factory=lambda: env_int("LOOTIFY_MARKET_HOSTS", 1))
    # How long a bet's stake may stay reserved before the wallet takes it back.
    reservation_timeout_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_RESERVATION_TIMEOUT_S", 60.0)
    )
