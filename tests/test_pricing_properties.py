"""Properties of the odds arithmetic (actors.pricing), checked with Hypothesis.

No Ray or PostgreSQL: pure functions. Exact arithmetic (Fraction) is the reference.
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors.markets import pricing

SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
EPS = 1e-9

# Opening odds 1.05..20.00 on the two-decimal ladder, 2-8 selections.
opening_odds = st.lists(st.integers(105, 2000), min_size=2, max_size=8).map(
    lambda xs: {f"s{i}": x for i, x in enumerate(xs)}
)


def liability_steps(n_max: int = 40, amount_max: int = 2_000_000):
    """(selection index, liability increase) pairs; indices are taken modulo the size."""
    return st.lists(
        st.tuples(st.integers(0, 7), st.integers(1, amount_max)), min_size=1, max_size=n_max
    )


def overround(odds: dict[str, int]) -> float:
    return sum(100 / o for o in odds.values())


def on_ladder(odds: dict[str, int]) -> None:
    for key, o in odds.items():
        assert isinstance(o, int), (key, o)  # hundredths: two decimals exactly
        assert pricing.MIN_ODDS <= o <= pricing.MAX_ODDS, (key, o)


def unclamped_bound(odds: dict[str, int], target: float) -> None:
    """For odds not clamped at the top of the ladder, odds_i = floor(100/q_i)/100 gives
    odds_i + 0.01 > 1/q_i, so 1/(odds_i + 0.01) < q_i and the sum of these over such
    selections is below sum(q) = R. Hence sum(1/odds) < R * (1 + 0.01/1.01) +
    0.001 * (selections at 1000.00)."""
    uncapped = [o for o in odds.values() if o < pricing.MAX_ODDS]
    assert sum(100 / (o + 1) for o in uncapped) < target + EPS, odds
    capped = len(odds) - len(uncapped)
    assert overround(odds) < target * (1 + 1 / 101) + 0.001 * capped + EPS, odds


@SETTINGS
@given(opening_odds, liability_steps())
def test_fixed_odds_backing_a_selection_never_lengthens_it(odds, steps):
    model = pricing.FixedOddsModel.from_odds(odds)
    keys = list(odds)
    liability = dict.fromkeys(keys, 0)
    current = model.price(liability)
    assert current == odds  # a new book shows the odds it was opened with
    for index, amount in steps:
        key = keys[index % len(keys)]
        liability[key] += amount
        after = model.price(liability)
        on_ladder(after)
        assert after[key] <= current[key], (key, current, after)
        current = after


@SETTINGS
@given(opening_odds, liability_steps(), st.one_of(st.none(), st.integers(100, 130)))
def test_fixed_odds_rounding_only_adds_margin(odds, steps, margin_pct):
    """While no selection is clamped at 1.01, sum(1/odds) >= R (rounding down the odds
    only adds margin) and stays within the bound derived for unclamped odds."""
    model = pricing.FixedOddsModel.from_odds(
        odds, overround=None if margin_pct is None else margin_pct / 100
    )
    keys = list(odds)
    liability = dict.fromkeys(keys, 0)
    for index, amount in [(0, 0), *steps]:
        liability[keys[index % len(keys)]] += amount
        prices = model.price(liability)
        on_ladder(prices)
        if min(prices.values()) == pricing.MIN_ODDS:
            break  # the floor of the ladder: see the clamped test below
        assert overround(prices) >= model.overround - EPS, (model.overround, prices)
        unclamped_bound(prices, model.overround)


@SETTINGS
@given(opening_odds, liability_steps(n_max=60, amount_max=20_000_000))
def test_fixed_odds_margin_holds_when_the_favourite_hits_the_floor(odds, steps):
    """The book's promise (pricing docstring): its margin stays at or above R. When
    liability drives a selection's fair price below 1.01 the ladder's floor lengthens
    it to 1.01, which gives back margin: sum(1/odds) may fall below R and even below 1
    (a sure win for a bettor backing every selection)."""
    model = pricing.FixedOddsModel.from_odds(odds)
    keys = list(odds)
    liability = dict.fromkeys(keys, 0)
    for index, amount in steps:
        liability[keys[index % len(keys)]] += amount
        prices = model.price(liability)
        assert overround(prices) >= model.overround - EPS, (model.overround, prices)


def test_fixed_odds_floor_example():
    """A realistic case of the property above: a 1.90/1.90 two-way book (R = 1.0526)
    after 100,000.00 of liability on home: home is clamped at 1.01 and the book's
    margin has shrunk to 3.8% (sum(1/odds) = 1.0379); at 600,000.00 it is 0.9987 < 1,
    a guaranteed profit for whoever backs both sides."""
    model = pricing.FixedOddsModel.from_odds({"home": 190, "away": 190})
    for liability in (10_000_000, 60_000_000):
        prices = model.price({"home": liability, "away": 0})
        assert overround(prices) >= model.overround - EPS, (liability, prices)


@SETTINGS
@given(
    st.lists(st.integers(101, 100_000), min_size=2, max_size=8),
    st.lists(st.integers(0, 50_000_000), min_size=8, max_size=8),
    st.lists(st.integers(101, 100_000), min_size=2, max_size=8),
)
def test_fixed_odds_set_by_hand_shows_exactly_the_odds_given(opening, liab, by_hand):
    keys = [f"s{i}" for i in range(len(opening))]
    model = pricing.FixedOddsModel.from_odds(dict(zip(keys, opening, strict=True)))
    liability = dict(zip(keys, liab, strict=False))
    # The operator names some selections; the others keep the odds they show now.
    shown = model.price(liability)
    wanted = dict(shown)
    for key, o in zip(keys, by_hand, strict=False):
        wanted[key] = o
    rebased = pricing.FixedOddsModel.from_odds(wanted, liability=liability)
    assert rebased.price(liability) == wanted
    # ... and from there, backing a selection still never lengthens it.
    key = keys[0]
    more = {**liability, key: liability[key] + 500_000}
    assert rebased.price(more)[key] <= wanted[key]


@SETTINGS
@given(
    st.lists(st.integers(1, 10_000_000), min_size=1, max_size=60),  # winners' stakes
    st.lists(st.integers(1, 10_000_000), max_size=60),  # losers' stakes
    st.integers(0, 5_000),  # takeout, basis points
)
def test_pool_payouts_never_exceed_the_net_pool(winners, losers, takeout_bp):
    pool = sum(winners) + sum(losers)
    winning = sum(winners)
    net = Fraction(pool * (pricing.BASIS - takeout_bp), pricing.BASIS)
    payouts = [pricing.pool_payout(s, pool, winning, takeout_bp) for s in winners]
    for stake, paid in zip(winners, payouts, strict=True):
        exact = Fraction(stake) * net / winning
        assert paid <= exact < paid + 1  # each rounded down to the minor unit
    assert sum(payouts) <= net
    assert net - sum(payouts) < len(winners)  # at most one minor unit each to the house


@SETTINGS
@given(st.lists(st.integers(0, 10_000_000), min_size=2, max_size=8), st.integers(0, 5_000))
def test_pool_odds_are_the_net_pool_over_the_selection_rounded_down(stakes, takeout_bp):
    assume(sum(stakes) > 0)
    keys = [f"s{i}" for i in range(len(stakes))]
    odds = pricing.pool_odds(dict(zip(keys, stakes, strict=True)), takeout_bp)
    net = Fraction(sum(stakes) * (pricing.BASIS - takeout_bp), pricing.BASIS)
    for key, stake in zip(keys, stakes, strict=True):
        if stake == 0:
            assert odds[key] is None
            continue
        exact = int(net * 100 / stake)  # floor, in hundredths
        assert odds[key] == max(pricing.MIN_ODDS, min(pricing.MAX_ODDS, exact)), (key, stakes)


def _capped_plainly(weights: dict[str, float], overround: float) -> dict[str, float]:
    """The capping loop without its one-pass shortcut: the reference for it."""
    cap = 100 / pricing.MIN_ODDS
    capped: dict[str, float] = {}
    while True:
        free = {k: w for k, w in weights.items() if k not in capped}
        left = overround - cap * len(capped)
        total = sum(free.values())
        probs = {k: left * w / total for k, w in free.items()} if total > 0 else {}
        over = [k for k, q in probs.items() if q > cap]
        if not over:
            return {**probs, **capped}
        if len(capped) + len(over) == len(weights):
            return {
                **capped,
                **{k: cap for k in over},
                **{k: q for k, q in probs.items() if k not in over},
            }
        for k in over:
            capped[k] = cap


@SETTINGS
@given(opening_odds, liability_steps())
def test_fixed_odds_quick_price_is_the_capped_price(odds, steps):
    """The capping loop answers in one pass when no selection reaches the shortest
    price; it must give what the plain loop gives, in every case."""
    model = pricing.FixedOddsModel.from_odds(odds)
    keys = list(odds)
    liability = dict.fromkeys(keys, 0)
    for index, amount in steps:
        liability[keys[index % len(keys)]] += amount
        weights = {
            k: max(1e-6, model.base[k] + (liability[k] - model.offset[k]) / model.depth)
            for k in keys
        }
        reference = {
            k: pricing._snap_down(1 / q)
            for k, q in _capped_plainly(weights, model.overround).items()
        }
        assert model.price(liability) == reference
