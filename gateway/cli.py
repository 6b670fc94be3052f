"""`lootify`: the operators' command line.

    lootify create-user --email op@example.com --password '...' --role operator

Exit status 0 on success, 1 when the request is refused (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from actors.errors import LootifyError
from actors.settings import service_dsn

from .auth import users


async def _create_user(args: argparse.Namespace) -> users.User:
    pool = await asyncpg.create_pool(service_dsn("users"), min_size=1, max_size=1)
    try:
        return await users.create_user(
            pool, args.email, args.username or args.email.split("@")[0], args.password,
            role=args.role,
        )
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lootify", description="The operators' command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-user", help="create a user with a role")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--username", help="defaults to the part of the email before @")
    create.add_argument("--role", default="player", choices=("player", "operator", "admin"))
    args = parser.parse_args(argv)
    try:
        user = asyncio.run(_create_user(args))
    except LootifyError as exc:
        print(f"lootify: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(f"created {user.role} {user.email} ({user.id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
