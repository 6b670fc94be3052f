"""The wallet's messages and answers, and the checks of their arguments.

`key_id`: an operation a client sent under an Idempotency-Key carries the key's id
(`gateway.idempotency.key_id`; a keyed bet's stake carries its bet id, which is that
id). A key is one request of its user, whatever the endpoint: the wallet takes one
operation per key id and refuses any other (idempotency_conflict). None: no key.
"""

from __future__ import annotations

import re
import string
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from actors.errors import InvalidInput
from actors.money import check_amount
from actors.runtime import wire_type

MAX_TIMEOUT_S = 7 * 24 * 3600
_ACCOUNT = re.compile(r"^(house|external|market:[0-9a-f-]{36})$")
_REFERENCE = re.compile(r"^[\w:.\-]{1,200}$")
_REFERENCE_ASCII = (string.ascii_letters + string.digits + "_:.-").encode()


@wire_type
class Balance(NamedTuple):
    balance: int
    available: int
    reserved: int


# -- messages --------------------------------------------------------------------


@wire_type
class GetBalance(NamedTuple):
    pass


@wire_type
class Deposit(NamedTuple):
    amount: int
    reference_id: str
    key_id: str | None = None

    def args(self) -> str:
        """The arguments a replay of this reference id must repeat."""
        return f"deposit|{self.amount}"


@wire_type
class Withdraw(NamedTuple):
    amount: int
    reference_id: str
    key_id: str | None = None

    def args(self) -> str:
        return f"withdraw|{self.amount}"


@wire_type
class Reserve(NamedTuple):
    amount: int
    reference_id: str
    timeout_s: float | None = None
    # A replay normally answers the first result; with this set, a replay of a
    # reservation that has since ended is refused (ReservationResolved), for callers
    # that go on to spend the money held.
    confirm_held: bool = False
    key_id: str | None = None

    def args(self) -> str:
        return f"reserve|{self.amount}|{self.timeout_s}"


@wire_type
class Commit(NamedTuple):
    reference_id: str
    amount: int | None = None  # None commits the whole reservation
    target: str = "house"

    def args(self) -> str:
        return f"commit|{self.amount}|{self.target}"


@wire_type
class Stake(NamedTuple):
    """A bet's stake, debited at once from the player's account to its market's. It
    stays open (`wallets.open_stakes`) until the market closes it (the host query
    `close_stakes`): it recorded the bet, or returned the stake."""

    amount: int
    reference_id: str
    market_id: str
    key_id: str | None = None

    def args(self) -> str:
        return f"stake|{self.amount}|{self.market_id}"


@wire_type
class Release(NamedTuple):
    reference_id: str

    def args(self) -> str:
        return "release"


@wire_type
class Credit(NamedTuple):
    amount: int
    reference_id: str
    source: str = "house"
    kind: str = "payout"  # or "bet_refund"

    def args(self) -> str:
        return f"credit|{self.amount}|{self.source}|{self.kind}"


@wire_type
class Expire(NamedTuple):
    reference_id: str

    def args(self) -> str:
        return "expire"


# Messages that resolve a reservation; they share its one key (see RESOLVE).
RESOLUTIONS = frozenset({Commit, Release, Expire})


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
    key_id = getattr(message, "key_id", None)
    if key_id is not None and not _is_uuid(key_id):
        raise InvalidInput("key_id must be a UUID", field="key_id")


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(value)  # type: ignore[arg-type]  # anything else is refused below
    except (TypeError, ValueError, AttributeError):
        return False
    return True


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


def _check_stake(message: Stake) -> None:
    _check_amounted(message)
    _check_account(f"market:{message.market_id}")


def _check_account(account: object) -> None:
    if not isinstance(account, str) or not _ACCOUNT.match(account):
        raise InvalidInput("account must be house, external or market:<id>", field="account")


_CHECKS: dict[type, Callable[[Any], None]] = {
    Deposit: _check_amounted,
    Withdraw: _check_amounted,
    Reserve: _check_reserve,
    Commit: _check_commit,
    Stake: _check_stake,
    Release: _check_reference,
    Expire: _check_reference,
    Credit: _check_credit,
}
