"""The wallets' settings, read from the environment once, when a process builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.runtime.settings import KindSettings, env_int


@dataclass(frozen=True)
class WalletSettings(KindSettings):
    hosts: int = field(default_factory=lambda: env_int("LOOTIFY_WALLET_HOSTS", 2))
