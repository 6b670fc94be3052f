"""`lootify`: the operators' command line.

    lootify create-user --email op@example.com --password '...' --role operator
    lootify scale --wallet-hosts 4 --market-hosts 2   # waits, showing progress
    lootify status [--json]                            # nodes, hosts, shards, epochs
    lootify raffle create --event ID --name N --tickets 100 --ticket-price 5.00 --prize 300.00
    lootify raffle settle MARKET_ID --draw 58342       # the last digits name the winner
    lootify lottery draw federal --draw 58342          # settles the raffles waiting for it

`scale`, `status`, `raffle` and `lottery` join the Ray cluster (`RAY_ADDRESS`, else
the head `make up` started) and ask its coordinator or hosts. Exit status 0 on
success, 1 when the request is refused or does not finish in time (the reason on
stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from actors.errors import LootifyError
from actors.settings import service_dsn

from . import cluster_ops, market_ops
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
    raffle = commands.add_parser("raffle", help="create or settle a raffle").add_subparsers(
        dest="action", required=True)
    new_raffle = raffle.add_parser("create", help="a raffle market on an event")
    new_raffle.add_argument("--event", required=True, help="the event's id")
    new_raffle.add_argument("--name", required=True)
    new_raffle.add_argument("--tickets", type=int, required=True, choices=(100, 1000, 10000))
    new_raffle.add_argument("--ticket-price", required=True, help="e.g. 5.00")
    new_raffle.add_argument("--prize", required=True, help="e.g. 300.00")
    new_raffle.add_argument("--lottery", help="the lottery whose draw settles it")
    new_raffle.add_argument("--result-grace-s", type=int,
                            help="seconds to wait for the lottery's draw before voiding")
    new_raffle.add_argument("--closes-at", help="ISO 8601; default: the event's start")
    settle = raffle.add_parser("settle", help="settle a closed raffle by a draw")
    settle.add_argument("market_id")
    settle.add_argument("--draw", required=True)
    lottery = commands.add_parser("lottery", help="post a lottery's draw").add_subparsers(
        dest="action", required=True)
    draw = lottery.add_parser("draw", help="post a draw; it settles the raffles waiting")
    draw.add_argument("lottery")
    draw.add_argument("--draw", required=True)
    draw.add_argument("--drawn-at", help="ISO 8601; default: now")
    args = parser.parse_args(argv)
    if args.command == "raffle" and args.action == "create":
        return market_ops.create_raffle(args.event, args.name, args.tickets, args.ticket_price,
                                        args.prize, args.lottery, args.result_grace_s,
                                        args.closes_at)
    if args.command == "raffle":
        return market_ops.settle_raffle(args.market_id, args.draw)
    if args.command == "lottery":
        return market_ops.post_lottery_draw(args.lottery, args.draw, args.drawn_at)
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
