"""The plain model of markets and bets that the stateful tests check the system against.

Shared by test_model_stateful.py (the actor runtime through the Python client) and
gateway/test_http_model.py (the HTTP surface). Money is integers of minor units and
odds integers of hundredths, as inside the system; the contract's rules are written
here once:

- fixed odds reuse `pricing.FixedOddsModel` (its own properties are tested in
  test_pricing_properties.py), fed the liabilities the model's bets imply;
- pool odds and payouts are computed from the contract's formula, exactly;
- a bet is refused for every reason that applies (`refusal_reasons`; the system may
  name any one of them);
- market transitions follow the contract: `open → suspended ⇄ open → closed →
  settled`, `void` from any state before `settled`, anything else
  `invalid_transition`, and settling a settled market `already_settled`.

Functions that move money return the credits they imply, `[(user, amount)]`; the
caller keeps the balances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from actors.markets import pricing

MIN_STAKE, MAX_STAKE, MAX_PAYOUT = 100, 20_000, 60_000
FIXED_ODDS = {"home": 210, "draw": 330, "away": 360}
POOL_KEYS = ("a", "b", "c")
TAKEOUT, TAKEOUT_BP = "0.1425", 1425
# How a bet names its price: not at all, or odds with a policy, now or stale.
POLICIES = ("omit", "exact", "exact_stale", "higher_below", "higher_above", "any")

# The contract: open -> suspended <-> open -> closed -> settled; void from any state
# before settled.
TRANSITIONS = {
    ("open", "suspend"): "suspended",
    ("suspended", "reopen"): "open",
    ("open", "close"): "closed",
    ("open", "void"): "void",
    ("suspended", "void"): "void",
    ("closed", "void"): "void",
}


@dataclass
class BetModel:
    id: str
    user: str
    market: str
    selection: str
    amount: int
    odds_x100: int | None
    potential: int | None
    status: str = "accepted"
    payout: int = 0


@dataclass
class MarketModel:
    id: str
    type: str
    keys: tuple[str, ...]
    status: str = "open"
    model: pricing.FixedOddsModel | None = None
    exposure: dict[str, int] = field(default_factory=dict)  # liability or pool
    bets: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, market_id: str, type: str) -> MarketModel:
        """A market as `selections(type)` and `limits()` create it."""
        if type == "fixed_odds":
            m = cls(market_id, type, tuple(FIXED_ODDS),
                    model=pricing.FixedOddsModel.from_odds(dict(FIXED_ODDS)))
        else:
            m = cls(market_id, type, POOL_KEYS)
        m.exposure = dict.fromkeys(m.keys, 0)
        return m

    def odds(self) -> dict[str, int | None]:
        if self.type == "fixed_odds":
            assert self.model is not None
            return self.model.price(self.exposure)
        net = Fraction(sum(self.exposure.values()) * (10_000 - TAKEOUT_BP), 10_000)
        return {
            k: (max(pricing.MIN_ODDS, min(pricing.MAX_ODDS, int(net * 100 / s))) if s else None)
            for k, s in self.exposure.items()
        }

    def exposure_of(self, bet: BetModel) -> int:
        return bet.amount if self.type == "pool" else bet.potential or 0


def selections(type: str) -> list[dict[str, str]]:
    """The `selections` a market of `type` is created with (odds as decimal strings)."""
    if type == "fixed_odds":
        return [{"key": k, "name": k, "odds": odds_text(o)} for k, o in FIXED_ODDS.items()]
    return [{"key": k, "name": k} for k in POOL_KEYS]


def odds_text(x100: int | None) -> str | None:
    """Odds as the contract writes them: "2.10"."""
    return None if x100 is None else f"{x100 // 100}.{x100 % 100:02d}"


def as_x100(odds: Decimal | str | None) -> int | None:
    return None if odds is None else int(Decimal(odds) * 100)


def requested_odds(policy: str, current: int | None) -> tuple[int | None, str | None]:
    """The odds (x100) and `accept_odds` a bet sends under `policy`."""
    if policy == "omit":
        return None, None
    base = current or 200
    return {
        "exact": (base, "exact"),
        "exact_stale": (base + 5, "exact"),
        "higher_below": (max(101, base - 5), "higher"),
        "higher_above": (base + 5, "higher"),
        "any": (base + 50, "any"),
    }[policy]


def refusal_reasons(m: MarketModel, key: str, amount: int, requested: int | None,
                    accept: str | None, available: int) -> set[str]:
    """Every error code that refuses this bet; empty when it is accepted."""
    current = m.odds().get(key)
    reasons = set()
    if m.status != "open":
        reasons.add("market_not_open")
    if key not in m.keys:
        reasons.add("invalid_input")
    if amount < MIN_STAKE:
        reasons.add("stake_too_low")
    if amount > MAX_STAKE:
        reasons.add("stake_too_high")
    if m.type == "fixed_odds" and key in m.keys:
        assert current is not None
        if requested is not None and (
            (accept == "exact" and requested != current)
            or (accept == "higher" and current < requested)
        ):
            reasons.add("odds_changed")
        if pricing.fixed_payout(amount, current) > MAX_PAYOUT:
            reasons.add("payout_too_high")
    if amount > available:
        reasons.add("insufficient_funds")
    return reasons


def accept(m: MarketModel, bet_id: str, user: str, key: str, amount: int) -> BetModel:
    """The bet the market takes at its current price (the stake leaves the balance)."""
    current = m.odds()[key]
    potential = None if m.type == "pool" else pricing.fixed_payout(amount, current)
    bet = BetModel(bet_id, user, m.id, key, amount, current, potential)
    m.bets.append(bet_id)
    m.exposure[key] += m.exposure_of(bet)
    return bet


def cancel(m: MarketModel, bet: BetModel) -> list[tuple[str, int]]:
    m.exposure[bet.selection] -= m.exposure_of(bet)
    bet.status, bet.payout = "cancelled", bet.amount
    return [(bet.user, bet.amount)]


def refund(m: MarketModel, bets: dict[str, BetModel], status: str) -> list[tuple[str, int]]:
    """Every accepted bet of `m` back to its owner, as `status` (void)."""
    credits = []
    for bet_id in m.bets:
        bet = bets[bet_id]
        if bet.status == "accepted":
            m.exposure[bet.selection] -= m.exposure_of(bet)
            bet.status, bet.payout = status, bet.amount
            credits.append((bet.user, bet.amount))
    return credits


def transition(m: MarketModel, action: str) -> tuple[str | None, str | None]:
    """(the status `action` leads to, None) or (None, the error code refusing it)."""
    target = TRANSITIONS.get((m.status, action))
    if target is not None:
        return target, None
    return None, "invalid_transition"


def settle_refusal(m: MarketModel, key: str) -> str | None:
    """The error code refusing to settle `m` with `key` as winner, or None."""
    if m.status == "settled":
        return "already_settled"
    if m.status != "closed":
        return "invalid_transition"
    if key not in m.keys:
        return "invalid_input"
    return None


def settle(m: MarketModel, bets: dict[str, BetModel], key: str) -> list[tuple[str, int]]:
    """Settle a closed market: winners paid, losers lost; a pool nobody backed the
    winner of is void (stakes back). Sets `m.status`; returns the credits."""
    accepted = [bets[b] for b in m.bets if bets[b].status == "accepted"]
    pool = sum(b.amount for b in accepted)
    winning = sum(b.amount for b in accepted if b.selection == key)
    if m.type == "pool" and winning == 0:
        m.status = "void"
        return refund(m, bets, "void")
    m.status = "settled"
    net = Fraction(pool * (10_000 - TAKEOUT_BP), 10_000)
    credits = []
    for bet in accepted:
        if bet.selection != key:
            bet.status = "lost"
            continue
        bet.status = "won"
        bet.payout = (
            int(Fraction(bet.amount) * net / winning) if m.type == "pool" else bet.potential or 0
        )
        if bet.payout:
            credits.append((bet.user, bet.payout))
    return credits


def set_odds(m: MarketModel, key: str, odds: int) -> None:
    """The operator's odds for `key`: the book re-based on the odds shown."""
    shown = {**m.odds(), key: odds}
    m.model = pricing.FixedOddsModel.from_odds(shown, liability=dict(m.exposure))
    assert m.odds() == shown


def set_odds_refusal(m: MarketModel) -> str | None:
    if m.type == "pool" or m.status in ("settled", "void"):
        return "invalid_transition"
    return None
