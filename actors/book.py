"""A market's book: the odds entity's messages and state, and the validation of a
market's definition. The entity's behaviour (the bet saga, persistence) is in
`actors.market`."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from . import pricing
from .errors import InvalidInput
from .money import check_amount, parse_odds
from .wire import plain

ACCEPT_POLICIES = ("exact", "higher", "any")
TRANSITIONS = {
    "suspend": ({"open"}, "suspended"),
    "reopen": ({"suspended"}, "open"),
    "close": ({"open"}, "closed"),
    "void": ({"open", "suspended", "closed"}, "void"),
}

# -- messages --------------------------------------------------------------------


@plain
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


@plain
class GetMarket(NamedTuple):
    pass


@plain
class Transition(NamedTuple):
    action: str


@plain
class SetOdds(NamedTuple):
    odds: tuple[tuple[str, int], ...]


@plain
class Settle(NamedTuple):
    winner: str


@plain
class PlaceBet(NamedTuple):
    bet_id: str
    user_id: str
    selection: str
    amount: int
    odds_x100: int | None
    accept: str


@plain
class CancelBet(NamedTuple):
    bet_id: str
    user_id: str


@plain
class MoneyMoved(NamedTuple):
    """Internal: record that `finish` (or recovery) moved these bets' money."""

    staked: tuple[str, ...] = ()
    returned: tuple[str, ...] = ()
    paid: tuple[str, ...] = ()


# -- state -----------------------------------------------------------------------


class Bet:
    __slots__ = (
        "id",
        "user_id",
        "selection",
        "amount",
        "odds_x100",
        "potential",
        "status",
        "payout",
        "stake",
        "payout_state",
        "placed_at",
        "settled_at",
    )

    def __init__(
        self,
        id: str,
        user_id: str,
        selection: str,
        amount: int,
        odds_x100: int | None,
        potential: int | None,
        status: str = "accepted",
        payout: int = 0,
        stake: str = "reserved",
        payout_state: str = "none",
        placed_at: float | None = None,
        settled_at: float | None = None,
    ) -> None:
        self.id = id
        self.user_id = user_id
        self.selection = selection
        self.amount = amount
        self.odds_x100 = odds_x100
        self.potential = potential
        self.status = status
        self.payout = payout
        self.stake = stake
        self.payout_state = payout_state
        self.placed_at = placed_at if placed_at is not None else time.time()
        self.settled_at = settled_at

    def record(self, market_id: str) -> BetRecord:
        return BetRecord(
            self.id,
            self.user_id,
            market_id,
            self.selection,
            self.amount,
            self.odds_x100,
            self.potential,
            self.status,
            self.payout,
            self.placed_at,
            self.settled_at,
        )

    def view(self, market_id: str) -> dict[str, Any]:
        return self.record(market_id).view()


@plain
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


class Market:
    __slots__ = (
        "id",
        "event_id",
        "name",
        "type",
        "status",
        "keys",
        "names",
        "model",
        "takeout_bp",
        "min_stake",
        "max_stake",
        "max_payout",
        "winner",
        "version",
        "stored_version",
        "exposure",
        "odds",
        "bets",
        "unstaked",
        "settled_at",
    )

    def __init__(self, market_id: str) -> None:
        self.id = market_id
        self.event_id: str | None = None  # None: no such market yet
        self.version = 0
        self.stored_version = -1
        self.bets: dict[str, Bet] = {}
        # Ids of the bets whose stake is still reserved (see migration 0006).
        self.unstaked: set[str] = set()
        self.exposure: dict[str, int] = {}  # fixed odds: liability; pool: stakes
        self.odds: dict[str, int | None] = {}
        self.model: pricing.FixedOddsModel | None = None
        self.winner: str | None = None
        self.settled_at: float | None = None

    def reprice(self) -> None:
        if self.type == "pool":
            self.odds = pricing.pool_odds(self.exposure, self.takeout_bp)
        else:
            assert self.model is not None
            self.odds = self.model.price(self.exposure)

    def add_exposure(self, bet: Bet, sign: int) -> None:
        self.exposure[bet.selection] += sign * (
            bet.amount if self.type == "pool" else (bet.potential or 0)
        )

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "selections": [
                {"key": k, "name": n, "odds": pricing.x100_to_odds(self.odds[k])}
                for k, n in zip(self.keys, self.names, strict=True)
            ],
            "min_stake": self.min_stake,
            "max_stake": self.max_stake,
            "max_payout": self.max_payout,
            "winner": self.winner,
            "takeout_bp": self.takeout_bp if self.type == "pool" else None,
            "version": self.version,
        }

    def odds_view(self) -> dict[str, Any]:
        return {k: pricing.x100_to_odds(v) for k, v in self.odds.items()}


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def to_epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@plain
class Recover(NamedTuple):
    """Internal: resend the money moves of this market's unfinished bets (only those
    of its unstaked bets with `stakes_only`)."""

    stakes_only: bool = False


def pricing_json(m: Market) -> dict:
    if m.type == "pool":
        return {"model": "pool", "takeout_bp": m.takeout_bp}
    assert m.model is not None
    return m.model.to_json()


_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")
MARKET_TYPES = ("fixed_odds", "pool")
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
) -> CreateMarket:
    """Validate an operator's market definition into the entity's create message."""
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 200:
        raise InvalidInput("name must be 1-200 characters", field="name")
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
        event_id, name.strip(), str(type), tuple(parsed), takeout_bp, low, high, cap, margin
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
