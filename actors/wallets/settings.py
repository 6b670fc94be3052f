"""The wallets' settings, read from the environment once, when a process builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.runtime.settings import KindSettings, env_int


@dataclass(frozen=True)
class WalletSettings(KindSettings):
    # One host carries a bet's two wallet operations at ~0.4 ms of CPU: a few thousand
    # bets a second. A second host on the same cores halves each call's batch (its
    # fixed cost is paid per call) for no capacity; add hosts with the cores.
    hosts: int = field(default_factory=lambda: env_int("LOOTIFY_WALLET_HOSTS", 1))
