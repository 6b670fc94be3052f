"""The chaos run's audit: is everything acknowledged in PostgreSQL exactly once, do the
books balance, and does memory agree with the rows?

`audit` first lets the stack finish what the faults left half-way (bets whose stake
or payout is still moving, reservations past their time-out) for at most
`SETTLE_S`, then checks. Each check maps to its problems: empty means it held.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from chaos_client import Acked
from chaos_stack import OPEN_STAKE_TIMEOUT_S

from actors.ops.agreement import disagreements
from actors.ops.audit import ledger_violations

SETTLE_S = OPEN_STAKE_TIMEOUT_S + 40.0
EXAMPLES = 5

# (bet status, stake, payout_state) -> the market statuses it is legal under. A refund
# (cancel, void) travels as a payout of the stake; a bet whose reservation ended before
# its stake was committed never stood (void, stake returned) and was never acknowledged.
LEGAL_BETS: dict[tuple[str, str, str], set[str]] = {
    ("accepted", "committed", "none"): {"open", "suspended", "closed"},
    ("cancelled", "committed", "paid"): {"open", "suspended", "closed", "settled", "void"},
    ("won", "committed", "paid"): {"settled"},
    ("lost", "committed", "none"): {"settled"},
    ("void", "committed", "paid"): {"void"},
    ("void", "returned", "none"): {"open", "suspended", "closed", "settled", "void"},
}

UNFINISHED = """
    select (select count(*) from bets.bets where stake = 'reserved' or payout_state = 'owed')
         + (select count(*) from wallets.pending
            where expires_at < now() - interval '2 seconds')
         + (select count(*) from wallets.open_stakes)"""


async def _settled(conn: asyncpg.Connection) -> int:
    deadline = time.monotonic() + SETTLE_S
    while (left := await conn.fetchval(UNFINISHED)) and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    return left


def _problems(found: list[str]) -> dict[str, Any]:
    return {"count": len(found), "examples": found[:EXAMPLES]}


async def _money_once(conn: asyncpg.Connection, acked: dict[str, tuple[str, int]],
                      kind: str) -> list[str]:
    rows = await conn.fetch(
        "select reference_id, wallet_id::text as wallet, abs(amount) as amount "
        "from wallets.operations where kind = $1 and reference_id = any($2::text[])",
        kind, list(acked))
    seen: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        seen.setdefault(r["reference_id"], []).append((r["wallet"], r["amount"]))
    found = []
    for ref, claim in acked.items():
        stored = seen.get(ref, [])
        if stored != [claim]:
            found.append(f"{ref}: acknowledged {claim}, stored {stored}")
    twice = await conn.fetch(
        "select reference_id, count(*) n from wallets.operations where kind = $1 "
        "group by reference_id having count(*) > 1", kind)
    found += [f"{r['reference_id']} stored {r['n']} times" for r in twice]
    return found


async def _bets_once(conn: asyncpg.Connection, acked: Acked) -> list[str]:
    rows = {r["id"]: r for r in await conn.fetch(
        "select id::text, user_id::text as user, market_id::text as market, amount, status, "
        "stake "
        "from bets.bets where id = any($1::uuid[])", list(acked.bets))}
    found = []
    for bet, claim in acked.bets.items():
        row = rows.get(bet)
        if row is None or (row["user"], row["market"], row["amount"]) != claim:
            found.append(f"bet {bet}: acknowledged {claim}, stored {row and dict(row)}")
        elif row["stake"] != "committed":  # acknowledged only once its stake was committed
            found.append(f"bet {bet}: acknowledged, its stake {row['stake']}")
    for bet in acked.cancelled:
        row = rows.get(bet)
        if row is None or row["status"] != "cancelled":
            found.append(f"bet {bet}: cancel acknowledged, stored {row and row['status']}")
    return found


async def _markets(conn: asyncpg.Connection, acked: Acked) -> list[str]:
    rows = {r["id"]: r for r in await conn.fetch(
        "select id::text, status, winner from bets.markets where id = any($1::uuid[])",
        [*acked.settled, *acked.voided])}
    found = []
    for market, winner in acked.settled.items():
        row = rows.get(market)
        if row is None or (row["status"], row["winner"]) != ("settled", winner):
            found.append(f"market {market}: settled {winner} acknowledged, stored "
                         f"{row and (row['status'], row['winner'])}")
    for market in acked.voided:
        row = rows.get(market)
        if row is None or row["status"] != "void":
            found.append(f"market {market}: void acknowledged, stored {row and row['status']}")
    return found


async def _bet_states(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "select b.status, b.stake, b.payout_state, m.status as market, count(*) n, "
        "min(b.id::text) example from bets.bets b join bets.markets m on m.id = b.market_id "
        "group by 1, 2, 3, 4")
    return [f"{r['n']} bets {r['status']}/{r['stake']}/{r['payout_state']} on a "
            f"{r['market']} market, e.g. {r['example']}" for r in rows
            if r["market"] not in LEGAL_BETS.get((r["status"], r["stake"], r["payout_state"]),
                                                 set())]


# Every stake taken (`bet:<id>`) is its placed bet's, or was returned once
# (`bet-return:<id>`); never both, never neither, and never for another amount.
STAKES = """
    select s.reference_id, s.amount, b.amount as placed, r.amount as returned
      from wallets.operations s
      left join bets.bets b on b.id = substr(s.reference_id, 5)::uuid
           and b.user_id = s.wallet_id
      left join wallets.operations r on r.wallet_id = s.wallet_id
           and r.op_key = 'bet-return:' || substr(s.reference_id, 5)
     where s.kind = 'stake'
       and (b.amount is null) = (r.amount is null)
        or s.kind = 'stake' and coalesce(b.amount, r.amount) <> s.amount"""


async def _stakes(conn: asyncpg.Connection) -> list[str]:
    return [f"stake {r['reference_id']} of {r['amount']}: placed {r['placed']}, "
            f"returned {r['returned']}" for r in await conn.fetch(STAKES)]


async def _totals(conn: asyncpg.Connection) -> list[str]:
    held = -(await conn.fetchval(
        "select coalesce(sum(amount), 0) from wallets.entries where account = 'external'"))
    inside = await conn.fetchval(
        "select coalesce(sum(amount), 0) from wallets.entries where account <> 'external'")
    moved = await conn.fetchval(
        "select coalesce(sum(case kind when 'deposit' then abs(amount) "
        "else -abs(amount) end), 0) from wallets.operations "
        "where kind in ('deposit', 'withdrawal')")
    if held == inside == moved:
        return []
    return [f"money held {inside}, deposits - withdrawals {moved}, external {held}"]


async def audit(dsn: str, acked: Acked, aio: Any) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        unfinished = await _settled(conn)
        users = await conn.fetchval("select count(*) from users.users where id = any($1::uuid[])",
                                    list(acked.users))
        memory = await disagreements(aio, conn)
        checks = {
            "registrations stored": [] if users == len(acked.users) else
            [f"{len(acked.users) - users} acknowledged registrations missing"],
            "deposits exactly once": await _money_once(conn, acked.deposits, "deposit"),
            "withdrawals exactly once": await _money_once(conn, acked.withdrawals,
                                                          "withdrawal"),
            "bets and cancels stored": await _bets_once(conn, acked),
            "settlements and voids stored": await _markets(conn, acked),
            "ledger balances, no negative balance": [
                f"{rule}: {n}" for rule, n in (await ledger_violations(conn)).items()],
            "total money = deposits - withdrawals": await _totals(conn),
            "every bet final or legal": await _bet_states(conn),
            "every stake placed or returned, once": await _stakes(conn),
            "nothing pending past its time-out": [] if not unfinished else
            [f"{unfinished} bets or reservations still unfinished after {SETTLE_S:.0f}s"],
            "memory agrees with PostgreSQL": [
                f"{d['kind']} {d['id']}: memory {d['memory']}, stored {d['stored']}"
                for d in memory],
        }
        return {name: _problems(found) for name, found in checks.items()}
    finally:
        await conn.close()
