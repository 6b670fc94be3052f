"""PostgreSQL for the test session.

`pg_dsn` (session): `DATABASE_URL` if set, else an embedded server started in a
temporary directory (`pg_data_dir`) on a free port and stopped when the session ends.
(A new empty database on the same server: `actors.ops.databases.create_database`.)
`fetch_rows(run, dsn, query, *args)`: the rows of one statement (the `sql` fixture).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from actors.ops import pgserver


def fetch_rows(run, dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own (`run` drives the loop)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return run(go())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The embedded server's data directory (its processes: `pgserver.pid`), or None
    when `DATABASE_URL` names a server of someone else's."""
    if os.environ.get("DATABASE_URL"):
        return None
    return tmp_path_factory.mktemp("pg")


@pytest.fixture(scope="session")
def pg_dsn(pg_data_dir: Path | None) -> Iterator[str]:
    if pg_data_dir is None:
        yield os.environ["DATABASE_URL"]
        return
    dsn = pgserver.start(pg_data_dir, port=_free_port())
    try:
        yield dsn
    finally:
        pgserver.stop(pg_data_dir)
