"""The markets' settings, read from the environment once, when a process builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.runtime.settings import KindSettings, env_float, env_int


@dataclass(frozen=True)
class MarketSettings(KindSettings):
    hosts: int = field(default_factory=lambda: env_int("LOOTIFY_MARKET_HOSTS", 1))
    # How long a bet's stake may stay open (taken, its bet not yet recorded) before
    # recovery refuses the bet and returns it: well past any call's deadline, so that
    # a bet still on its way is never refused by recovery.
    open_stake_timeout_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_OPEN_STAKE_TIMEOUT_S", 30.0)
    )
