"""`lootify`: the operators' command line.

    lootify create-user --email op@example.com --password '...' --role operator
    lootify scale --wallet-hosts 4 --market-hosts 2   # waits, showing progress
    lootify status [--json]                            # nodes, hosts, shards, epochs

`scale` and `status` join the Ray cluster (`RAY_ADDRESS`, else the head `make up`
started) and ask its coordinator. Exit status 0 on success, 1 when the request is
refused or does not finish in time (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from actors.errors import LootifyError
from actors.settings import service_dsn

from . import cluster_ops
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
    scale = commands.add_parser("scale", help="set how many hosts each kind keeps; wait")
    scale.add_argument("--wallet-hosts", type=int, help="wallet host actors")
    scale.add_argument("--market-hosts", type=int, help="market host actors")
    scale.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    status = commands.add_parser("status", help="nodes, hosts, shards and epochs")
    status.add_argument("--json", action="store_true", help="as JSON")
    args = parser.parse_args(argv)
    if args.command == "scale":
        targets = {"wallets": args.wallet_hosts, "markets": args.market_hosts}
        return cluster_ops.scale({k: n for k, n in targets.items() if n is not None},
                                 args.timeout)
    if args.command == "status":
        return cluster_ops.status(as_json=args.json)
    try:
        user = asyncio.run(_create_user(args))
    except LootifyError as exc:
        print(f"lootify: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(f"created {user.role} {user.email} ({user.id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
