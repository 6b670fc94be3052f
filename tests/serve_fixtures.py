"""The Serve app on the session's Ray cluster, for the HTTP and WebSocket tests.

`serve_url` (session): `serve_app.build()` (`LOOTIFY_TEST_REPLICAS` replicas, default 1)
deployed on a free port of 127.0.0.1 with
the session's database, namespace and a fixed JWT secret (the one
`tests/gateway/conftest.py` puts in the driver's environment), generous IP limits
(tests all come from 127.0.0.1; the lockout stays at 5); Serve is shut down at the
end. `api`: an httpx client on it. `new_user(role)`: a fresh account and its token.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import ray
from ray import serve

import serve_app
from actors.client import Settings
from actors.markets.series import scheduler
from gateway.auth import users

JWT_SECRET = "test-secret-" + "x" * 40


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_env(database_url: str, settings: Settings) -> dict[str, str]:
    """What the test replicas are told: the session's cluster, database and secret."""
    return {
        "DATABASE_URL": database_url,
        "LOOTIFY_NAMESPACE": settings.namespace,
        "LOOTIFY_IDLE_SECONDS": str(settings.runtime.idle_seconds),
        "LOOTIFY_SHARDS": str(settings.runtime.shards),
        "LOOTIFY_JWT_SECRET": JWT_SECRET,
        "LOOTIFY_RATE_REGISTER_PER_MIN": "100000",
        "LOOTIFY_RATE_LOGIN_PER_MIN": "100000",
        "LOOTIFY_CATALOG_RELOAD_S": "5",
    }


@pytest.fixture(scope="session")
def serve_url(aio, database_url: str, settings: Settings) -> Iterator[str]:
    port = _free_port()
    env = replica_env(database_url, settings)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # As `make up` does: the round scheduler runs beside the gateway (and /health watches it).
    ray.get(scheduler(settings).start.remote(), timeout=60)
    replicas = int(os.environ.get("LOOTIFY_TEST_REPLICAS", 1))
    serve.run(serve_app.build(env, replicas=replicas), name="lootify", route_prefix="/",
              blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url + "/health", timeout=10)
            if last.status_code == 200:
                break
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    else:
        serve.shutdown()
        raise RuntimeError(f"the Serve app did not become healthy: {last!r}")
    try:
        yield url
    finally:
        serve.shutdown()


@pytest.fixture
def api(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def users_pool(aio, loop_thread, database_url: str) -> Iterator[asyncpg.Pool]:
    async def create() -> asyncpg.Pool:
        return await asyncpg.create_pool(database_url, min_size=1, max_size=4)

    pool = loop_thread.run(create())
    yield pool
    loop_thread.run(pool.close())


@dataclass
class Account:
    id: str
    email: str
    password: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def new_user(api: httpx.Client, users_pool: asyncpg.Pool, loop_thread) -> Callable[..., Account]:
    """`new_user(role="player")`: players register over HTTP; other roles are created
    in the database (as the admin CLI does) and log in over HTTP."""
    def make(role: str = "player") -> Account:
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        password = "correct horse " + uuid.uuid4().hex[:6]
        if role == "player":
            r = api.post("/api/auth/register",
                         json={"email": email, "username": "tester", "password": password})
            assert r.status_code == 201, r.text
        else:
            loop_thread.run(users.create_user(users_pool, email, "tester", password, role))
            r = api.post("/api/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
        body = r.json()
        return Account(body["user"]["id"], email, password, role, body["token"])

    return make


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(step)


def run_async(coro):  # for tests that need their own loop (e.g. many concurrent requests)
    return asyncio.run(coro)
