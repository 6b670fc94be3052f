"""The wallet entity: one per user, with TigerBeetle's two-phase semantics.

Amounts are integers of minor units. `available` is what the user can spend;
`reserved` is held by pending reservations; `balance = available + reserved`.
Every operation carries a reference id and writes a balanced journal:

| operation | journal |
|---|---|
| deposit   | external -a, user +a |
| withdraw  | user -a, external +a |
| reserve   | user -a, escrow +a (pending, optional time-out) |
| commit    | escrow -a, target +c, user +(a - c) |
| release / expiry | escrow -a, user +a |
| credit    | source -a, user +a (payout or refund) |

So a user account's entries sum to its `available`, and `escrow`'s to the sum of
every open reservation.
"""

from __future__ import annotations

import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from .errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    ReservationResolved,
)
from .money import check_amount, format_amount
from .runtime import (
    EntityKind,
    Op,
    RetryRound,
    Round,
    check_versioned_update,
    random_uuids,
    shard_of,
)
from .wire import plain

MAX_TIMEOUT_S = 7 * 24 * 3600
# Resolutions of a reservation share one key; "/" cannot occur in a reference id,
# so no reference id can collide with a resolution's key.
RESOLVE = "resolve/"
RECENT_RESULTS = 100_000
_ACCOUNT = re.compile(r"^(house|external|market:[0-9a-f-]{36})$")
_REFERENCE = re.compile(r"^[\w:.\-]{1,200}$")
_REFERENCE_ASCII = (string.ascii_letters + string.digits + "_:.-").encode()

# Operation kinds that change `balance`, named as the transactions listing names them.
LISTED_KINDS = {
    "deposit": "deposit",
    "withdrawal": "withdrawal",
    "commit": "bet_stake",
    "payout": "payout",
    "bet_refund": "bet_refund",
}


@plain
class Balance(NamedTuple):
    balance: int
    available: int
    reserved: int


# -- messages --------------------------------------------------------------------


@plain
class GetBalance(NamedTuple):
    pass


@plain
class Deposit(NamedTuple):
    amount: int
    reference_id: str

    def args(self) -> str:
        """The arguments a replay of this reference id must repeat."""
        return f"deposit|{self.amount}"


@plain
class Withdraw(NamedTuple):
    amount: int
    reference_id: str

    def args(self) -> str:
        return f"withdraw|{self.amount}"


@plain
class Reserve(NamedTuple):
    amount: int
    reference_id: str
    timeout_s: float | None = None
    # A replay normally answers the first result; with this set, a replay of a
    # reservation that has since ended is refused (ReservationResolved), for callers
    # that go on to spend the money held.
    confirm_held: bool = False

    def args(self) -> str:
        return f"reserve|{self.amount}|{self.timeout_s}"


@plain
class Commit(NamedTuple):
    reference_id: str
    amount: int | None = None  # None commits the whole reservation
    target: str = "house"

    def args(self) -> str:
        return f"commit|{self.amount}|{self.target}"


@plain
class Release(NamedTuple):
    reference_id: str

    def args(self) -> str:
        return "release"


@plain
class Credit(NamedTuple):
    amount: int
    reference_id: str
    source: str = "house"
    kind: str = "payout"  # or "bet_refund"

    def args(self) -> str:
        return f"credit|{self.amount}|{self.source}|{self.kind}"


@plain
class Expire(NamedTuple):
    reference_id: str

    def args(self) -> str:
        return "expire"


# Messages that resolve a reservation; they share its one key (see RESOLVE).
_RESOLUTIONS = frozenset({Commit, Release, Expire})


def validate(message: Any) -> Any:
    """Check a message's arguments at the caller, before anything is sent."""
    check = _CHECKS.get(type(message))
    if check is None:  # a subclass is checked as its base; anything else is refused later
        check = next((c for kind, c in _CHECKS.items() if isinstance(message, kind)), None)
    if check is not None:
        check(message)
    return message


def _check_reference(message: Any) -> None:
    ref = message.reference_id
    if not isinstance(ref, str) or not 0 < len(ref) <= 200 or not _is_reference(ref):
        raise InvalidInput(
            "reference_id must be 1-200 letters, digits or :._-", field="reference_id"
        )


def _is_reference(ref: str) -> bool:
    if ref.isascii():  # the usual case, checked without the (much slower) pattern
        return not ref.encode().translate(None, _REFERENCE_ASCII)
    return _REFERENCE.fullmatch(ref) is not None


def _check_amounted(message: Any) -> None:
    _check_reference(message)
    check_amount(message.amount)


def _check_reserve(message: Reserve) -> None:
    _check_amounted(message)
    t = message.timeout_s
    if t is not None and (
        isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_TIMEOUT_S
    ):
        raise InvalidInput("timeout_s must be a positive number of seconds", field="timeout_s")


def _check_commit(message: Commit) -> None:
    _check_reference(message)
    if message.amount is not None:
        check_amount(message.amount)
    _check_account(message.target)


def _check_credit(message: Credit) -> None:
    _check_amounted(message)
    _check_account(message.source)
    if message.kind not in ("payout", "bet_refund"):
        raise InvalidInput("credit kind must be payout or bet_refund", field="kind")


def _check_account(account: object) -> None:
    if not isinstance(account, str) or not _ACCOUNT.match(account):
        raise InvalidInput("account must be house, external or market:<id>", field="account")


_CHECKS: dict[type, Callable[[Any], None]] = {
    Deposit: _check_amounted,
    Withdraw: _check_amounted,
    Reserve: _check_reserve,
    Commit: _check_commit,
    Release: _check_reference,
    Expire: _check_reference,
    Credit: _check_credit,
}


# -- state -----------------------------------------------------------------------


class Wallet:
    __slots__ = ("id", "available", "reserved", "seq", "pending", "stored_seq")

    def __init__(self, wallet_id: str, available: int = 0, reserved: int = 0, seq: int = 0):
        self.id = wallet_id
        self.available = available
        self.reserved = reserved
        self.seq = seq
        self.stored_seq = seq if seq else -1  # -1: no row yet
        # reference -> (amount, expires_at epoch or None); None while empty, to stay small
        self.pending: dict[str, tuple[int, float | None]] | None = None

    def balance(self) -> Balance:
        return Balance(self.available + self.reserved, self.available, self.reserved)


class Prior(NamedTuple):
    """An operation already done: its arguments and its result."""

    args: str
    kind: str
    available: int
    reserved: int


class Write(NamedTuple):
    wallet: Wallet
    op_key: str
    seq: int
    reference_id: str
    amount: int
    entries: tuple[tuple[str, int], ...]
    pending_add: tuple[int, float | None] | None
    pending_remove: bool
    done: Prior  # its kind, arguments and result


class WalletKind(EntityKind[Wallet]):
    name = "wallets"

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.recent: OrderedDict[tuple[str, str], Prior] = OrderedDict()
        self.round_priors: dict[tuple[str, str], Prior] = {}
        # The round's clock: reservations made and expired in one round share it.
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
        """Find earlier results the round needs. Optimistic: a fresh reference id is
        assumed new (the unique key on operations catches the rare replay of one this
        activation has not seen, and the round reruns carefully); only resolutions of
        reservations no longer open must be looked up, as must everything in a
        careful round."""
        careful, self.careful = self.careful, False
        self.round_priors = {}
        self.now = time.time()
        unknown = {}
        entities = self.host.entities
        for op in ops:
            key = _op_key(op.message)
            if key is None:
                continue
            k = (op.entity_id, key)
            prior = self.recent.get(k)
            if prior is not None:
                self.round_priors[k] = prior
            elif careful or (
                key.startswith(RESOLVE)
                and op.message.reference_id not in (entities[op.entity_id].state.pending or ())
            ):
                unknown[k] = None
        if not unknown:
            return
        for r in await conn.fetch(
            "select o.wallet_id::text as id, o.op_key, o.args, o.kind, o.available_after, "
            "o.reserved_after from wallets.operations o "
            "join unnest($1::uuid[], $2::text[]) as k(wallet_id, op_key) "
            "on o.wallet_id = k.wallet_id and o.op_key = k.op_key",
            [k[0] for k in unknown],
            [k[1] for k in unknown],
        ):
            self.round_priors[(r["id"], r["op_key"])] = Prior(
                r["args"], r["kind"], r["available_after"], r["reserved_after"]
            )

    def apply(self, w: Wallet, message: Any, round_: Round, op: Op) -> Balance:
        validate(message)  # again here: a message may reach the host without the client
        self._expire_due(w, round_)
        if isinstance(message, GetBalance):
            return w.balance()
        key = _op_key(message)
        args = _args(message)
        prior = self.round_priors.get((w.id, key))
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

        ref = message.reference_id
        if isinstance(message, Deposit):
            a = message.amount
            return self._write(
                w, round_, key, "deposit", ref, args, a, a, (("external", -a), (_user(w), a))
            )
        if isinstance(message, Withdraw):
            a = message.amount
            self._need(w, a)
            return self._write(
                w, round_, key, "withdrawal", ref, args, a, -a, ((_user(w), -a), ("external", a))
            )
        if isinstance(message, Credit):
            a = message.amount
            return self._write(
                w, round_, key, message.kind, ref, args, a, a, ((message.source, -a), (_user(w), a))
            )
        if isinstance(message, Reserve):
            a = message.amount
            self._need(w, a)
            expires = self.now + message.timeout_s if message.timeout_s else None
            return self._write(
                w,
                round_,
                key,
                "reserve",
                ref,
                args,
                a,
                -a,
                ((_user(w), -a), ("escrow", a)),
                reserve=(a, expires),
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
                    w, round_, key, "commit", ref, args, taken, a - taken, tuple(entries), resolve=a
                )
            kind = "release" if isinstance(message, Release) else "expire"
            return self._write(
                w, round_, key, kind, ref, args, a, a, (("escrow", -a), (_user(w), a)), resolve=a
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
        round_: Round,
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
        done = self.round_priors[(w.id, key)] = Prior(args, kind, w.available, w.reserved)
        round_.writes.append(
            Write(w, key, w.seq, ref, amount, entries, reserve, resolve is not None, done)
        )
        return w.balance()

    def _expire_due(self, w: Wallet, round_: Round) -> None:
        if not w.pending:
            return
        now = self.now
        due = [ref for ref, (_, exp) in w.pending.items() if exp is not None and exp <= now]
        for ref in due:
            if (w.id, RESOLVE + ref) in self.round_priors:
                continue
            a = w.pending[ref][0]
            self._write(
                w,
                round_,
                RESOLVE + ref,
                "expire",
                ref,
                "expire",
                a,
                a,
                (("escrow", -a), (_user(w), a)),
                resolve=a,
            )

    async def persist(self, conn: asyncpg.Connection, round_: Round) -> None:
        writes: list[Write] = round_.writes
        shards = self.host.settings.shards
        try:
            await conn.copy_records_to_table(
                "operations",
                schema_name="wallets",
                columns=[
                    "id",
                    "wallet_id",
                    "op_key",
                    "seq",
                    "kind",
                    "reference_id",
                    "amount",
                    "args",
                    "available_after",
                    "reserved_after",
                ],
                records=[
                    (
                        op_id,
                        x.wallet.id,
                        x.op_key,
                        x.seq,
                        x.done.kind,
                        x.reference_id,
                        x.amount,
                        x.done.args,
                        x.done.available,
                        x.done.reserved,
                    )
                    for op_id, x in zip(random_uuids(len(writes)), writes, strict=True)
                ],
            )
        except asyncpg.UniqueViolationError as exc:
            raise RetryRound("a reference id was used before this activation") from exc
        await conn.copy_records_to_table(
            "entries",
            schema_name="wallets",
            columns=["wallet_id", "seq", "account", "amount"],
            records=[(x.wallet.id, x.seq, acct, amt) for x in writes for acct, amt in x.entries],
        )
        added = [x for x in writes if x.pending_add is not None]
        if added:
            # A round's reservations share its clock, so mostly one expiry to convert.
            stamps = {e: _timestamp(e) for e in {x.pending_add[1] for x in added}}
            await conn.copy_records_to_table(
                "pending",
                schema_name="wallets",
                columns=["wallet_id", "reference_id", "shard", "amount", "expires_at"],
                records=[
                    (
                        x.wallet.id,
                        x.reference_id,
                        shard_of(x.wallet.id, shards),
                        x.pending_add[0],
                        stamps[x.pending_add[1]],
                    )
                    for x in added
                ],
            )
        removed = [x for x in writes if x.pending_remove]
        if removed:
            await conn.execute(
                "delete from wallets.pending p using unnest($1::uuid[], $2::text[]) "
                "as r(wallet_id, reference_id) "
                "where p.wallet_id = r.wallet_id and p.reference_id = r.reference_id",
                [x.wallet.id for x in removed],
                [x.reference_id for x in removed],
            )
        touched: dict[str, Wallet] = {x.wallet.id: x.wallet for x in writes}
        new = [w for w in touched.values() if w.stored_seq < 0]
        old = [w for w in touched.values() if w.stored_seq >= 0]
        if new:
            await conn.execute(
                "insert into wallets.wallets (user_id, shard, available, reserved, seq) "
                "select * from unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[], "
                "$5::bigint[])",
                [w.id for w in new],
                [shard_of(w.id, shards) for w in new],
                [w.available for w in new],
                [w.reserved for w in new],
                [w.seq for w in new],
            )
        if old:
            status = await conn.execute(
                "update wallets.wallets w set available = u.available, reserved = u.reserved, "
                "seq = u.seq, updated_at = now() "
                "from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) "
                "as u(user_id, available, reserved, seq, stored_seq) "
                "where w.user_id = u.user_id and w.seq = u.stored_seq",
                [w.id for w in old],
                [w.available for w in old],
                [w.reserved for w in old],
                [w.seq for w in old],
                [w.stored_seq for w in old],
            )
            check_versioned_update(status, len(old), "wallet")

        publisher = self.host.publisher

        def remember() -> None:
            for w in touched.values():
                w.stored_seq = w.seq
                topic = f"user:{w.id}"
                if publisher.wants(topic):
                    publisher.publish(topic, "balance", w.balance()._asdict(), coalesce=True)
            for x in writes:
                self.recent[(x.wallet.id, x.op_key)] = x.done
            while len(self.recent) > RECENT_RESULTS:
                self.recent.popitem(last=False)

        round_.after_commit.append(remember)

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
            host.submit(r["id"], Expire(r["reference_id"])).add_done_callback(_ignore_outcome)

    async def query(self, name: str, args: dict[str, Any]) -> Any:
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


def _timestamp(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _ignore_outcome(future: Any) -> None:
    if not future.cancelled():
        future.exception()


def _user(w: Wallet) -> str:
    return f"user:{w.id}"


def _op_key(message: Any) -> str | None:
    if type(message) in _RESOLUTIONS:
        return RESOLVE + message.reference_id
    return getattr(message, "reference_id", None)  # None: a read (GetBalance)


def _args(message: Any) -> str:
    describe = getattr(message, "args", None)
    if describe is None:
        raise InvalidInput(f"unknown wallet message {type(message).__name__}")
    return describe()


def _resolved_word(kind: str) -> str:
    return {"commit": "committed", "release": "released", "expire": "expired"}.get(kind, kind)
