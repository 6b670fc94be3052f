"""Where things are: the project's files, the databases, the Ray head.

Each package reads its own variables (`actors.runtime.settings`,
`actors.wallets.settings`, `actors.markets.settings`, `gateway.settings`); this
module reads the rest, and `actors.client.settings` gathers the cluster's.
Every process of the cluster (driver, host actors, Serve replicas) reads the same
variables, so a setting changed before `make up` reaches all of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LOOTIFY_DATA_DIR", PROJECT_ROOT / ".data"))
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
DATABASE_URL_FILE = DATA_DIR / "database_url"
RAY_ADDRESS_FILE = DATA_DIR / "ray_address"


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


def ray_address() -> str:
    """`RAY_ADDRESS`, else the head `make up` started, else Ray's own discovery."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    return RAY_ADDRESS_FILE.read_text().strip() if RAY_ADDRESS_FILE.exists() else "auto"


def embedded_pg_port() -> int | None:
    """The port asked of the embedded PostgreSQL (`LOOTIFY_PG_PORT`), if any."""
    port = os.environ.get("LOOTIFY_PG_PORT")
    return int(port) if port else None


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
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
