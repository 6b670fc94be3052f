"""PostgreSQL for the test session.

`pg_dsn` (session): `DATABASE_URL` if set, else an embedded server started in a
temporary directory (`pg_data_dir`) on a free port and stopped when the session ends.
`create_database(dsn, name)`: a new empty database on the same server, as a DSN.
`fetch_rows(run, dsn, query, *args)`: the rows of one statement (the `sql` fixture).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from actors.ops import pgserver

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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


def with_database(dsn: str, name: str) -> str:
    """`dsn` with its database replaced by `name` (user, host, port, options kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(dsn: str, name: str) -> str:
    """Create the empty database `name` (dropping a leftover of that name) on the server
    of `dsn`; returns a DSN to it. `name`: lower-case letters, digits, underscores."""
    if not _NAME.match(name):
        raise ValueError(f"bad database name {name!r}")
    conn = await asyncpg.connect(dsn)
    try:
        # sql-identifier: the name matched _NAME above
        await conn.execute(f'drop database if exists "{name}" with (force)')
        # sql-identifier: the name matched _NAME above
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return with_database(dsn, name)


async def drop_database(dsn: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"bad database name {name!r}")
    conn = await asyncpg.connect(dsn)
    try:
        # sql-identifier: the name matched _NAME above
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()
