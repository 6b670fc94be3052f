"""`lootify create-user`, run as operators run it: a separate process."""

import asyncio
import json
import os
import subprocess
import sys
import uuid

import asyncpg


def lootify(dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOOTIFY_USERS_DSN": dsn}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def role_of(dsn: str, email: str) -> str | None:
    async def fetch() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("select role from users.users where email = $1", email)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_create_user_with_a_role(gateway_dsn):
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    done = lootify(gateway_dsn, "create-user", "--email", email, "--password",
                   "SecurePass123", "--role", "operator")
    assert done.returncode == 0, done.stderr
    assert role_of(gateway_dsn, email) == "operator"

    again = lootify(gateway_dsn, "create-user", "--email", email, "--password",
                    "SecurePass123", "--role", "admin")
    assert again.returncode == 1 and "email_taken" in again.stderr
    assert role_of(gateway_dsn, email) == "operator"


def test_create_user_refuses_bad_input(gateway_dsn):
    email = f"p-{uuid.uuid4().hex[:8]}@example.com"
    done = lootify(gateway_dsn, "create-user", "--email", email, "--password", "short")
    assert done.returncode == 1 and "invalid_input" in done.stderr
    assert role_of(gateway_dsn, email) is None


COMMANDS = ("up", "down", "status", "scale", "migrate", "create-user", "seed", "settle",
            "void", "audit", "bench")


def test_help_lists_every_command(gateway_dsn):
    done = lootify(gateway_dsn, "--help")
    assert done.returncode == 0
    listed = {line.strip(" │").split()[0] for line in done.stdout.splitlines()
              if line.startswith("│ ") and not line.startswith("│ --")}
    assert set(COMMANDS) <= listed


def test_bad_arguments_give_one_line_and_exit_2(gateway_dsn):
    for args in (("settle",), ("seed", "--players", "many"), ("no-such-command",),
                 ("create-user", "--email", "a@example.com", "--password", "x" * 10,
                  "--role", "king")):
        done = lootify(gateway_dsn, *args)
        assert done.returncode == 2, args
        assert done.stdout == "" and done.stderr.startswith("lootify: ")
        assert done.stderr.count("\n") == 1, done.stderr


def test_migrate_json_reports_nothing_left_to_apply(gateway_dsn):
    env_dsn = {"DATABASE_URL": gateway_dsn}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate", "--json"],
                          env={**os.environ, **env_dsn}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"applied": []}
