"""The wallet entity: one per user, with TigerBeetle's two-phase semantics.

Amounts are integers of minor units. `available` is what the user can spend;
`reserved` is held by pending reservations; `balance = available + reserved`.
Every operation carries a reference id and writes a balanced journal:

| operation | journal |
|---|---|
| deposit   | external -a, user +a |
| withdraw  | user -a, external +a |
| stake     | user -a, market +a (open until the market closes it) |
| reserve   | user -a, escrow +a (pending, optional time-out) |
| commit    | escrow -a, target +c, user +(a - c) |
| release / expiry | escrow -a, user +a |
| credit    | source -a, user +a (payout or refund) |

So a user account's entries sum to its `available`, and `escrow`'s to the sum of
every open reservation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import asyncpg

from actors.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    ReservationResolved,
)
from actors.money import format_amount
from actors.pubsub import get_publisher
from actors.runtime import (
    Cycle,
    EntityKind,
    Fence,
    Op,
    ignore_outcome,
    register_kind,
)

from .messages import (
    RESOLUTIONS,
    Balance,
    Commit,
    Credit,
    Deposit,
    Expire,
    GetBalance,
    Release,
    Reserve,
    Stake,
    Withdraw,
    validate,
)
from .settings import WalletSettings
from .state import Prior, Wallet, Write
from .store import commit_cycle

# Resolutions of a reservation share one key; "/" cannot occur in a reference id,
# so no reference id can collide with a resolution's key.
RESOLVE = "resolve/"
RECENT_RESULTS = 100_000

# Operation kinds that change `balance`, named as the transactions listing names them.
LISTED_KINDS = {
    "deposit": "deposit",
    "withdrawal": "withdrawal",
    "stake": "bet_stake",
    "commit": "bet_stake",
    "payout": "payout",
    "bet_refund": "bet_refund",
}


@register_kind
class WalletKind(EntityKind[Wallet]):
    name = "wallets"
    service = "wallets"
    settings_type = WalletSettings

    def __init__(self, host: Any, settings: WalletSettings | None = None) -> None:
        super().__init__(host, settings)
        self.recent: OrderedDict[tuple[str, str], Prior] = OrderedDict()
        self.cycle_priors: dict[tuple[str, str], Prior] = {}
        # The cycle's known Idempotency-Key ids: (wallet id, key id) -> the op key of the
        # operation that took it.
        self.cycle_keys: dict[tuple[str, str], str] = {}
        # The cycle's clock: reservations made and expired in one cycle share it.
        self.now = time.time()

    async def reset(self) -> None:
        self.recent.clear()

    async def load(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, Wallet]:
        wallets = {i: Wallet(i) for i in ids}
        for r in await conn.fetch(
            "select user_id::text as id, available, reserved, seq from wallets.wallets "
            "where user_id = any($1::uuid[])",
            ids,
        ):
            wallets[r["id"]] = Wallet(r["id"], r["available"], r["reserved"], r["seq"])
        for r in await conn.fetch(
            "select wallet_id::text as id, reference_id, amount, "
            "extract(epoch from expires_at)::float8 as expires "
            "from wallets.pending where wallet_id = any($1::uuid[])",
            ids,
        ):
            w = wallets[r["id"]]
            if w.pending is None:
                w.pending = {}
            w.pending[r["reference_id"]] = (r["amount"], r["expires"])
        return wallets

    async def prepare(self, conn: asyncpg.Connection, ops: list[Op]) -> None:
        """Find earlier results the cycle needs. Optimistic: a fresh reference id is
        assumed new (the unique key on operations catches the rare replay of one this
        activation has not seen, and the cycle reruns carefully); only resolutions of
        reservations no longer open must be looked up, as must everything in a
        careful cycle."""
        careful = self.take_careful()
        self.cycle_priors = {}
        self.cycle_keys = {}
        self.now = time.time()
        unknown: dict[tuple[str, str], None] = {}
        # Key ids are assumed new, as reference ids are: the unique key on them catches
        # one used before, and the careful cycle looks them up.
        unknown_keys: dict[tuple[str, str], None] = {}
        entities = self.host.entities
        for op in ops:
            key = _op_key(op.message)
            if key is None:
                continue
            k = (op.entity_id, key)
            if careful and (key_id := getattr(op.message, "key_id", None)) is not None:
                unknown_keys[(op.entity_id, key_id)] = None
            prior = self.recent.get(k)
            if prior is not None:
                self.cycle_priors[k] = prior
            elif careful or (
                key.startswith(RESOLVE)
                and op.message.reference_id not in (entities[op.entity_id].state.pending or ())
            ):
                unknown[k] = None
        if not unknown and not unknown_keys:
            return
        for r in await conn.fetch(
            "select o.wallet_id::text as id, o.op_key, o.key_id::text, o.args, o.kind, "
            "o.available_after, o.reserved_after from wallets.operations o "
            "join unnest($1::uuid[], $2::text[]) as k(wallet_id, op_key) "
            "on o.wallet_id = k.wallet_id and o.op_key = k.op_key "
            "union "
            "select o.wallet_id::text, o.op_key, o.key_id::text, o.args, o.kind, "
            "o.available_after, o.reserved_after from wallets.operations o "
            "join unnest($3::uuid[], $4::uuid[]) as k(wallet_id, key_id) "
            "on o.wallet_id = k.wallet_id and o.key_id = k.key_id",
            [k[0] for k in unknown],
            [k[1] for k in unknown],
            [k[0] for k in unknown_keys],
            [k[1] for k in unknown_keys],
        ):
            self.cycle_priors[(r["id"], r["op_key"])] = Prior(
                r["args"], r["kind"], r["available_after"], r["reserved_after"]
            )
            if r["key_id"] is not None:
                self.cycle_keys[(r["id"], r["key_id"])] = r["op_key"]

    def read(self, w: Wallet, message: Any) -> Any:
        if not isinstance(message, GetBalance):
            return None
        now = time.time()
        if w.pending and any(exp is not None and exp <= now for _, exp in w.pending.values()):
            return None  # a reservation is due to expire: a cycle expires it first
        return w.balance()

    def apply(self, w: Wallet, message: Any, cycle: Cycle, op: Op) -> Balance:
        validate(message)  # again here: a message may reach the host without the client
        self._expire_due(w, cycle)
        if isinstance(message, GetBalance):
            return w.balance()
        key = _op_key(message)
        args = _args(message)
        if key is None:
            raise InvalidInput(f"unknown wallet message {type(message).__name__}")
        prior = self.cycle_priors.get((w.id, key))
        if prior is not None:
            if prior.args == args:
                if (
                    isinstance(message, Reserve)
                    and message.confirm_held
                    and message.reference_id not in (w.pending or ())
                ):
                    raise ReservationResolved(
                        f"reservation {message.reference_id} has ended",
                        reference_id=message.reference_id,
                    )
                return Balance(prior.available + prior.reserved, prior.available, prior.reserved)
            if key.startswith(RESOLVE):
                raise ReservationResolved(
                    f"reservation {message.reference_id} was already {_resolved_word(prior.kind)}",
                    reference_id=message.reference_id,
                )
            raise IdempotencyConflict(
                f"reference {message.reference_id} was used with other arguments",
                reference_id=message.reference_id,
            )
        key_id = getattr(message, "key_id", None)
        if key_id is not None and self.cycle_keys.get((w.id, key_id), key) != key:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used for another request",
                reference_id=message.reference_id,
            )

        ref = message.reference_id
        if isinstance(message, Deposit):
            a = message.amount
            return self._write(
                w, cycle, key, "deposit", ref, args, a, a, (("external", -a), (_user(w), a)),
                key_id=key_id,
            )
        if isinstance(message, Withdraw):
            a = message.amount
            self._need(w, a)
            return self._write(
                w, cycle, key, "withdrawal", ref, args, a, -a, ((_user(w), -a), ("external", a)),
                key_id=key_id,
            )
        if isinstance(message, Credit):
            a = message.amount
            return self._write(
                w, cycle, key, message.kind, ref, args, a, a, ((message.source, -a), (_user(w), a))
            )
        if isinstance(message, Stake):
            a = message.amount
            self._need(w, a)
            return self._write(
                w, cycle, key, "stake", ref, args, a, -a,
                ((_user(w), -a), (f"market:{message.market_id}", a)),
                stake_market=message.market_id,
                key_id=key_id,
            )
        if isinstance(message, Reserve):
            a = message.amount
            self._need(w, a)
            expires = self.now + message.timeout_s if message.timeout_s else None
            return self._write(
                w,
                cycle,
                key,
                "reserve",
                ref,
                args,
                a,
                -a,
                ((_user(w), -a), ("escrow", a)),
                reserve=(a, expires),
                key_id=key_id,
            )
        if isinstance(message, (Commit, Release, Expire)):
            held = (w.pending or {}).get(ref)
            if held is None:
                if isinstance(message, Expire):
                    return w.balance()  # resolved meanwhile: nothing to expire
                raise NotFound(f"no reservation {ref}", reference_id=ref)
            a = held[0]
            if isinstance(message, Commit):
                taken = a if message.amount is None else message.amount
                if taken > a:
                    raise InvalidInput(
                        f"cannot commit {taken}: the reservation holds {a}", field="amount"
                    )
                entries = [("escrow", -a), (message.target, taken)]
                if a > taken:
                    entries.append((_user(w), a - taken))
                return self._write(
                    w, cycle, key, "commit", ref, args, taken, a - taken, tuple(entries), resolve=a
                )
            kind = "release" if isinstance(message, Release) else "expire"
            return self._write(
                w, cycle, key, kind, ref, args, a, a, (("escrow", -a), (_user(w), a)), resolve=a
            )
        raise InvalidInput(f"unknown wallet message {type(message).__name__}")

    def _need(self, w: Wallet, amount: int) -> None:
        if w.available < amount:
            raise InsufficientFunds(
                f"available {format_amount(w.available)} is less than {format_amount(amount)}",
                available=w.available,
            )

    def _write(
        self,
        w: Wallet,
        cycle: Cycle,
        key: str,
        kind: str,
        ref: str,
        args: str,
        amount: int,
        available_delta: int,
        entries: tuple[tuple[str, int], ...],
        *,
        reserve: tuple[int, float | None] | None = None,
        resolve: int | None = None,
        stake_market: str | None = None,
        key_id: str | None = None,
    ) -> Balance:
        """Apply one validated operation to memory and record its write."""
        if reserve is not None:
            w.reserved += reserve[0]
            if w.pending is None:
                w.pending = {}
            w.pending[ref] = reserve
        if resolve is not None:
            w.reserved -= resolve
            assert w.pending is not None
            del w.pending[ref]
            if not w.pending:
                w.pending = None
        w.available += available_delta
        w.seq += 1
        done = self.cycle_priors[(w.id, key)] = Prior(args, kind, w.available, w.reserved)
        if key_id is not None:
            self.cycle_keys[(w.id, key_id)] = key
        cycle.writes.append(
            Write(w, key, w.seq, ref, amount, entries, reserve, resolve is not None, done,
                  stake_market, key_id)
        )
        return w.balance()

    def _expire_due(self, w: Wallet, cycle: Cycle) -> None:
        if not w.pending:
            return
        now = self.now
        due = [ref for ref, (_, exp) in w.pending.items() if exp is not None and exp <= now]
        for ref in due:
            if (w.id, RESOLVE + ref) in self.cycle_priors:
                continue
            a = w.pending[ref][0]
            self._write(
                w,
                cycle,
                RESOLVE + ref,
                "expire",
                ref,
                "expire",
                a,
                a,
                (("escrow", -a), (_user(w), a)),
                resolve=a,
            )

    async def commit(self, conn: asyncpg.Connection, cycle: Cycle, fence: Fence) -> None:
        writes: list[Write] = cycle.writes
        await commit_cycle(conn, writes, self.host.settings.shards, fence)
        touched: dict[str, Wallet] = {x.wallet.id: x.wallet for x in writes}
        publisher = get_publisher(self.host.settings.namespace)

        def remember() -> None:
            for w in touched.values():
                w.stored_seq = w.seq
                topic = f"user:{w.id}"
                if publisher.wants(topic):
                    publisher.publish(topic, "balance", w.balance()._asdict(), coalesce=w.id)
            for x in writes:
                self.recent[(x.wallet.id, x.op_key)] = x.done
            while len(self.recent) > RECENT_RESULTS:
                self.recent.popitem(last=False)

        cycle.after_commit.append(remember)

    async def _open_stakes(self, shards: list[int], older_than_s: float, limit: int) -> list:
        """Stakes for markets of `shards` open longer than `older_than_s`, oldest first,
        as `(user id, reference id, market id, amount)`: for the markets' recovery."""
        async with self.host.pool.acquire() as conn:
            rows = await conn.fetch(
                "select wallet_id::text, reference_id, market_id::text, amount "
                "from wallets.open_stakes where market_shard = any($1::int[]) "
                "and created_at < now() - make_interval(secs => $2) "
                "order by created_at limit $3",
                shards,
                older_than_s,
                limit,
            )
        return [tuple(r) for r in rows]

    async def _close_stakes(self, stakes: list[tuple[str, str]]) -> int:
        """Close the open stakes `(user id, reference id)` a market is done with: outside
        the cycles, as no wallet's state changes. Returns how many were open."""
        async with self.host.pool.acquire() as conn:
            status = await conn.execute(
                "delete from wallets.open_stakes s "
                "using unnest($1::uuid[], $2::text[]) as c(wallet_id, reference_id) "
                "where s.wallet_id = c.wallet_id and s.reference_id = c.reference_id",
                [user_id for user_id, _ in stakes],
                [ref for _, ref in stakes],
            )
        return int(status.split()[-1])

    def can_passivate(self, state: Wallet) -> bool:
        return True

    async def tick(self) -> None:
        """Expire due reservations, including those of passivated wallets."""
        host = self.host
        async with host.pool.acquire() as conn:
            rows = await conn.fetch(
                "select wallet_id::text as id, reference_id from wallets.pending "
                "where expires_at <= now() and shard = any($1::int[]) limit 1000",
                list(host.owned),
            )
        for r in rows:
            host.submit(r["id"], Expire(r["reference_id"])).add_done_callback(ignore_outcome)

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        if name == "open_stakes":
            return await self._open_stakes(args["shards"], args["older_than_s"], args["limit"])
        if name == "close_stakes":
            return await self._close_stakes(args["stakes"])
        if name != "transactions":
            return await super().query(name, args)
        async with self.host.pool.acquire() as conn:
            rows = await conn.fetch(
                "select id::text, kind, amount, available_after + reserved_after as balance_after, "
                "reference_id, created_at from wallets.operations "
                "where wallet_id = $1 and kind = any($2::text[]) "
                "and ($3::uuid is null or seq < (select seq from wallets.operations "
                "  where wallet_id = $1 and id = $3)) "
                "order by seq desc limit $4",
                args["wallet_id"],
                list(LISTED_KINDS),
                args.get("before"),
                args["limit"],
            )
        return [
            {**dict(r), "kind": LISTED_KINDS[r["kind"]], "amount": abs(r["amount"])} for r in rows
        ]


def _user(w: Wallet) -> str:
    return f"user:{w.id}"


def _op_key(message: Any) -> str | None:
    if type(message) in RESOLUTIONS:
        return RESOLVE + message.reference_id
    return getattr(message, "reference_id", None)  # None: a read (GetBalance)


def _args(message: Any) -> str:
    describe = getattr(message, "args", None)
    if describe is None:
        raise InvalidInput(f"unknown wallet message {type(message).__name__}")
    return describe()


def _resolved_word(kind: str) -> str:
    return {"commit": "committed", "release": "released", "expire": "expired"}.get(kind, kind)
