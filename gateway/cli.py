"""`lootify`: the operators' command line (`lootify --help` lists the commands).

Commands that need the cluster join it (`RAY_ADDRESS`, else the head `make up`
started); the database is `DATABASE_URL` or the embedded server's. Output is for
people by default; `--json` prints data for scripts on stdout (progress goes to
stderr). Exit status: 0 done, 1 refused, failed or (audit) a discrepancy found,
2 bad arguments; errors are one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.progress import Progress

from actors.client import AsyncLootify, Settings
from actors.errors import LootifyError
from actors.ops.agreement import disagreements
from actors.ops.audit import ledger_violations
from actors.ops.migrate import migrate as apply_migrations
from actors.settings import database_url, service_dsn

from . import cluster_ops, market_ops, payment_ops
from .auth import users
from .seeding import seed as seed_demo

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DB_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 60.0

app = typer.Typer(
    name="lootify",
    help="The operators' command line: the stack, the cluster, markets, demo data, audits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
AsJson = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


Role = StrEnum("Role", {name: name for name in users.ROLES})  # type: ignore[misc]
PLAYER = Role("player")


class Refused(Exception):
    """A command could not do what it was asked: one line on stderr, exit 1."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _on_cluster(work: Callable[[AsyncLootify], Awaitable[T]]) -> T:
    """Run `work` with a cluster client, on one event loop."""
    settings = Settings()
    try:
        cluster_ops.join_cluster(settings)
    except ConnectionError as exc:
        raise Refused(f"cannot reach the Ray cluster: {exc}") from exc

    async def go() -> T:
        client = await asyncio.wait_for(AsyncLootify.create(settings=settings), CALL_TIMEOUT_S)
        return await work(client)

    return asyncio.run(go())


def _script(name: str, *args: str) -> None:
    """Run one of the checkout's scripts (the stack and benchmarks live there)."""
    path = PROJECT_ROOT / "scripts" / name
    if not path.is_file():
        raise Refused(f"{path} not found: run this from a checkout of Lootify")
    done = subprocess.run([sys.executable, str(path), *args], cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise typer.Exit(done.returncode)


@app.command()
def up() -> None:
    """Start the embedded PostgreSQL, migrations, a Ray head and Serve (as `make up`)."""
    _script("cluster.py", "up")


@app.command()
def down() -> None:
    """Stop what `up` started; the data stays in .data/."""
    _script("cluster.py", "down")


@app.command()
def status(as_json: AsJson = False) -> None:
    """Nodes, host actors (shards, entities, mailbox) and the directory's epochs."""
    raise typer.Exit(cluster_ops.status(as_json=as_json))


@app.command()
def scale(
    wallet_hosts: Annotated[int | None, typer.Option(min=1, help="wallet host actors")] = None,
    market_hosts: Annotated[int | None, typer.Option(min=1, help="market host actors")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait")] = 600.0,
) -> None:
    """Set how many hosts each kind keeps; hands shards over and waits until balanced."""
    targets = {"wallets": wallet_hosts, "markets": market_hosts}
    raise typer.Exit(
        cluster_ops.scale({k: n for k, n in targets.items() if n is not None}, timeout)
    )


@app.command()
def migrate(as_json: AsJson = False) -> None:
    """Apply the pending migrations to the database."""
    applied = asyncio.run(asyncio.wait_for(apply_migrations(database_url()), CALL_TIMEOUT_S))
    if as_json:
        _print_json({"applied": applied})
    else:
        print("\n".join(f"applied {name}" for name in applied) or "up to date")


@app.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="the login")],
    password: Annotated[str, typer.Option(help="at least 8 characters")],
    username: Annotated[str | None, typer.Option(help="default: the email before @")] = None,
    role: Annotated[Role, typer.Option(help="what the user may do")] = PLAYER,
) -> None:
    """Create a user with a role (player, operator, admin)."""

    async def create() -> users.User:
        pool = await asyncpg.create_pool(
            service_dsn("users"), min_size=1, max_size=1, timeout=DB_TIMEOUT_S
        )
        try:
            return await users.create_user(
                pool, email, username or email.split("@")[0], password, role=str(role)
            )
        finally:
            await pool.close()

    user = asyncio.run(create())
    print(f"created {user.role} {user.email} ({user.id})")


@app.command()
def seed(
    players: Annotated[int, typer.Option(min=0, max=10_000, help="demo players")] = 20,
    events: Annotated[int, typer.Option(min=0, max=1_000, help="demo events")] = 3,
    markets: Annotated[int, typer.Option(min=1, max=4, help="markets per event")] = 2,
    deposit: Annotated[int, typer.Option(min=0, help="each player's money, minor units")] = 100_000,
    password: Annotated[str, typer.Option(help="the players' password")] = "demo-password",
    as_json: AsJson = False,
) -> None:
    """Demo players with money, events and open fixed-odds markets."""
    console = Console(stderr=True)

    async def work(client: AsyncLootify) -> Any:
        pool = await asyncpg.create_pool(
            service_dsn("users"), min_size=1, max_size=8, timeout=DB_TIMEOUT_S
        )
        try:
            with Progress(console=console, transient=as_json) as progress:
                task = progress.add_task("seeding", total=players + events * (1 + markets))
                return await seed_demo(
                    client, pool, players=players, events=events, markets_per_event=markets,
                    deposit=deposit, password=password,
                    advance=lambda n: progress.advance(task, n),
                )
        finally:
            await pool.close()

    seeded = _on_cluster(work)
    if as_json:
        _print_json(seeded.as_dict())
        return
    count = sum(len(e["markets"]) for e in seeded.events)
    print(f"{len(seeded.players)} players (password {seeded.password!r}), "
          f"{len(seeded.events)} events, {count} markets")
    for event in seeded.events:
        print(f"  {event['name']}: " + ", ".join(m["id"] for m in event["markets"]))


def _market_line(market: dict[str, Any]) -> str:
    winner = f", winner {market['winner']}" if market.get("winner") else ""
    return f"market {market['id']} {market['status']}{winner}"


@app.command()
def settle(
    market_id: Annotated[str, typer.Argument(help="the market's id")],
    winner: Annotated[str, typer.Option(help="the winning selection's key")],
    as_json: AsJson = False,
) -> None:
    """Settle a market: close it if still open or suspended, then pay the winners."""

    async def work(client: AsyncLootify) -> dict[str, Any]:
        market = client.market(market_id)
        if (await market.state())["status"] in ("open", "suspended"):
            await market.close()
        return await market.settle(winner)

    market = _on_cluster(work)
    _print_json(market) if as_json else print(_market_line(market))


@app.command()
def void(
    market_id: Annotated[str, typer.Argument(help="the market's id")],
    as_json: AsJson = False,
) -> None:
    """Call a market off: every accepted stake is refunded."""
    market = _on_cluster(lambda client: client.market(market_id).void())
    _print_json(market) if as_json else print(_market_line(market))


@app.command()
def audit(
    ledger_only: Annotated[
        bool, typer.Option(help="only the ledger (no cluster needed)")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """The ledger's invariants and the entities in memory against PostgreSQL; exit 1 on
    any discrepancy."""

    async def ledger() -> dict[str, int]:
        conn = await asyncpg.connect(
            service_dsn("wallets"), timeout=DB_TIMEOUT_S, command_timeout=CALL_TIMEOUT_S
        )
        try:
            return await ledger_violations(conn)
        finally:
            await conn.close()

    async def entities(client: AsyncLootify) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(
            service_dsn("bets"), timeout=DB_TIMEOUT_S, command_timeout=CALL_TIMEOUT_S
        )
        try:
            return await disagreements(client, conn)
        finally:
            await conn.close()

    report: dict[str, Any] = {"ledger": asyncio.run(ledger())}
    report["entities"] = None if ledger_only else _on_cluster(entities)
    report["clean"] = not report["ledger"] and not report["entities"]
    if as_json:
        _print_json(report)
    else:
        for rule, rows in report["ledger"].items():
            print(f"ledger: {rule}: {rows} rows")
        for entity in report["entities"] or ():
            print(f"{entity['kind']} {entity['id']}: memory {entity['memory']} "
                  f"!= stored {entity['stored']}")
        print("clean" if report["clean"] else "DISCREPANCIES FOUND")
    raise typer.Exit(0 if report["clean"] else 1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="short runs, for a smoke test")] = False,
) -> None:
    """The benchmarks (as `make bench`): tables on stdout, JSON in bench-results/."""
    extra = ("--quick",) if quick else ()
    _script("bench.py", *extra)
    _script("bench_http.py", *extra)
    _script("bench_scale.py", *extra)


@app.command()
def chaos(
    minutes: Annotated[float, typer.Option(help="minutes of load")] = 10.0,
    json_path: Annotated[str | None, typer.Option("--json", help="write the report here")] = None,
) -> None:
    """The chaos run (as `make chaos`): a stack of its own under load and faults, then
    the audit; exit status 1 when the audit finds anything."""
    _script("chaos.py", "--minutes", str(minutes), *(("--json", json_path) if json_path else ()))


raffles = typer.Typer(help="Create or settle a raffle (a market whose tickets are numbers).")
lotteries = typer.Typer(help="Post a lottery's draw; it settles the raffles waiting for it.")
app.add_typer(raffles, name="raffle")
app.add_typer(lotteries, name="lottery")


@raffles.command("create")
def create_raffle(
    event: Annotated[str, typer.Option(help="the event's id")],
    name: Annotated[str, typer.Option(help="the raffle's name")],
    tickets: Annotated[int, typer.Option(help="100, 1000 or 10000")],
    ticket_price: Annotated[str, typer.Option(help="e.g. 5.00")],
    prize: Annotated[str, typer.Option(help="e.g. 300.00")],
    lottery: Annotated[str | None, typer.Option(help="the lottery whose draw settles it")] = None,
    result_grace_s: Annotated[
        int | None, typer.Option(help="seconds to wait for the draw before voiding")
    ] = None,
    closes_at: Annotated[
        str | None, typer.Option(help="ISO 8601; default: the event's start")
    ] = None,
) -> None:
    """A raffle market on an event (prints it as JSON)."""
    raise typer.Exit(market_ops.create_raffle(
        event, name, tickets, ticket_price, prize, lottery, result_grace_s, closes_at
    ))


@raffles.command("settle")
def settle_raffle(
    market_id: Annotated[str, typer.Argument(help="the raffle's id")],
    draw: Annotated[str, typer.Option(help="the lottery's number; its last digits win")],
) -> None:
    """Settle a closed raffle by a draw (prints it as JSON)."""
    raise typer.Exit(market_ops.settle_raffle(market_id, draw))


@lotteries.command("draw")
def lottery_draw(
    lottery: Annotated[str, typer.Argument(help="the lottery's name")],
    draw: Annotated[str, typer.Option(help="the number drawn")],
    drawn_at: Annotated[str | None, typer.Option(help="ISO 8601; default: now")] = None,
) -> None:
    """Post a lottery's draw: every closed raffle waiting for it is settled."""
    raise typer.Exit(market_ops.post_lottery_draw(lottery, draw, drawn_at))


series = typer.Typer(help="Recurring pool rounds that lock daily at a time of day.")
app.add_typer(series, name="series")


@series.command("create")
def create_series(
    event: Annotated[str, typer.Option(help="the event's id")],
    name: Annotated[str, typer.Option(help="the series' name")],
    time_of_day: Annotated[str, typer.Option("--time", help='when rounds lock, "16:00"')],
    timezone: Annotated[str, typer.Option(help='e.g. "America/New_York"')],
    selections: Annotated[str, typer.Option(help="key:name pairs")] = "up:Up,down:Down",
    takeout: Annotated[str, typer.Option(help='the house\'s share, "0.10"')] = "0.00",
    lock_delay_s: Annotated[int, typer.Option(help="seconds after the time of day")] = 0,
    settle_delay_s: Annotated[int, typer.Option(help="seconds after the lock")] = 0,
    grace_s: Annotated[int, typer.Option(help="seconds to wait for a result")] = 1800,
    oracle: Annotated[str | None, typer.Option(help='"sandbox"; none: operators')] = None,
) -> None:
    """A series of daily rounds on an event (prints it as JSON)."""
    raise typer.Exit(market_ops.create_series(
        event, name, selections, takeout, time_of_day, timezone, lock_delay_s,
        settle_delay_s, grace_s, oracle))


@series.command("list")
def list_series() -> None:
    """Every series, newest first (JSON)."""
    raise typer.Exit(market_ops.list_series())


@series.command("stop")
def stop_series(series_id: Annotated[str, typer.Argument(help="the series' id")]) -> None:
    """No new rounds; one already open still locks and settles."""
    raise typer.Exit(market_ops.stop_series(series_id))


@series.command("result")
def round_result(
    series_id: Annotated[str, typer.Argument(help="the series' id")],
    round_no: Annotated[int, typer.Argument(help="the round's number")],
    winner: Annotated[str, typer.Option(help="the winning selection's key")],
) -> None:
    """An operator's result for a round: the scheduler settles it once due."""
    raise typer.Exit(market_ops.post_round_result(series_id, round_no, winner))


withdrawals = typer.Typer(help="The withdrawal queue (LOOTIFY_PAYMENTS=provider).")
app.add_typer(withdrawals, name="withdrawals")


@withdrawals.command("list")
def list_withdrawals(
    status: Annotated[str | None, typer.Option(help="e.g. pending; default: all")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
) -> None:
    """The queue, oldest first (prints JSON)."""
    _print_json(payment_ops.queue(status, limit))


@withdrawals.command("approve")
def approve_withdrawal(
    withdrawal_id: Annotated[str, typer.Argument(help="the withdrawal's id")],
) -> None:
    """Approve a pending withdrawal: the provider pays it out (prints it as JSON)."""
    _print_json(payment_ops.approve(withdrawal_id))


def main(argv: list[str] | None = None) -> int:
    try:
        # Not standalone: Typer hands back a command's `Exit` code instead of exiting.
        code = app(args=argv, prog_name="lootify", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # bad arguments (exit 2) and the like
        if exc.format_message():  # none when bare `lootify` printed the help
            print(f"lootify: {exc.format_message()}".replace("\n", " "), file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        return 130
    except (LootifyError, Refused) as exc:
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc)
        print(f"lootify: {code}: {message}" if code else f"lootify: {message}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, TimeoutError, RuntimeError) as exc:
        print(f"lootify: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
