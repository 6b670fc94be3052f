"""What the scripts that start servers on this machine share: a free port, waiting
for a server's `/health`, and a fresh database of their own."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx

from actors.ops.databases import create_database
from actors.ops.migrate import migrate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url`/health until it answers 200; `proc`, if given, must not exit meanwhile."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            last = httpx.get(url + "/health", timeout=10, trust_env=False)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy: {last!r}")


async def fresh_database(base_dsn: str, name: str) -> str:
    """Database `name` on `base_dsn`'s server, new (a leftover is dropped) and migrated."""
    dsn = await create_database(base_dsn, name)
    await migrate(dsn)
    return dsn
