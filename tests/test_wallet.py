"""Wallet semantics (issue section 5), one test per rule, against real Ray + PostgreSQL.

Every test here uses the `aio` fixture (directly or through `wallet`/`lootify`), so
conftest truncates the tables and resets the hosts before it and audits the ledger after
it. Most tests reach wallets through `wallet(uid)`: the blocking client's methods with a
deadline on every call, so a host that stops answering fails the test instead of hanging
the session.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import ray
import ray.cloudpickle

from actors.errors import (
    EntityCrashed,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    ReservationResolved,
    Unavailable,
)
from actors.money import MAX_AMOUNT
from actors.ops.audit import ledger_violations
from actors.runtime.wire import decode_outcomes, encode_batch
from actors.wallets import Balance, Deposit, GetBalance, Withdraw
from actors.wallets.messages import MAX_TIMEOUT_S, Stake
from tests.polling import sigstop, wait_until

# -- helpers -----------------------------------------------------------------------






CALL_TIMEOUT_S = 20.0


class BoundedWallet:
    """`lootify.wallet(uid)`, but every call fails after `CALL_TIMEOUT_S` without an answer."""

    def __init__(self, aio, run, user_id: object) -> None:
        self._wallet = aio.wallet(user_id)
        self._run = run

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._wallet, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            async def bounded() -> Any:
                try:
                    return await asyncio.wait_for(method(*args, **kwargs), CALL_TIMEOUT_S)
                except TimeoutError:
                    raise AssertionError(
                        f"wallet.{name}{args} got no answer in {CALL_TIMEOUT_S}s") from None

            return self._run(bounded())

        return call


@pytest.fixture
def wallet(aio, run) -> Callable[[object], BoundedWallet]:
    return lambda user_id: BoundedWallet(aio, run, user_id)


def new_id() -> str:
    return str(uuid.uuid4())


def id_on_host(aio, host: int, exclude: set[str] = frozenset()) -> str:
    router = aio.routers["wallets"]
    while True:
        uid = new_id()
        if router.host_of(uid) == host and uid not in exclude:
            return uid


def op_count(sql, uid: str) -> int:
    return sql("select count(*) as n from wallets.operations where wallet_id = $1", uid)[0]["n"]


def stored(sql, uid: str) -> tuple[int, int] | None:
    rows = sql("select available, reserved from wallets.wallets where user_id = $1", uid)
    return (rows[0]["available"], rows[0]["reserved"]) if rows else None


def host_entities(aio, run, host: int) -> int:
    return run(aio.hosts())[host]["entities"]


# -- deposit / withdraw / balance ----------------------------------------------------


def test_deposit_withdraw_balance(lootify, sql):
    uid = new_id()
    w = lootify.wallet(uid)
    assert tuple(w.balance()) == (0, 0, 0)
    assert w.deposit(10_000, reference_id="d-1") == Balance(10_000, 10_000, 0)
    assert w.deposit(2_500, reference_id="d-2") == Balance(12_500, 12_500, 0)
    assert w.withdraw(4_000, reference_id="w-1") == Balance(8_500, 8_500, 0)
    assert w.balance() == Balance(8_500, 8_500, 0)
    assert stored(sql, uid) == (8_500, 0)


def test_withdraw_more_than_available_is_refused_and_changes_nothing(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(600, reference_id="r-1")  # balance 1,000 but only 400 available
    with pytest.raises(InsufficientFunds):
        w.withdraw(401, reference_id="w-1")
    assert w.balance() == Balance(1_000, 400, 600)
    assert stored(sql, uid) == (400, 600)
    assert op_count(sql, uid) == 2
    # The refusal is not remembered: the same reference works once funds exist.
    assert w.withdraw(400, reference_id="w-1") == Balance(600, 0, 600)


# -- two-phase: reserve / commit / release -------------------------------------------


def test_reserve_lowers_available_not_balance(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    assert w.reserve(300, reference_id="bet-1") == Balance(1_000, 700, 300)
    assert w.balance() == Balance(1_000, 700, 300)
    assert stored(sql, uid) == (700, 300)
    with pytest.raises(InsufficientFunds):
        w.reserve(701, reference_id="bet-2")
    assert w.balance() == Balance(1_000, 700, 300)


def test_commit_full_debits_balance(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    assert w.commit("bet-1") == Balance(700, 700, 0)
    assert w.balance() == Balance(700, 700, 0)
    assert stored(sql, uid) == (700, 0)
    assert sql("select count(*) as n from wallets.pending where wallet_id = $1", uid)[0]["n"] == 0


def test_commit_partial_releases_the_rest(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    assert w.commit("bet-1", amount=120) == Balance(880, 880, 0)
    assert stored(sql, uid) == (880, 0)


def test_commit_more_than_reserved_is_refused(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    with pytest.raises(InvalidInput):
        w.commit("bet-1", amount=301)
    assert w.balance() == Balance(1_000, 700, 300)
    assert w.commit("bet-1", amount=300) == Balance(700, 700, 0)


def test_release_returns_the_reservation(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    assert w.release("bet-1") == Balance(1_000, 1_000, 0)
    assert stored(sql, uid) == (1_000, 0)


def test_commit_then_release_is_resolved(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    w.commit("bet-1")
    with pytest.raises(ReservationResolved):
        w.release("bet-1")
    assert w.balance() == Balance(700, 700, 0)


def test_release_then_commit_is_resolved(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    w.release("bet-1")
    with pytest.raises(ReservationResolved):
        w.commit("bet-1")
    with pytest.raises(ReservationResolved):
        w.commit("bet-1", amount=100)
    assert w.balance() == Balance(1_000, 1_000, 0)


def test_commit_twice_with_same_args_acts_once(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    first = w.commit("bet-1", amount=200)
    assert first == Balance(800, 800, 0)
    w.deposit(50, reference_id="d-2")  # the replay answers the first result, not the current
    assert w.commit("bet-1", amount=200) == first
    assert w.balance() == Balance(850, 850, 0)
    # Other arguments for the same resolution: already resolved.
    with pytest.raises(ReservationResolved):
        w.commit("bet-1", amount=100)
    assert op_count(sql, uid) == 4


def test_resolving_an_unknown_reservation_is_not_found(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    with pytest.raises(NotFound):
        w.commit("no-such-bet")
    with pytest.raises(NotFound):
        w.release("no-such-bet")
    # A non-reservation reference is not a reservation either.
    with pytest.raises(NotFound):
        w.commit("d-1")
    assert w.balance() == Balance(1_000, 1_000, 0)
    assert op_count(sql, uid) == 1


def test_a_stake_sent_again_to_a_new_activation_is_answered_once(wallet, aio, run, sql):
    """The host's memory no longer holds a stake it committed (reset here; in
    production, its host died after the commit and before the answer, and the market
    sends the stake again to the new process): the stored rows, its open stake among
    them, refuse the second debit, and the replay gets the first answer."""
    uid = new_id()
    wallet(uid).deposit(1_000, reference_id="d-1")
    router = aio.routers["wallets"]
    stake = Stake(300, f"bet:{new_id()}", new_id())

    async def send() -> Any:
        return await router.call(uid, stake)

    first = run(send())
    run(_reset_hosts(aio))
    assert run(send()) == first
    assert stored(sql, uid) == (700, 0)
    assert op_count(sql, uid) == 2
    assert sql("select count(*) as n from wallets.open_stakes where wallet_id = $1",
               uid)[0]["n"] == 1


# -- reservation time-out ------------------------------------------------------------


def test_reservation_times_out(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    assert w.reserve(300, reference_id="bet-1", timeout_s=1) == Balance(1_000, 700, 300)
    wait_until(lambda: w.balance() == Balance(1_000, 1_000, 0), timeout=10,
               what="the reservation to expire")


def test_reservation_times_out_while_passivated(wallet, aio, run, sql):
    """The host's tick expires reservations of wallets no longer in memory: observed in
    PostgreSQL only, without messaging the wallet (a message would expire it lazily)."""
    uid = new_id()
    host = aio.routers["wallets"].host_of(uid)
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1", timeout_s=1)
    run(_passivate_all(aio))
    assert host_entities(aio, run, host) == 0
    assert stored(sql, uid) == (700, 300)
    wait_until(lambda: stored(sql, uid) == (1_000, 0), timeout=10,
               what="the tick to expire the passivated wallet's reservation")
    assert sql("select count(*) as n from wallets.pending where wallet_id = $1", uid)[0]["n"] == 0
    kinds = [r["kind"] for r in sql(
        "select kind from wallets.operations where wallet_id = $1 order by seq", uid)]
    assert kinds == ["deposit", "reserve", "expire"]
    assert w.balance() == Balance(1_000, 1_000, 0)


def test_commit_after_expiry_is_resolved(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1", timeout_s=1)
    wait_until(lambda: w.balance().reserved == 0, timeout=10, what="the reservation to expire")
    assert _expired_in_db(sql, uid, "bet-1")
    with pytest.raises(ReservationResolved):
        w.commit("bet-1")
    with pytest.raises(ReservationResolved):
        w.release("bet-1")
    assert w.balance() == Balance(1_000, 1_000, 0)


def _expired_in_db(sql, uid: str, ref: str) -> bool:
    return bool(sql("select 1 from wallets.operations where wallet_id = $1 "
                    "and op_key = $2 and kind = 'expire'", uid, f"resolve/{ref}"))


async def _passivate_all(aio) -> int:
    return sum(await asyncio.gather(
        *(h.passivate_all.remote() for h in aio.routers["wallets"].handles)))


async def _reset_hosts(aio) -> None:
    await asyncio.gather(*(h.reset.remote() for h in aio.routers["wallets"].handles))


# -- idempotency by reference id -------------------------------------------------------


def test_same_reference_same_args_replays_the_first_result(wallet, sql):
    uid = new_id()
    w = wallet(uid)
    first = w.deposit(1_000, reference_id="d-1")
    w.deposit(500, reference_id="d-2")
    assert w.deposit(1_000, reference_id="d-1") == first == Balance(1_000, 1_000, 0)
    w_first = w.withdraw(200, reference_id="w-1")
    assert w.withdraw(200, reference_id="w-1") == w_first
    r_first = w.reserve(100, reference_id="bet-1", timeout_s=60)
    assert w.reserve(100, reference_id="bet-1", timeout_s=60) == r_first
    c_first = w.credit(70, reference_id="pay-1")
    assert w.credit(70, reference_id="pay-1") == c_first
    assert w.balance() == Balance(1_370, 1_270, 100)
    assert op_count(sql, uid) == 5
    w.release("bet-1")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("deposit", 1_000), ("deposit", 999)),
        (("deposit", 1_000), ("withdraw", 1_000)),
        (("deposit", 1_000), ("reserve", 1_000)),
        (("deposit", 1_000), ("credit", 1_000)),
        (("withdraw", 100), ("withdraw", 101)),
        (("reserve", 100), ("reserve", 200)),
        (("reserve", 100), ("withdraw", 100)),
        (("credit", 100), ("deposit", 100)),
    ],
    ids=lambda v: f"{v[0]}{v[1]}",
)
def test_same_reference_other_args_is_an_idempotency_conflict(wallet, sql, first, second):
    uid = new_id()
    w = wallet(uid)
    w.deposit(10_000, reference_id="funding")
    getattr(w, first[0])(first[1], reference_id="ref-1")
    before = w.balance()
    with pytest.raises(IdempotencyConflict):
        getattr(w, second[0])(second[1], reference_id="ref-1")
    assert w.balance() == before
    assert op_count(sql, uid) == 2
    if first[0] == "reserve":
        w.release("ref-1")


def test_reserve_with_other_timeout_is_an_idempotency_conflict(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.reserve(100, reference_id="bet-1", timeout_s=60)
    with pytest.raises(IdempotencyConflict):
        w.reserve(100, reference_id="bet-1", timeout_s=30)
    with pytest.raises(IdempotencyConflict):
        w.reserve(100, reference_id="bet-1")
    assert w.balance() == Balance(1_000, 900, 100)
    w.release("bet-1")


@pytest.mark.parametrize("forget", ["passivate_all", "reset"])
def test_replay_survives_passivation_and_host_reset(wallet, aio, run, sql, forget):
    """After `passivate_all` the wallet state comes back from PostgreSQL; after `reset`
    the hosts' cache of recent results is gone too, so replays are answered from
    `wallets.operations`."""
    uid = new_id()
    host = aio.routers["wallets"].host_of(uid)
    w = wallet(uid)
    dep = w.deposit(1_000, reference_id="d-1")
    res = w.reserve(300, reference_id="bet-1")
    com = w.commit("bet-1", amount=100)
    wd = w.withdraw(50, reference_id="w-1")
    run(_passivate_all(aio) if forget == "passivate_all" else _reset_hosts(aio))
    assert host_entities(aio, run, host) == 0
    assert w.deposit(1_000, reference_id="d-1") == dep
    assert w.reserve(300, reference_id="bet-1") == res
    assert w.commit("bet-1", amount=100) == com
    assert w.withdraw(50, reference_id="w-1") == wd
    with pytest.raises(IdempotencyConflict):
        w.deposit(1, reference_id="d-1")
    with pytest.raises(IdempotencyConflict):
        w.withdraw(50, reference_id="d-1")
    with pytest.raises(ReservationResolved):
        w.release("bet-1")
    assert w.balance() == Balance(850, 850, 0)
    assert op_count(sql, uid) == 4


# -- one Idempotency-Key, one operation ---------------------------------------------------


@pytest.mark.parametrize("when", ["same activation", "new activation", "sent together"])
def test_a_key_id_takes_one_operation_of_any_kind(wallet, aio, run, sql, when):
    """A deposit and a stake sent under one key id: the second is refused whatever its
    kind and moves nothing, whether the wallet remembers the first (same activation),
    must find it in PostgreSQL (a new activation: the unique key on key ids refuses the
    commit and the careful cycle looks it up), or gets both at once."""
    uid, key = new_id(), new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-0")
    deposit = Deposit(200, "http:deposit:k", key)
    stake = Stake(300, f"bet:{key}", new_id(), key)
    router = aio.routers["wallets"]

    async def send(*messages: Any) -> list[Any]:
        return await asyncio.gather(*(router.call(uid, m) for m in messages),
                                    return_exceptions=True)

    if when == "sent together":
        answers = run(send(deposit, stake))
        assert [type(a) for a in answers] == [Balance, IdempotencyConflict]
        expected = Balance(1_200, 1_200, 0)
    else:
        [first] = run(send(stake))
        if when == "new activation":
            run(_reset_hosts(aio))
        [refused] = run(send(deposit))
        assert isinstance(refused, IdempotencyConflict)
        assert run(send(stake)) == [first]  # its own key: still a replay
        expected = Balance(700, 700, 0)
    assert w.balance() == expected
    assert stored(sql, uid) == (expected.available, 0)
    assert op_count(sql, uid) == 2


def test_a_key_id_replays_its_own_operation_after_a_reset(wallet, aio, run, sql):
    """The careful cycle's lookup by key id finds the operation's own row: a replay of
    a keyed withdrawal is answered as before, not refused as another request."""
    uid, key = new_id(), new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-0")
    first = w.withdraw(250, reference_id="http:withdraw:k", key_id=key)
    run(_reset_hosts(aio))
    with pytest.raises(IdempotencyConflict):  # forces the careful cycle's lookup
        w.deposit(5, reference_id="http:deposit:k", key_id=key)
    assert w.withdraw(250, reference_id="http:withdraw:k", key_id=key) == first
    assert w.balance() == Balance(750, 750, 0)
    assert op_count(sql, uid) == 2


def test_a_key_id_is_a_uuid(wallet, sql):
    uid = new_id()
    with pytest.raises(InvalidInput):
        wallet(uid).deposit(100, reference_id="d-1", key_id="not-a-uuid")
    assert stored(sql, uid) is None


# -- bad arguments -----------------------------------------------------------------------

BAD_AMOUNTS = [0, -1, -10_000, 1.0, 2.5, math.nan, True, False, "100", "1.00", None,
               MAX_AMOUNT + 1, 10**30]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
@pytest.mark.parametrize("operation", ["deposit", "withdraw", "reserve", "credit"])
def test_bad_amount_is_invalid_input_and_changes_nothing(wallet, sql, operation, amount):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    with pytest.raises(InvalidInput):
        getattr(w, operation)(amount, reference_id="ref-1")
    assert w.balance() == Balance(1_000, 1_000, 0)
    assert op_count(sql, uid) == 1


def test_the_largest_amount_is_accepted(wallet):
    w = wallet(new_id())
    assert w.deposit(MAX_AMOUNT, reference_id="d-1") == Balance(MAX_AMOUNT, MAX_AMOUNT, 0)
    assert w.withdraw(MAX_AMOUNT, reference_id="w-1") == Balance(0, 0, 0)


@pytest.mark.parametrize(
    "user_id",
    ["", "not-a-uuid", "1234", str(uuid.uuid4())[:-1], str(uuid.uuid4()) + "0", None, 42,
     3.14, b"\x00" * 16, [], "'; drop table wallets.wallets; --"],
    ids=repr,
)
def test_malformed_user_id_is_invalid_input(lootify, aio, user_id):
    with pytest.raises(InvalidInput):
        lootify.wallet(user_id)
    with pytest.raises(InvalidInput):
        aio.wallet(user_id)


def test_user_id_spellings_are_one_wallet(lootify):
    uid = uuid.uuid4()
    lootify.wallet(uid).deposit(100, reference_id="d-1")
    assert lootify.wallet(str(uid).upper()).balance() == Balance(100, 100, 0)
    assert lootify.wallet(uid.hex).balance() == Balance(100, 100, 0)


@pytest.mark.parametrize("reference_id", ["", "x" * 201, "a b", "a/b", "a\nb", 17, b"ref"],
                         ids=repr)
@pytest.mark.parametrize("operation", ["deposit", "withdraw", "reserve", "credit", "commit",
                                       "release"])
def test_bad_reference_id_is_invalid_input(wallet, sql, operation, reference_id):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    with pytest.raises(InvalidInput):
        if operation in ("commit", "release"):
            getattr(w, operation)(reference_id)
        else:
            getattr(w, operation)(100, reference_id=reference_id)
    assert w.balance() == Balance(1_000, 1_000, 0)
    assert op_count(sql, uid) == 1


def test_reference_id_of_200_characters_is_accepted(wallet):
    w = wallet(new_id())
    assert w.deposit(100, reference_id="x" * 200) == Balance(100, 100, 0)


@pytest.mark.parametrize("operation", ["deposit", "reserve"])
def test_missing_reference_id_is_invalid_input(wallet, sql, operation):
    """`reference_id=None` must be refused like any other malformed reference (BUG: it
    passes `wallet.validate`, reaches the host and fails the whole cycle's commit)."""
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    with pytest.raises(InvalidInput):
        getattr(w, operation)(100, reference_id=None)
    assert w.balance() == Balance(1_000, 1_000, 0)
    assert op_count(sql, uid) == 1


def test_reference_id_with_a_trailing_newline_is_invalid_input(wallet, sql):
    """BUG: `_REFERENCE.match` with `$` accepts one trailing newline."""
    uid = new_id()
    w = wallet(uid)
    with pytest.raises(InvalidInput):
        w.deposit(100, reference_id="ref\n")
    assert op_count(sql, uid) == 0


@pytest.mark.parametrize("timeout_s", [0, -1, 0.0, True, "5", math.nan, math.inf,
                                       MAX_TIMEOUT_S + 1, [1]], ids=repr)
def test_bad_timeout_is_invalid_input(wallet, sql, timeout_s):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    with pytest.raises(InvalidInput):
        w.reserve(100, reference_id="bet-1", timeout_s=timeout_s)
    assert w.balance() == Balance(1_000, 1_000, 0)
    assert op_count(sql, uid) == 1


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("commit", {"amount": 0}),
        ("commit", {"amount": -5}),
        ("commit", {"amount": 1.5}),
        ("commit", {"amount": True}),
        ("commit", {"target": "bank"}),
        ("commit", {"target": "user:00000000-0000-0000-0000-000000000000"}),
        ("commit", {"target": "escrow"}),
        ("credit", {"source": "escrow"}),
        ("credit", {"source": "market:nope"}),
        ("credit", {"kind": "bonus"}),
        ("credit", {"kind": "deposit"}),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v),
)
def test_bad_commit_or_credit_arguments_are_invalid_input(wallet, sql, call, args):
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    with pytest.raises(InvalidInput):
        if call == "commit":
            w.commit("bet-1", **args)
        else:
            w.credit(100, reference_id="pay-1", **args)
    assert w.balance() == Balance(1_000, 700, 300)
    assert op_count(sql, uid) == 2
    w.release("bet-1")


# -- credits and the transactions listing ------------------------------------------------


def test_credit_payout_and_bet_refund(wallet, sql):
    uid = new_id()
    market = f"market:{uuid.uuid4()}"
    w = wallet(uid)
    assert w.credit(500, reference_id="pay-1") == Balance(500, 500, 0)
    assert w.credit(200, reference_id="refund-1", source=market, kind="bet_refund") == \
        Balance(700, 700, 0)
    rows = sql("select kind, amount from wallets.operations where wallet_id = $1 order by seq",
               uid)
    assert [(r["kind"], r["amount"]) for r in rows] == [("payout", 500), ("bet_refund", 200)]
    assert stored(sql, uid) == (700, 0)


def test_transactions_newest_first_with_kinds_and_balance_after(wallet):
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.withdraw(100, reference_id="w-1")
    w.reserve(300, reference_id="bet-1")                      # not listed: balance unchanged
    w.commit("bet-1", amount=200)                            # bet_stake 200
    w.reserve(50, reference_id="bet-2")
    w.release("bet-2")                                       # not listed
    w.credit(400, reference_id="pay-1")                      # payout
    w.credit(30, reference_id="refund-1", kind="bet_refund")  # bet_refund
    w.reserve(25, reference_id="bet-3")                      # open: balance unchanged
    listed = w.transactions()
    assert [(t["kind"], t["amount"], t["balance_after"]) for t in listed] == [
        ("bet_refund", 30, 1_130),
        ("payout", 400, 1_100),
        ("bet_stake", 200, 700),
        ("withdrawal", 100, 900),
        ("deposit", 1_000, 1_000),
    ]
    assert [t["reference_id"] for t in listed] == ["refund-1", "pay-1", "bet-1", "w-1", "d-1"]
    assert all(uuid.UUID(t["id"]) for t in listed)
    stamps = [t["created_at"] for t in listed]
    assert stamps == sorted(stamps, reverse=True)
    w.release("bet-3")


def test_transactions_paging_with_before(wallet):
    w = wallet(new_id())
    for i in range(7):
        w.deposit(100 + i, reference_id=f"d-{i}")
    every = w.transactions(limit=50)
    assert [t["amount"] for t in every] == [106, 105, 104, 103, 102, 101, 100]
    pages, before = [], None
    while True:
        page = w.transactions(limit=3, before=before)
        if not page:
            break
        assert len(page) <= 3
        pages.append([t["amount"] for t in page])
        before = page[-1]["id"]
    assert pages == [[106, 105, 104], [103, 102, 101], [100]]
    with pytest.raises(InvalidInput):
        w.transactions(before="not-an-id")
    assert wallet(new_id()).transactions() == []


# -- the journal -----------------------------------------------------------------------------


def test_every_operation_writes_a_balanced_journal(wallet, sql):
    uid = new_id()
    user = f"user:{uid}"
    market = f"market:{uuid.uuid4()}"
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.withdraw(100, reference_id="w-1")
    w.reserve(300, reference_id="bet-1")
    w.commit("bet-1", amount=200)
    w.reserve(50, reference_id="bet-2")
    w.release("bet-2")
    w.reserve(80, reference_id="bet-3")
    w.commit("bet-3", target=market)
    w.credit(400, reference_id="pay-1")
    w.credit(30, reference_id="refund-1", source=market, kind="bet_refund")
    w.reserve(70, reference_id="bet-4", timeout_s=1)
    wait_until(lambda: w.balance().reserved == 0, timeout=10, what="bet-4 to expire")

    expected = [
        ("deposit", {("external", -1_000), (user, 1_000)}),
        ("withdrawal", {(user, -100), ("external", 100)}),
        ("reserve", {(user, -300), ("escrow", 300)}),
        ("commit", {("escrow", -300), ("house", 200), (user, 100)}),
        ("reserve", {(user, -50), ("escrow", 50)}),
        ("release", {("escrow", -50), (user, 50)}),
        ("reserve", {(user, -80), ("escrow", 80)}),
        ("commit", {("escrow", -80), (market, 80)}),
        ("payout", {("house", -400), (user, 400)}),
        ("bet_refund", {(market, -30), (user, 30)}),
        ("reserve", {(user, -70), ("escrow", 70)}),
        ("expire", {("escrow", -70), (user, 70)}),
    ]
    ops = sql("select seq, kind from wallets.operations where wallet_id = $1 order by seq", uid)
    assert [r["kind"] for r in ops] == [kind for kind, _ in expected]
    assert [r["seq"] for r in ops] == list(range(1, len(expected) + 1))
    entries: dict[int, list[tuple[str, int]]] = {}
    for r in sql("select seq, account, amount from wallets.entries where wallet_id = $1", uid):
        entries.setdefault(r["seq"], []).append((r["account"], r["amount"]))
    for seq, (kind, lines) in enumerate(expected, start=1):
        got = entries.get(seq, [])
        assert sorted(got) == sorted(lines), f"journal of {kind} (seq {seq})"
        assert sum(amount for _, amount in got) == 0, f"{kind} is unbalanced"
    assert set(entries) == set(range(1, len(expected) + 1))
    # The user's account sums to `available`, escrow to what is still reserved (nothing).
    assert sum(a for lines in entries.values() for acct, a in lines if acct == user) == \
        w.balance().available == 1_050
    assert sum(a for lines in entries.values() for acct, a in lines if acct == "escrow") == 0


def test_audit_reports_a_corrupted_journal(wallet, run, database_url):
    uid = new_id()
    wallet(uid).deposit(1_000, reference_id="d-1")

    async def corrupt_check_repair() -> tuple[dict, dict, dict]:
        conn = await asyncpg.connect(database_url)
        try:
            clean = await ledger_violations(conn)
            await conn.execute("update wallets.entries set amount = amount + 1 "
                               "where wallet_id = $1 and account = 'external'", uid)
            broken = await ledger_violations(conn)
            await conn.execute("update wallets.entries set amount = amount - 1 "
                               "where wallet_id = $1 and account = 'external'", uid)
            # A second kind of damage: the wallet row no longer matches its account.
            await conn.execute("update wallets.wallets set available = available + 5 "
                               "where user_id = $1", uid)
            drifted = await ledger_violations(conn)
            await conn.execute("update wallets.wallets set available = available - 5 "
                               "where user_id = $1", uid)
            return clean, broken, drifted
        finally:
            await conn.close()

    clean, broken, drifted = run(corrupt_check_repair())
    assert clean == {}
    assert broken == {"unbalanced operations": 1, "entries do not sum to zero": 1}
    assert drifted == {"available differs from the account's entries": 1}


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_reserves_never_overdraw(aio, run, sql):
    uid = new_id()
    funds = 100_000
    rng = random.Random(5)
    amounts = [rng.randint(1, 400) for _ in range(1_000)]  # ~200,000 asked of 100,000

    async def scenario() -> list[Any]:
        w = aio.wallet(uid)
        await w.deposit(funds, reference_id="funding")
        return await asyncio.gather(
            *(w.reserve(a, reference_id=f"bet-{i}") for i, a in enumerate(amounts)),
            return_exceptions=True,
        )

    outcomes = run(scenario())
    taken = [a for a, o in zip(amounts, outcomes, strict=True) if isinstance(o, Balance)]
    refused = [o for o in outcomes if not isinstance(o, Balance)]
    assert all(isinstance(o, InsufficientFunds) for o in refused), Counter(map(type, refused))
    assert taken and refused
    assert sum(taken) <= funds
    # The refused ones were refused because the money really ran out.
    assert min(a for a, o in zip(amounts, outcomes, strict=True)
               if not isinstance(o, Balance)) > funds - sum(taken)
    final = run(aio.wallet(uid).balance())
    assert final == Balance(funds, funds - sum(taken), sum(taken))
    assert final.available >= 0
    assert all(o.available >= 0 and o.balance == funds for o in outcomes if isinstance(o, Balance))
    assert stored(sql, uid) == (funds - sum(taken), sum(taken))
    assert sql("select count(*) as n, sum(amount) as s from wallets.pending "
               "where wallet_id = $1", uid)[0][:] == (len(taken), sum(taken))


def test_concurrent_identical_deposits_act_once(aio, run, sql):
    uid = new_id()

    async def scenario() -> list[Any]:
        w = aio.wallet(uid)
        await w.deposit(10, reference_id="warm-up")
        return await asyncio.gather(
            *(w.deposit(5_000, reference_id="dep-same") for _ in range(50)),
            return_exceptions=True,
        )

    answers = run(scenario())
    assert answers == [Balance(5_010, 5_010, 0)] * 50
    assert run(aio.wallet(uid).balance()) == Balance(5_010, 5_010, 0)
    assert sql("select count(*) as n from wallets.operations where wallet_id = $1 "
               "and reference_id = 'dep-same'", uid)[0]["n"] == 1
    assert stored(sql, uid) == (5_010, 0)


def test_concurrent_identical_deposits_of_a_new_wallet_act_once(aio, run, sql):
    """The same, on a wallet whose first ever message is the replayed one."""
    uid = new_id()

    async def scenario() -> list[Any]:
        w = aio.wallet(uid)
        return await asyncio.gather(
            *(w.deposit(5_000, reference_id="dep-same") for _ in range(50)),
            return_exceptions=True,
        )

    assert run(scenario()) == [Balance(5_000, 5_000, 0)] * 50
    assert op_count(sql, uid) == 1
    assert stored(sql, uid) == (5_000, 0)


# -- passivation -------------------------------------------------------------------------------


def test_idle_passivation_keeps_state(wallet, aio, run, settings, sql):
    uid = new_id()
    host = aio.routers["wallets"].host_of(uid)
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    assert host_entities(aio, run, host) == 1
    started = time.monotonic()
    idle_seconds = settings.runtime.idle_seconds
    wait_until(lambda: host_entities(aio, run, host) == 0, timeout=idle_seconds * 4,
               interval=0.1, what="idle passivation")
    assert time.monotonic() - started >= settings.runtime.idle_seconds - 1  # not before it was idle
    assert w.balance() == Balance(1_000, 700, 300)
    assert host_entities(aio, run, host) == 1
    with pytest.raises(InsufficientFunds):
        w.withdraw(701, reference_id="w-1")
    assert w.commit("bet-1", amount=250) == Balance(750, 750, 0)
    assert stored(sql, uid) == (750, 0)


def test_passivate_all_keeps_state(wallet, aio, run, sql):
    uid = new_id()
    host = aio.routers["wallets"].host_of(uid)
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    w.reserve(100, reference_id="bet-2", timeout_s=600)
    assert run(_passivate_all(aio)) >= 1
    assert host_entities(aio, run, host) == 0
    assert w.balance() == Balance(1_000, 600, 400)
    assert w.release("bet-2") == Balance(1_000, 700, 300)
    assert w.commit("bet-1") == Balance(700, 700, 0)
    assert w.deposit(5, reference_id="d-2") == Balance(705, 705, 0)
    assert stored(sql, uid) == (705, 0)


# -- crashes inside an entity ------------------------------------------------------------------


def test_many_calls_answer_in_order_with_each_outcome(aio, run, sql):
    """`call_many` (how a market reserves and commits a cycle's stakes): one outcome per
    message, in the order sent, refusals among them, across every host."""
    users = [new_id() for _ in range(40)]
    router = aio.routers["wallets"]
    assert len({router.host_of(u) for u in users}) == len(router.handles)

    async def send() -> list[tuple[bool, Any]]:
        await asyncio.gather(*(aio.wallet(u).deposit(100, "d-1") for u in users[::2]))
        return await router.call_many([(u, Withdraw(60, "w-1")) for u in users])

    async def send_nothing() -> list[tuple[bool, Any]]:
        return await router.call_many([])

    outcomes = run(send())
    assert [ok for ok, _ in outcomes] == [i % 2 == 0 for i in range(len(users))]
    for i, (ok, value) in enumerate(outcomes):
        assert value == Balance(40, 40, 0) if ok else isinstance(value, InsufficientFunds), i
    assert run(send_nothing()) == []


@pytest.mark.timeout(60)
def test_a_message_that_cannot_be_encoded_is_refused_and_sends_nothing(aio, run, sql):
    uid = new_id()

    async def send() -> Any:
        return await aio.routers["wallets"].call(uid, Deposit(lambda: 5, "dep-1"))  # no pickle

    with pytest.raises(InvalidInput):
        run(send())
    assert op_count(sql, uid) == 0


def test_entity_crash_fails_only_that_call_and_rebuilds_from_postgres(aio, run, sql):
    router = aio.routers["wallets"]
    uid = new_id()
    host = router.host_of(uid)
    other = id_on_host(aio, host, {uid})
    handle = router.handles[host]
    pid_before = ray.get(handle.pid.remote())

    async def setup() -> None:
        await aio.wallet(uid).deposit(1_000, reference_id="d-1")
        await aio.wallet(uid).reserve(200, reference_id="bet-1")
        await aio.wallet(other).deposit(50, reference_id="d-1")

    run(setup())
    assert host_entities(aio, run, host) == 2

    async def deliver(batch: list[tuple[str, Any]]) -> list[Any]:
        # Straight to the host, pickled by value: `ExplodingAmount` lives in this test
        # module, which the host cannot import (the router sends plain pickle).
        payload = encode_batch(batch, dumps=ray.cloudpickle.dumps)
        outcomes = decode_outcomes(await handle.call.remote(payload))
        return [value for _, value in outcomes]

    # A valid-looking amount whose arithmetic blows up inside the handler.
    (crashed,) = run(deliver([(uid, Deposit(ExplodingAmount(5), "crash-1"))]))
    assert isinstance(crashed, EntityCrashed)
    # The crashed entity is dropped (right after its cycle, which may finish just after
    # the error reached us) ...
    wait_until(lambda: host_entities(aio, run, host) == 1, timeout=5,
               what="the crashed entity to be dropped")
    assert stored(sql, uid) == (800, 200)
    assert run(aio.wallet(uid).balance()) == Balance(1_000, 800, 200)  # ... and rebuilt
    assert host_entities(aio, run, host) == 2

    # One batch: ops for the same wallet before and after the crash, and another wallet.
    before, crashed, after, elsewhere = run(deliver([
        (uid, Deposit(10, "d-2")),
        (uid, Deposit(ExplodingAmount(5), "crash-2")),
        (uid, Deposit(20, "d-3")),
        (other, Deposit(5, "d-2")),
    ]))
    assert before == Balance(1_010, 810, 200)
    assert isinstance(crashed, EntityCrashed)
    assert after == Balance(1_030, 830, 200)
    assert elsewhere == Balance(55, 55, 0)
    assert stored(sql, uid) == (830, 200)
    assert run(aio.wallet(uid).balance()) == Balance(1_030, 830, 200)
    assert run(aio.wallet(uid).commit("bet-1")) == Balance(830, 830, 0)
    assert run(aio.wallet(other).balance()) == Balance(55, 55, 0)
    assert sql("select count(*) as n from wallets.operations "
               "where reference_id like 'crash-%'")[0]["n"] == 0
    assert ray.get(handle.pid.remote()) == pid_before


# The host must unpickle `ExplodingAmount`, defined here, where tests/ is not importable.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ExplodingAmount(int):
    """Passes validation (a positive int) but raises when the handler adds it: a stand-in
    for a bug in a handler."""

    def __radd__(self, other: object) -> int:
        raise RuntimeError("boom")


# -- reference ids and resolution keys -------------------------------------------------------


def test_a_reference_id_cannot_block_a_reservations_resolution(wallet, sql):
    """A reservation's commit/release is keyed `resolve:<reference>` in the same namespace
    as ordinary reference ids, which `validate` lets callers spell too. An unrelated
    deposit whose reference is `resolve:bet-1` must not resolve (or block) bet-1.
    BUG: commit answers ReservationResolved ("already deposit") and the 300 stay held."""
    uid = new_id()
    w = wallet(uid)
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    assert w.deposit(10, reference_id="resolve:bet-1") == Balance(1_010, 710, 300)
    assert w.commit("bet-1") == Balance(710, 710, 0)
    assert stored(sql, uid) == (710, 0)


def test_a_resolution_does_not_take_an_unrelated_reference_id(wallet):
    """The other direction: after bet-1 is committed, the fresh reference `resolve:bet-1`
    must be usable. BUG: IdempotencyConflict although no deposit was ever made with it."""
    w = wallet(new_id())
    w.deposit(1_000, reference_id="d-1")
    w.reserve(300, reference_id="bet-1")
    w.commit("bet-1")
    assert w.deposit(10, reference_id="resolve:bet-1") == Balance(710, 710, 0)


def test_a_reference_id_cannot_poison_a_reservations_expiry(aio, run, sql):
    """With a time-out, the same collision is worse: once the reservation is due, every
    cycle that touches the wallet tries to insert a second `resolve:bet-1` operation and
    fails its whole commit (UniqueViolation on operations_pkey -> RetryCycle, rerun, same
    again), so the reservation never expires and the wallet, and whatever shares its
    cycles, gets no answer or a stale one."""
    uid = new_id()
    other = id_on_host(aio, aio.routers["wallets"].host_of(uid), {uid})

    async def setup() -> None:
        w = aio.wallet(uid)
        await w.deposit(1_000, reference_id="d-1")
        await w.reserve(300, reference_id="bet-1", timeout_s=1)
        await w.deposit(10, reference_id="resolve:bet-1")

    run(setup())
    wait_until(lambda: sql("select count(*) as n from wallets.pending "
                           "where wallet_id = $1 and expires_at > now()", uid)[0]["n"] == 0,
               timeout=10, what="the reservation to fall due")

    async def same_cycle() -> list[Any]:
        calls = asyncio.gather(aio.wallet(uid).balance(),
                               aio.wallet(other).deposit(5, reference_id="d-1"),
                               return_exceptions=True)
        try:
            return await asyncio.wait_for(calls, CALL_TIMEOUT_S)
        except TimeoutError:
            return ["no answer (the host reruns the failing cycle forever)"]

    assert run(same_cycle()) == [Balance(1_010, 1_010, 0), Balance(5, 5, 0)]


# -- passivation racing a cycle -----------------------------------------------------------------


def test_passivation_during_a_cycle_neither_fails_nor_corrupts_it(aio, run, sql):
    """Passivation (by age, or `passivate_all`) runs on the host's loop while a cycle
    awaits PostgreSQL; it must not drop an entity the cycle is working on, and a cycle
    that fails must not leave unpersisted changes in memory.

    Regression guard (actors/runtime.py): passivation once dropped entities a running
    cycle had taken out of the queue, failing the cycle, and a failed cycle kept its
    unpersisted changes in memory, so a retry applied them twice."""
    router = aio.routers["wallets"]
    host = 0
    handle = router.handles[host]
    deposits: dict[str, int] = {}
    failures: Counter = Counter()

    async def attempt(n: int, delay: float) -> list[tuple[str, Any]]:
        activated = id_on_host(aio, host)
        await aio.wallet(activated).deposit(100, reference_id="seed")
        deposits[activated] = 100
        fresh = [id_on_host(aio, host) for _ in range(400)]
        # New wallets first (the cycle loads them), then one already activated.
        batch = [(u, Deposit(10, f"dep-{n}")) for u in fresh] + [(activated, Deposit(1, "dep"))]
        answer = handle.call.remote(encode_batch(batch))
        await asyncio.sleep(delay)
        passivated = handle.passivate_all.remote()  # one, at a different moment each time
        outcomes = decode_outcomes(await answer)
        await passivated
        for (uid, message), (ok, value) in zip(batch, outcomes, strict=True):
            deposits[uid] = deposits.get(uid, 0) + message.amount
            if not ok:
                failures[type(value).__name__] += 1
        # What a client does with an error: retry with the same reference id.
        return [(uid, message) for (uid, message), (ok, _) in zip(batch, outcomes, strict=True)
                if not ok]

    async def scenario() -> None:
        for n in range(30):
            retry = await attempt(n, delay=(n % 15) * 0.0005)
            if retry:
                await asyncio.gather(*(aio.wallet(uid).deposit(m.amount, m.reference_id)
                                       for uid, m in retry))
                break

    run(scenario())
    rows = {r["id"]: r["available"] for r in sql(
        "select user_id::text as id, available from wallets.wallets")}
    wrong = {u: (rows.get(u), amount) for u, amount in deposits.items() if rows.get(u) != amount}
    assert not wrong, (f"{len(wrong)} wallets hold other than their deposits "
                       f"(stored, deposited), e.g. {list(wrong.items())[:3]}; "
                       f"failed calls: {dict(failures)}")
    assert not failures, f"deposits failed while the host passivated: {dict(failures)}"


def test_router_batches_grow_with_load_not_with_a_timer(aio, run):
    """An idle router sends a message at once, in a call of its own; messages that come
    while a host's calls are all under way wait, and travel together in its next call."""
    router = aio.routers["wallets"]
    users = [str(uuid.uuid4()) for _ in range(300)]

    async def lone_then_burst() -> tuple[int, int]:
        lone = router.call(users[0], GetBalance())
        assert router.in_flight[router.host_of(users[0])] == 1  # no timer to wait for
        await lone
        before = router.batches_sent
        answers = [router.call(u, GetBalance()) for u in users]
        waiting = sum(len(buffer) for buffer in router.buffers.values())
        await asyncio.gather(*answers)
        return waiting, router.batches_sent - before

    waiting, calls = run(lone_then_burst())
    free = len(router.handles) * router.calls_in_flight
    assert waiting >= len(users) - free
    # per host: one call per free slot at once, then one for everything that waited
    assert calls <= free + len(router.handles), calls


def test_a_wallet_written_under_its_activation_fails_the_cycle_whole(wallet, sql):
    """The cycle's one statement updates a wallet only at the sequence its activation
    loaded: if another writer moved it, nothing of the cycle is stored, the caller is
    told to retry, and the wallet comes back from PostgreSQL."""
    uid = new_id()
    w = wallet(uid)
    w.deposit(100, "first")
    sql("update wallets.wallets set seq = seq + 1 where user_id = $1", uid)
    with pytest.raises(Unavailable, match="StaleActivation"):
        w.deposit(50, "while-stale")
    assert op_count(sql, uid) == 1 and stored(sql, uid) == (100, 0)
    assert w.deposit(50, "after") == Balance(150, 150, 0)
    assert op_count(sql, uid) == 2


def test_a_stuck_statement_fails_its_cycle_within_the_call_deadline(
    wallet, aio, run, database_url, settings
):
    """A host's statements are bounded by the call deadline: a commit stuck behind a
    lock fails its cycle, and the host goes on serving its other wallets while the
    lock is still held, instead of holding every cycle for ever. The stuck deposit's
    retry with the same reference id acts once."""
    uid = new_id()
    w = wallet(uid)
    w.deposit(100, "first")
    beside = id_on_host(aio, aio.routers["wallets"].host_of(uid), exclude={uid})
    bound = settings.runtime.call_deadline_s + 10

    async def lock_the_wallet() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url)
        await conn.execute("begin")
        await conn.execute("select 1 from wallets.wallets where user_id = $1 for update", uid)
        return conn

    holder = run(lock_the_wallet())
    try:
        with pytest.raises(Unavailable):
            run(asyncio.wait_for(aio.wallet(uid).deposit(50, "stuck"), bound))
        answer = run(asyncio.wait_for(aio.wallet(beside).deposit(10, "beside"), bound))
        assert answer == Balance(10, 10, 0)
    finally:
        run(holder.execute("rollback"))
        run(holder.close())
    assert w.deposit(50, "stuck") == Balance(150, 150, 0)


def test_a_paused_host_fails_its_calls_within_the_call_deadline(wallet, aio, run, settings):
    """A host that is alive but answers nothing (here: SIGSTOPped) fails its callers'
    calls `Unavailable` within the call deadline instead of leaving them waiting; the
    retry with the same reference id acts once."""
    uid = new_id()
    w = wallet(uid)
    w.deposit(100, "first")
    router = aio.routers["wallets"]
    pid = ray.get(router.handles[router.host_of(uid)].pid.remote(), timeout=30)
    sigstop(pid)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer in time"):
            run(asyncio.wait_for(aio.wallet(uid).deposit(50, "paused"),
                                 settings.runtime.call_deadline_s + 10))
        assert time.monotonic() - started < settings.runtime.call_deadline_s + 5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert w.deposit(50, "paused") == Balance(150, 150, 0)
