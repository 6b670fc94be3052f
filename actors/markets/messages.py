"""The odds entity's messages and answers, and the checks of a market's definition."""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from actors.errors import InvalidInput
from actors.money import check_amount, parse_odds
from actors.runtime import wire_type

from . import pricing
from .clock import to_datetime

ACCEPT_POLICIES = ("exact", "higher", "any")
TRANSITIONS = {
    "suspend": ({"open"}, "suspended"),
    "reopen": ({"suspended"}, "open"),
    "close": ({"open"}, "closed"),
    "void": ({"open", "suspended", "closed"}, "void"),
}

# -- messages --------------------------------------------------------------------


@wire_type
class RaffleTerms(NamedTuple):
    tickets: int
    ticket_price: int
    prize: int
    lottery: str | None
    # How long after closing a raffle waits for its lottery's draw before it is void.
    result_grace_s: int


@wire_type
class CreateMarket(NamedTuple):
    event_id: str
    name: str
    type: str
    selections: tuple[tuple[str, str, int | None], ...]  # (key, name, odds x100)
    takeout_bp: int
    min_stake: int
    max_stake: int
    max_payout: int | None
    overround: float | None = None
    # Epoch seconds; None: it stays open until an operator closes it (in play).
    closes_at: float | None = None
    in_play: bool = False
    raffle: RaffleTerms | None = None


@wire_type
class GetMarket(NamedTuple):
    pass


@wire_type
class Transition(NamedTuple):
    action: str


@wire_type
class CloseDue(NamedTuple):
    """Internal (the host's housekeeping): the market's `closes_at` has passed."""


@wire_type
class SetOdds(NamedTuple):
    odds: tuple[tuple[str, int], ...]


@wire_type
class Settle(NamedTuple):
    winner: str


@wire_type
class PlaceBet(NamedTuple):
    bet_id: str
    user_id: str
    selection: str
    amount: int
    odds_x100: int | None
    accept: str
    # Set when the bet id comes from an idempotency key: it tells a replay of the
    # same request from another request with that key, and the market keeps the
    # key's refusal for replays as it keeps its bet.
    request_hash: str | None = None


@wire_type
class CancelBet(NamedTuple):
    bet_id: str
    user_id: str


@wire_type
class MoneyMoved(NamedTuple):
    """Internal: record that `finish` (or recovery) moved these bets' money."""

    staked: tuple[str, ...] = ()
    returned: tuple[str, ...] = ()
    paid: tuple[str, ...] = ()


@wire_type
class ReturnStakes(NamedTuple):
    """Internal: stakes left open past their time-out, as `(bet id, user id, amount)`;
    the market keeps those of bets it has and returns the rest."""

    stakes: tuple[tuple[str, str, int], ...]


@wire_type
class Recover(NamedTuple):
    """Internal: resend the money moves of this market's unfinished bets (only those
    of its unstaked bets with `stakes_only`)."""

    stakes_only: bool = False


@wire_type
class BetRecord(NamedTuple):
    """A bet as the market answers it: plain values, cheap to send between processes
    (decimals and aware datetimes cost more to pickle than the rest of the answer).
    `view()` is the bet as the client API returns it."""

    id: str
    user_id: str
    market_id: str
    selection: str
    amount: int
    odds_x100: int | None
    potential_payout: int | None
    status: str
    payout: int
    placed_at: float
    settled_at: float | None
    # An answer to a replayed idempotency key: the first answer, sent again.
    replayed: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "market_id": self.market_id,
            "selection": self.selection,
            "amount": self.amount,
            "odds": pricing.x100_to_odds(self.odds_x100),
            "potential_payout": self.potential_payout,
            "status": self.status,
            "payout": self.payout,
            "placed_at": to_datetime(self.placed_at),
            "settled_at": to_datetime(self.settled_at),
        }


_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")
MARKET_TYPES = ("fixed_odds", "pool")  # raffles: `raffle.new_raffle_message`
DEFAULT_MIN_STAKE = 100
DEFAULT_MAX_STAKE = 1_000_000


def new_market_message(
    event_id: str,
    name: object,
    type: object,
    selections: object,
    overround: object,
    takeout: object,
    min_stake: int | None,
    max_stake: int | None,
    max_payout: int | None,
    *,
    closes_at: float | None = None,
    in_play: bool = False,
    now: float | None = None,
) -> CreateMarket:
    """Validate an operator's market definition into the entity's create message."""
    check_name_and_closing(name, closes_at, now)
    assert isinstance(name, str)
    if type not in MARKET_TYPES:
        raise InvalidInput("type must be fixed_odds or pool", field="type")
    if not isinstance(selections, list) or not 2 <= len(selections) <= 50:
        raise InvalidInput("a market needs 2 to 50 selections", field="selections")
    parsed = []
    for s in selections:
        if not isinstance(s, dict) or not _KEY.match(str(s.get("key", ""))):
            raise InvalidInput(
                "each selection needs a key of letters, digits, - or _", field="selections"
            )
        label = s.get("name") or s["key"]
        odds = s.get("odds")
        if type == "fixed_odds" and odds is None:
            raise InvalidInput(f"selection {s['key']} needs odds", field="selections")
        parsed.append(
            (
                s["key"],
                str(label)[:200],
                pricing.odds_to_x100(parse_odds(odds)) if type == "fixed_odds" else None,
            )
        )
    if len({k for k, _, _ in parsed}) != len(parsed):
        raise InvalidInput("selection keys must be unique", field="selections")
    takeout_bp = 0
    if type == "pool":
        fraction = _fraction(
            takeout if takeout is not None else "0", "takeout", upper=Decimal("0.5")
        )
        takeout_bp = int(fraction * pricing.BASIS)
    margin = None
    if overround is not None:
        margin = float(_fraction(overround, "overround", lower=Decimal("1"), upper=Decimal("2")))
    low = DEFAULT_MIN_STAKE if min_stake is None else check_amount(min_stake, field="min_stake")
    high = DEFAULT_MAX_STAKE if max_stake is None else check_amount(max_stake, field="max_stake")
    if low > high:
        raise InvalidInput("min_stake exceeds max_stake", field="min_stake")
    cap = None if max_payout is None else check_amount(max_payout, field="max_payout")
    return CreateMarket(
        event_id, name.strip(), str(type), tuple(parsed), takeout_bp, low, high, cap, margin,
        closes_at, bool(in_play),
    )


def check_name_and_closing(name: object, closes_at: float | None, now: float | None) -> None:
    """`closes_at` (epoch seconds) is when betting stops by itself; a market that would
    be closed at once is refused rather than created dead."""
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 200:
        raise InvalidInput("name must be 1-200 characters", field="name")
    if closes_at is not None and closes_at <= (time.time() if now is None else now):
        raise InvalidInput(
            "closes_at has passed (in_play: true keeps a market open after the start)",
            field="closes_at",
        )


def _fraction(
    value: object, field: str, lower: Decimal = Decimal(0), upper: Decimal = Decimal(1)
) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidInput(f"{field} must be a decimal", field=field) from exc
    if (
        not number.is_finite()
        or not lower <= number <= upper
        or number != number.quantize(Decimal("0.0001"))
    ):
        raise InvalidInput(
            f"{field} must lie in [{lower}, {upper}] with at most 4 places", field=field
        )
    return number
