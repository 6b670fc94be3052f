"""Odds arithmetic. Odds are integers of hundredths inside (2.10 -> 210) on a ladder
of two decimals from 1.01; money is integers of minor units.

Fixed odds: the book keeps its overround R = sum(1/odds) where the operator set it
and moves probability toward a selection as its liability grows:

    w_i = base_i + (liability_i - offset_i) / depth      q_i = R * w_i / sum(w)
    odds_i = floor(100 / q_i) / 100, at least 1.01

More liability on i raises w_i, hence q_i, hence never lengthens odds_i. Rounding
down keeps the book's margin at or above R. Setting odds by hand re-bases the model
on the odds shown (offsets := current liabilities).

Pool (parimutuel): odds_i = pool * (1 - takeout) / stake_i; winners share the pool
after takeout pro rata, rounded down to the minor unit; the rest stays with the house.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache

MIN_ODDS = 101
MAX_ODDS = 100_000
BASIS = 10_000  # takeout in basis points
DEFAULT_DEPTH = 1_000_000  # liability (minor units) that moves a weight by 1.0
_MIN_WEIGHT = 1e-6
_CAP = 100 / MIN_ODDS  # the highest implied probability on the ladder


def odds_to_x100(odds: Decimal) -> int:
    return int(odds * 100)


@cache  # the ladder is finite, and every bet's view asks
def x100_to_odds(x100: int | None) -> Decimal | None:
    return None if x100 is None else Decimal(x100).scaleb(-2)


# The tolerance is relative: long odds come from small differences of probabilities,
# whose float error grows with the odds.
_SNAP_TOLERANCE = 1 + 1e-9


def _snap_down(odds: float) -> int:
    # Comparisons, not min/max: this runs for every selection of every bet.
    x100 = int(odds * 100 * _SNAP_TOLERANCE)
    return MIN_ODDS if x100 < MIN_ODDS else MAX_ODDS if x100 > MAX_ODDS else x100


@dataclass
class FixedOddsModel:
    keys: list[str]
    base: dict[str, float]
    overround: float
    offset: dict[str, int]
    depth: int = DEFAULT_DEPTH

    @classmethod
    def from_odds(
        cls,
        odds: dict[str, int],
        liability: dict[str, int] | None = None,
        depth: int = DEFAULT_DEPTH,
        overround: float | None = None,
    ) -> FixedOddsModel:
        implied = {k: 100 / o for k, o in odds.items()}
        total = sum(implied.values())
        target = overround if overround is not None else total
        return cls(
            keys=list(odds),
            base={k: p / total for k, p in implied.items()},
            overround=target,
            offset=dict(liability or dict.fromkeys(odds, 0)),
            depth=depth,
        )

    def price(self, liability: dict[str, int]) -> dict[str, int]:
        base, offset, depth = self.base, self.offset, self.depth
        weights = {}
        for k in self.keys:
            w = base[k] + (liability[k] - offset[k]) / depth
            weights[k] = w if w > _MIN_WEIGHT else _MIN_WEIGHT
        return {k: _snap_down(1 / q) for k, q in _capped(weights, self.overround).items()}

    def to_json(self) -> dict:
        return {
            "model": "fixed_odds",
            "base": self.base,
            "overround": self.overround,
            "offset": self.offset,
            "depth": self.depth,
        }

    @classmethod
    def from_json(cls, keys: list[str], data: dict) -> FixedOddsModel:
        return cls(keys, data["base"], data["overround"], data["offset"], data["depth"])


def _capped(weights: dict[str, float], overround: float) -> dict[str, float]:
    """Implied probabilities `overround * w / sum(w)`, none above 1/1.01: a selection
    pushed past the shortest price keeps 1.01 and the margin it cannot carry is
    spread over the others by weight, so the book's overround holds."""
    cap = _CAP
    capped: dict[str, float] = {}
    free = weights  # the usual case (priced once per bet): one pass, nothing capped
    while True:
        left = overround - cap * len(capped)
        total = sum(free.values())
        probs = {k: left * w / total for k, w in free.items()} if total > 0 else {}
        over = [k for k, q in probs.items() if q > cap]
        if not over:
            return {**probs, **capped} if capped else probs
        if len(capped) + len(over) == len(weights):  # every price at the floor
            return {
                **capped,
                **{k: cap for k in over},
                **{k: q for k, q in probs.items() if k not in over},
            }
        for k in over:
            capped[k] = cap
        free = {k: w for k, w in weights.items() if k not in capped}


def pool_odds(stakes: dict[str, int], takeout_bp: int) -> dict[str, int | None]:
    total = sum(stakes.values())
    net = total * (BASIS - takeout_bp)
    return {k: (_snap_down(net / (BASIS * s)) if s else None) for k, s in stakes.items()}


def pool_payout(stake: int, pool: int, winner_stakes: int, takeout_bp: int) -> int:
    """One winner's share, rounded down: stake * pool * (1 - takeout) / winner_stakes."""
    return stake * pool * (BASIS - takeout_bp) // (winner_stakes * BASIS)


def fixed_payout(stake: int, odds_x100: int) -> int:
    return stake * odds_x100 // 100
