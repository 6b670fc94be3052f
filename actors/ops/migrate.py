"""Apply the numbered SQL files of `migrations/` (e.g. `0001_runtime.sql`) in order.

Rules:
- a file is applied once, in its own transaction, and recorded with its sha256 in
  `public.schema_migrations`; files must not contain their own `begin`/`commit`
  (nor statements that cannot run in a transaction, such as `create index concurrently`);
- an applied file must never change: a different checksum raises `MigrationError`
  (write a new file instead);
- runners serialise on a session advisory lock, so concurrent `make up`s or test
  sessions apply each file exactly once.

`python -m actors.ops.migrate [DSN]` applies to `actors.settings.database_url()` by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from pathlib import Path

import asyncpg

from actors.settings import MIGRATIONS_DIR, database_url

# A fixed key for pg_advisory_lock, shared by every runner (any bigint would do).
ADVISORY_LOCK_KEY = 0x4C4F4F54_4D494752  # "LOOTMIGR"

_NUMBERED = re.compile(r"^(\d+)_[A-Za-z0-9_.-]+\.sql$")


class MigrationError(RuntimeError):
    pass


def _checksum(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files of `directory`, in filename order (validated)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".sql")
    seen: dict[int, str] = {}
    for f in files:
        m = _NUMBERED.match(f.name)
        if not m:
            raise MigrationError(f"{f.name}: migration files are named NNNN_description.sql")
        number = int(m.group(1))
        if number in seen:
            raise MigrationError(f"{f.name} and {seen[number]} share the number {number}")
        seen[number] = f.name
    return files


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations of `directory` to `dsn`; returns the filenames applied."""
    files = migration_files(directory)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        # Session-level lock on this dedicated connection: held across the per-file
        # transactions below, released explicitly (or when the connection closes).
        await conn.execute("select pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            return await _apply(conn, files)
        finally:
            if not conn.is_closed():
                await conn.execute("select pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, files: list[Path]) -> list[str]:
    await conn.execute(
        """
        create table if not exists public.schema_migrations (
            filename text primary key,
            checksum text not null,
            applied_at timestamptz default now()
        )
        """
    )
    rows = await conn.fetch("select filename, checksum from public.schema_migrations")
    applied = {r["filename"]: r["checksum"] for r in rows}

    contents = {f.name: f.read_bytes() for f in files}
    # Check every applied file before applying anything new.
    for name, body in contents.items():
        if name in applied and applied[name] != _checksum(body):
            raise MigrationError(
                f"{name} was changed after it was applied "
                f"(recorded sha256 {applied[name][:12]}…, now {_checksum(body)[:12]}…); "
                "add a new migration instead"
            )

    done: list[str] = []
    for name, body in contents.items():
        if name in applied:
            continue
        try:
            sql = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{name} is not UTF-8") from exc
        try:
            async with conn.transaction():
                await conn.execute(sql)  # no arguments: simple protocol, many statements
                await conn.execute(
                    "insert into public.schema_migrations (filename, checksum) values ($1, $2)",
                    name,
                    _checksum(body),
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{name} failed: {exc}") from exc
        done.append(name)
    return done


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dsn = argv[0] if argv else database_url()
    applied = asyncio.run(migrate(dsn))
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("migrations: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
