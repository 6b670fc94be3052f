"""The migration runner against the session PostgreSQL, each test on a fresh database."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from actors.ops.databases import create_database, drop_database
from actors.ops.migrate import MigrationError, migrate


@pytest.fixture
def db(pg_dsn: str) -> str:
    name = f"t_migrate_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(pg_dsn, name))
    yield dsn
    asyncio.run(drop_database(pg_dsn, name))


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def test_applies_pending_files_in_filename_order(db: str, tmp_path: Path) -> None:
    # 0002 depends on 0001 and 0010 on both: any other order fails.
    d = _write(
        tmp_path / "m",
        {
            "0010_c.sql": "insert into t.log (step) values ('c');",
            "0001_a.sql": "create schema t; create table t.log (n serial, step text);",
            "0002_b.sql": "insert into t.log (step) values ('b');",
        },
    )
    assert asyncio.run(migrate(db, d)) == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
    steps = asyncio.run(_fetch(db, "select step from t.log order by n"))
    assert [r["step"] for r in steps] == ["b", "c"]
    recorded = asyncio.run(_fetch(db, "select filename from public.schema_migrations"))
    assert sorted(r["filename"] for r in recorded) == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]

    # A second run applies nothing; a new file is applied alone.
    assert asyncio.run(migrate(db, d)) == []
    _write(d, {"0011_d.sql": "insert into t.log (step) values ('d');"})
    assert asyncio.run(migrate(db, d)) == ["0011_d.sql"]
    assert asyncio.run(migrate(db, d)) == []


def test_changed_applied_file_raises(db: str, tmp_path: Path) -> None:
    d = _write(tmp_path / "m", {"0001_a.sql": "create table a (x int);"})
    assert asyncio.run(migrate(db, d)) == ["0001_a.sql"]
    (d / "0001_a.sql").write_text("create table a (x bigint);")
    _write(d, {"0002_b.sql": "create table b (x int);"})
    with pytest.raises(MigrationError, match="0001_a.sql"):
        asyncio.run(migrate(db, d))
    # Nothing new was applied either.
    rows = asyncio.run(_fetch(db, "select to_regclass('public.b') is null as missing"))
    assert rows[0]["missing"]


def test_failing_file_rolls_back_alone(db: str, tmp_path: Path) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_a.sql": "create table a (x int);",
            "0002_bad.sql": "create table b (x int); select no_such_function();",
        },
    )
    with pytest.raises(MigrationError, match="0002_bad.sql"):
        asyncio.run(migrate(db, d))
    rows = asyncio.run(
        _fetch(
            db,
            "select to_regclass('public.a') is not null as a, "
            "to_regclass('public.b') is not null as b",
        )
    )
    assert rows[0]["a"] and not rows[0]["b"]
    (d / "0002_bad.sql").write_text("create table b (x int);")
    assert asyncio.run(migrate(db, d)) == ["0002_bad.sql"]


def test_concurrent_runners_apply_each_file_once(db: str, tmp_path: Path) -> None:
    # Each file inserts a row: a file applied twice would leave two rows
    # (or fail on `create table`), so the counts prove exactly-once.
    files = {"0001_init.sql": "create table runs (file text not null);"}
    for i in range(2, 9):
        files[f"{i:04d}_step.sql"] = (
            f"select pg_sleep(0.02); insert into runs (file) values ('{i:04d}');"
        )
    d = _write(tmp_path / "m", files)

    async def race() -> list[list[str]]:
        return await asyncio.gather(*(migrate(db, d) for _ in range(4)))

    results = asyncio.run(race())
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(files)
    rows = asyncio.run(_fetch(db, "select file, count(*) as n from runs group by file"))
    assert {r["file"]: r["n"] for r in rows} == {f"{i:04d}": 1 for i in range(2, 9)}


def test_misnamed_file_is_refused(db: str, tmp_path: Path) -> None:
    d = _write(tmp_path / "m", {"schema.sql": "create table a (x int);"})
    with pytest.raises(MigrationError, match="NNNN_description"):
        asyncio.run(migrate(db, d))
