"""The wire format of host calls: what crosses is what arrives, and registered types
cross as bare tuples (no constructor runs on either side)."""

from __future__ import annotations

import pickle
import pickletools
import uuid

import pytest

from actors import markets as book
from actors import wallets as w
from actors.errors import MarketNotOpen
from actors.runtime.wire import decode_batch, decode_outcomes, encode_batch, encode_outcomes

MESSAGES = [
    w.GetBalance(),
    w.Deposit(1_000, "dep-1"),
    w.Deposit(1_000, "dep-2", str(uuid.uuid4())),
    w.Withdraw(500, "wd-1"),
    w.Stake(100, "bet:2", str(uuid.uuid4()), str(uuid.uuid4())),
    w.Reserve(100, "bet:1", 30.0, confirm_held=True),
    w.Commit("bet:1", None, "market:x"),
    w.Release("bet:1"),
    w.Credit(190, "pay:1", "market:x", "payout"),
    w.Expire("bet:1"),
    book.PlaceBet(str(uuid.uuid4()), str(uuid.uuid4()), "home", 100, 190, "any"),
    book.CancelBet(str(uuid.uuid4()), str(uuid.uuid4())),
    book.Transition("close"),
    book.Settle("home"),
    book.SetOdds((("home", 210), ("away", 180))),
    book.Recover(stakes_only=True),
]
ANSWERS = [
    (True, w.Balance(1_000, 900, 100)),
    (True, book.BetRecord("b", "u", "m", "home", 100, 190, 190, "accepted", 0, 1.5, None)),
    (True, {"id": "m", "status": "open"}),
    (False, MarketNotOpen("the market is closed", status="closed")),
]


def _opcodes(payload: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(payload)}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_arrives_equal_and_of_its_own_type(message):
    batch = [(str(uuid.uuid4()), message)]
    payload = encode_batch(batch)
    ((_, arrived),) = decode_batch(payload)
    assert arrived == message and type(arrived) is type(message)
    assert not {"NEWOBJ", "NEWOBJ_EX", "REDUCE"} & _opcodes(payload)


def test_a_message_from_a_sender_older_than_a_field_arrives_with_its_default():
    """A process of the release before `key_id` sends a stake of three fields."""
    market = str(uuid.uuid4())
    older = [("user", tuple(w.Stake(100, "bet:3", market))[:3], w.Stake.wire_name)]
    ((_, arrived),) = decode_batch(pickle.dumps(older))
    assert arrived == w.Stake(100, "bet:3", market) and arrived.key_id is None


def test_answers_arrive_as_they_were_sent():
    payload = encode_outcomes(ANSWERS)
    arrived = decode_outcomes(payload)
    for (ok, value), (sent_ok, sent) in zip(arrived, ANSWERS, strict=True):
        assert ok == sent_ok and type(value) is type(sent)
        if isinstance(sent, Exception):
            assert (value.code, value.args, value.details) == (sent.code, sent.args, sent.details)
        else:
            assert value == sent
    # Only the error is rebuilt by a constructor; the records cross as bare tuples.
    plain_only = encode_outcomes(ANSWERS[:2])
    assert not {"NEWOBJ", "NEWOBJ_EX", "REDUCE"} & _opcodes(plain_only)
