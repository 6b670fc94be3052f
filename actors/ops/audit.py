"""The ledger audit (Jepsen's bank test as a query): money is neither created nor lost.

Checked: every operation's entries sum to zero; all entries sum to zero; each
wallet's `available` equals its account's entries and its `reserved` its open
reservations; `escrow` holds exactly the open reservations; no balance is negative.
"""

from __future__ import annotations

import asyncpg

_CHECKS = {
    "unbalanced operations": """
        select count(*) from (
            select wallet_id, seq from wallets.entries
            group by wallet_id, seq having sum(amount) <> 0) u""",
    "entries do not sum to zero": """
        select count(*) from (select sum(amount) s from wallets.entries) t
        where coalesce(s, 0) <> 0""",
    "available differs from the account's entries": """
        select count(*) from wallets.wallets w
        left join (select account, sum(amount) s from wallets.entries
                   where account like 'user:%' group by account) e
          on e.account = 'user:' || w.user_id::text
        where w.available <> coalesce(e.s, 0)""",
    "entries for an account with no wallet": """
        select count(*) from (select distinct account from wallets.entries
                              where account like 'user:%') e
        where not exists (select 1 from wallets.wallets w
                          where 'user:' || w.user_id::text = e.account)""",
    "reserved differs from open reservations": """
        select count(*) from wallets.wallets w
        left join (select wallet_id, sum(amount) s from wallets.pending group by wallet_id) p
          on p.wallet_id = w.user_id
        where w.reserved <> coalesce(p.s, 0)""",
    "escrow differs from open reservations": """
        select count(*) from
          (select coalesce(sum(amount), 0) s from wallets.entries where account = 'escrow') e,
          (select coalesce(sum(amount), 0) s from wallets.pending) p
        where e.s <> p.s""",
    "negative balances": """
        select count(*) from wallets.wallets where available < 0 or reserved < 0""",
}


async def ledger_violations(conn: asyncpg.Connection) -> dict[str, int]:
    """Each broken rule with how many rows break it; empty when the ledger is sound."""
    found = {}
    for rule, sql in _CHECKS.items():
        count = await conn.fetchval(sql)
        if count:
            found[rule] = count
    return found
