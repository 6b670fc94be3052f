"""Databases of one PostgreSQL server: a fresh one for a test or a benchmark, dropped
after. Names are checked, as they go into the statements as identifiers."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def with_database(dsn: str, name: str) -> str:
    """`dsn` with its database replaced by `name` (user, host, port, options kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(dsn: str, name: str) -> str:
    """Create the empty database `name` (dropping a leftover of that name) on the server
    of `dsn`; returns a DSN to it. `name`: lower-case letters, digits, underscores."""
    _check(name)
    conn = await asyncpg.connect(dsn)
    try:
        # sql-identifier: the name was checked above
        await conn.execute(f'drop database if exists "{name}" with (force)')
        # sql-identifier: the name was checked above
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return with_database(dsn, name)


async def drop_database(dsn: str, name: str) -> None:
    _check(name)
    conn = await asyncpg.connect(dsn)
    try:
        # sql-identifier: the name was checked above
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def _check(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"bad database name {name!r}")
