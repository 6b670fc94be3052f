"""Settings read from the environment, in one place.

Every process of the cluster (driver, host actors, Serve replicas) reads the same
variables, so a setting changed before `make up` reaches all of them.
"""

from __future__ import annotations

import os
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
    call_deadline_s: float = field(default_factory=lambda: _float("LOOTIFY_CALL_DEADLINE_S", 15.0))


def http_port() -> int:
    return _int("LOOTIFY_HTTP_PORT", 8000)
