"""The cluster's settings as one value: the runtime's and each kind's."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.markets.settings import MarketSettings
from actors.runtime.settings import KindSettings, RuntimeSettings
from actors.wallets.settings import WalletSettings


@dataclass(frozen=True)
class Settings:
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    wallets: WalletSettings = field(default_factory=WalletSettings)
    markets: MarketSettings = field(default_factory=MarketSettings)

    @property
    def namespace(self) -> str:
        """The Ray namespace every named actor of the cluster lives in."""
        return self.runtime.namespace

    def of_kind(self, name: str) -> KindSettings:
        """The settings of the entity kind `name` (a field of this class)."""
        kind_settings = getattr(self, name, None)
        if not isinstance(kind_settings, KindSettings):
            raise ValueError(f"no settings for the entity kind {name!r}")
        return kind_settings
