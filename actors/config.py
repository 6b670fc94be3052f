"""Settings read from the environment, in one place.

Every process of the cluster (driver, host actors, Serve replicas) reads the same
variables, so a setting changed before `make up` reaches all of them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LOOTIFY_DATA_DIR", PROJECT_ROOT / ".data"))
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
DATABASE_URL_FILE = DATA_DIR / "database_url"

RAY_NAMESPACE_DEFAULT = "lootify"


def database_url() -> str:
    """The main DSN: `DATABASE_URL`, else the embedded server `make up` started."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    if DATABASE_URL_FILE.exists():
        return DATABASE_URL_FILE.read_text().strip()
    raise RuntimeError(
        "no database: set DATABASE_URL or run `make up` to start the embedded PostgreSQL"
    )


def service_dsn(service: str) -> str:
    """Each service schema has its own DSN (`LOOTIFY_<SERVICE>_DSN`) so it can move
    to its own server; by default all of them share the main database."""
    return os.environ.get(f"LOOTIFY_{service.upper()}_DSN") or database_url()


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class RuntimeSettings:
    namespace: str = field(
        default_factory=lambda: os.environ.get("LOOTIFY_NAMESPACE", RAY_NAMESPACE_DEFAULT)
    )
    # Logical shards outnumber hosts so that hosts can be added by moving shards.
    shards: int = field(default_factory=lambda: _int("LOOTIFY_SHARDS", 256))
    wallet_hosts: int = field(default_factory=lambda: _int("LOOTIFY_WALLET_HOSTS", 2))
    market_hosts: int = field(default_factory=lambda: _int("LOOTIFY_MARKET_HOSTS", 1))
    idle_seconds: float = field(default_factory=lambda: _float("LOOTIFY_IDLE_SECONDS", 600.0))
    batch_window_ms: float = field(default_factory=lambda: _float("LOOTIFY_BATCH_WINDOW_MS", 1.0))
    batch_max: int = field(default_factory=lambda: _int("LOOTIFY_BATCH_MAX", 1000))
    # How long a bet's stake may stay reserved before the wallet takes it back.
    reservation_timeout_s: float = field(
        default_factory=lambda: _float("LOOTIFY_RESERVATION_TIMEOUT_S", 60.0)
    )
    call_deadline_s: float = field(default_factory=lambda: _float("LOOTIFY_CALL_DEADLINE_S", 15.0))


def use_ray_token_auth() -> None:
    """Call before `ray.init(address=...)` to the cluster `make up` starts.

    That cluster requires Ray token authentication (RAY_AUTH_MODE=token, token in
    ~/.ray/auth_token): its GCS listens on every interface. Ray 2.60 turns token auth
    on in a client only when it finds a local cluster by itself, never for an explicit
    address (argument or RAY_ADDRESS), so such a client must set the mode itself.
    An explicit RAY_AUTH_MODE in the environment wins.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:
        # Ray caches its config (auth mode included) when first imported; refresh it,
        # as Ray itself does when it turns token auth on (before any ray.init).
        from ray._raylet import Config

        Config.initialize("")


def http_port() -> int:
    return _int("LOOTIFY_HTTP_PORT", 8000)
