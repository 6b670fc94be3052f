"""A Hypothesis state machine over the real cluster, checked against a plain model.

Rules: deposit, place a bet (fixed odds and pool markets; random stakes, too small
and too big included; every odds policy), cancel, suspend, reopen, close, settle,
void, set odds, open another market. After every step each user's balance, available
and reserved, and each market's status and odds, are those of the model; at the end
of each example every bet (status, price, payout), the pools, and each market's
account in the ledger match it too.

The model (tests/betting_model.py, shared with gateway/test_http_model.py) reuses
`pricing.FixedOddsModel`: here it checks that the market entity feeds it the right
liabilities through bets, cancellations, voids and odds set by hand. Pool odds and
payouts are computed there from the contract's formula, exactly. Transitions follow
the contract as test_markets.py (test_transition) pins them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from actors.errors import LootifyError
from tests import betting_model as model
from tests.betting_model import (
    MAX_PAYOUT,
    MAX_STAKE,
    MIN_STAKE,
    POLICIES,
    TAKEOUT,
    BetModel,
    MarketModel,
    as_x100,
)

USERS = 3
MAX_MARKETS = 6
INITIAL_DEPOSIT = 20_000

stakes = st.one_of(st.integers(MIN_STAKE, 3_000), st.integers(50, 40_000))


def test_markets_follow_the_model(lootify, aio, run, sql):
    seen: Counter[str] = Counter()  # what the examples exercised, printed at the end

    class Markets(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.users = [str(uuid.uuid4()) for _ in range(USERS)]
            self.available = dict.fromkeys(self.users, 0)
            self.deposits = 0
            for u in self.users:
                self._deposit(u, INITIAL_DEPOSIT)
            self.markets: list[MarketModel] = []
            self.bets: dict[str, BetModel] = {}
            tomorrow = datetime.now(UTC) + timedelta(days=1)
            self.event = lootify.create_event("Model FC x Cluster", "football", tomorrow)[
                "id"
            ]
            self._open_market("fixed_odds")
            self._open_market("pool")

        # -- helpers ---------------------------------------------------------

        def _open_market(self, type: str) -> None:
            view = lootify.create_market(
                self.event,
                "Winner" if type == "fixed_odds" else "Pool",
                type,
                model.selections(type),
                takeout=TAKEOUT if type == "pool" else None,
                min_stake=MIN_STAKE,
                max_stake=MAX_STAKE,
                max_payout=MAX_PAYOUT,
            )
            assert view["status"] == "open"
            self.markets.append(MarketModel.new(view["id"], type))

        def _market(self, index: int) -> MarketModel:
            return self.markets[index % len(self.markets)]

        def _credit(self, credits: list[tuple[str, int]]) -> None:
            for user, amount in credits:
                self.available[user] += amount

        @staticmethod
        def _attempt(call):
            try:
                return call(), None
            except LootifyError as exc:
                return None, exc

        # -- rules -----------------------------------------------------------

        def _deposit(self, u: str, amount: int) -> None:
            self.deposits += 1
            got = lootify.wallet(u).deposit(amount, reference_id=f"dep-{self.deposits}")
            self.available[u] += amount
            assert tuple(got) == (self.available[u], self.available[u], 0)

        @rule(user=st.integers(0, USERS - 1), amount=st.integers(1, 30_000))
        def deposit(self, user, amount):
            self._deposit(self.users[user], amount)

        bet_args = dict(
            market=st.integers(0, 100),
            anywhere=st.integers(0, 4),
            user=st.integers(0, USERS - 1),
            selection=st.integers(0, 12),
            amount=stakes,
            policy=st.sampled_from(POLICIES),
        )

        @rule(**bet_args)
        def place_bet(self, market, anywhere, user, selection, amount, policy):
            self._place(market, anywhere, user, selection, amount, policy)

        @rule(**bet_args)
        def place_another_bet(self, market, anywhere, user, selection, amount, policy):
            self._place(market, anywhere, user, selection, amount, policy)

        def _place(self, market, anywhere, user, selection, amount, policy):
            """Mostly on an open market; one time in five on any market."""
            open_ = [m for m in self.markets if m.status == "open"]
            choices = open_ if open_ and anywhere else self.markets
            m, u = choices[market % len(choices)], self.users[user]
            key = m.keys[selection % len(m.keys)] if selection < 12 else "nope"
            current = m.odds().get(key)
            requested, accept = model.requested_odds(policy, current)
            reasons = model.refusal_reasons(m, key, amount, requested, accept, self.available[u])
            bet_id = str(uuid.uuid4())
            odds_text = model.odds_text(requested)
            bet, err = self._attempt(
                lambda: lootify.place_bet(
                    u, m.id, key, amount, odds=odds_text, accept_odds=accept, bet_id=bet_id
                )
            )
            if reasons:
                assert err is not None and err.code in reasons, (reasons, err, bet)
                seen[f"bet refused: {err.code}"] += 1
                return
            seen[f"bet accepted: {m.type} {policy}"] += 1
            assert err is None, (err, m.status, key, amount, policy, current)
            assert bet["status"] == "accepted" and bet["amount"] == amount
            assert as_x100(bet["odds"]) == current
            placed = model.accept(m, bet_id, u, key, amount)
            assert bet["potential_payout"] == placed.potential
            self.bets[bet_id] = placed
            self.available[u] -= amount

        @precondition(lambda self: self.bets)
        @rule(pick=st.integers(0, 10_000), as_other=st.booleans())
        def cancel(self, pick, as_other):
            bet = list(self.bets.values())[pick % len(self.bets)]
            m = next(x for x in self.markets if x.id == bet.market)
            caller = bet.user
            if as_other:
                caller = next(u for u in self.users if u != bet.user)
            got, err = self._attempt(lambda: lootify.cancel_bet(caller, bet.id))
            if as_other:
                assert err is not None and err.code == "not_found", (got, err)
            elif bet.status == "cancelled":
                assert err is None and got["status"] == "cancelled", err
            elif m.status != "open":
                assert err is not None and err.code == "market_not_open", (got, err)
            else:
                assert err is None, err
                assert got["status"] == "cancelled"
                seen["bet cancelled"] += 1
                self._credit(model.cancel(m, bet))

        @rule(market=st.integers(0, 100))
        def close(self, market):
            """Close an open market that holds bets, if there is one (so settlements
            have something to pay)."""
            busy = [m for m in self.markets if m.status == "open" and m.bets]
            self._transition(busy[market % len(busy)] if busy else self._market(market), "close")

        @rule(
            market=st.integers(0, MAX_MARKETS - 1),
            action=st.sampled_from(["suspend", "reopen", "close", "void"]),
        )
        def transition(self, market, action):
            self._transition(self._market(market), action)

        def _transition(self, m: MarketModel, action: str) -> None:
            target, code = model.transition(m, action)
            got, err = self._attempt(lambda: getattr(lootify.market(m.id), action)())
            if target is None:
                assert err is not None and err.code == code, (m.status, action, got, err)
                return
            assert err is None, (m.status, action, err)
            assert got["status"] == target
            m.status = target
            if target == "void":
                self._credit(model.refund(m, self.bets, "void"))

        @rule(market=st.integers(0, 100), anywhere=st.integers(0, 4), winner=st.integers(0, 2))
        def settle(self, market, anywhere, winner):
            """Mostly a closed market; one time in five any market."""
            closed = [m for m in self.markets if m.status == "closed"]
            choices = closed if closed and anywhere else self.markets
            m = choices[market % len(choices)]
            key = m.keys[winner]
            got, err = self._attempt(lambda: lootify.market(m.id).settle(key))
            code = model.settle_refusal(m, key)
            if code is not None:
                assert err is not None and err.code == code, (m.status, got, err)
                return
            assert err is None, err
            accepted = [b for b in m.bets if self.bets[b].status == "accepted"]
            seen[f"settled {m.type}, {len(accepted)} bets"] += 1
            self._credit(model.settle(m, self.bets, key))
            assert got["status"] == m.status  # void: a pool nobody backed the winner of
            if m.status == "settled":
                assert got["winner"] == key

        @rule(
            market=st.integers(0, MAX_MARKETS - 1),
            selection=st.integers(0, 2),
            odds=st.integers(101, 2_000),
        )
        def set_odds(self, market, selection, odds):
            m = self._market(market)
            key = m.keys[selection]
            got, err = self._attempt(
                lambda: lootify.market(m.id).set_odds({key: model.odds_text(odds)})
            )
            code = model.set_odds_refusal(m)
            if code is not None:
                assert err is not None and err.code == code, (got, err)
                return
            assert err is None, err
            model.set_odds(m, key, odds)

        @precondition(lambda self: len(self.markets) < MAX_MARKETS)
        @rule(type=st.sampled_from(["fixed_odds", "pool"]))
        def open_market(self, type):
            self._open_market(type)

        # -- checks ----------------------------------------------------------

        @invariant()
        def cluster_matches_model(self):
            async def read():
                return await asyncio.gather(
                    *(aio.wallet(u).balance() for u in self.users),
                    *(aio.market(m.id).state() for m in self.markets),
                )

            got = run(read())
            for u, b in zip(self.users, got[:USERS], strict=True):
                assert tuple(b) == (self.available[u], self.available[u], 0), u
            for m, view in zip(self.markets, got[USERS:], strict=True):
                assert view["status"] == m.status, m.id
                shown = {s["key"]: as_x100(s["odds"]) for s in view["selections"]}
                assert shown == m.odds(), (m.type, m.status, m.exposure)

        def teardown(self):
            ids = [m.id for m in self.markets]
            rows = self._settled_rows(ids)
            assert set(rows) == set(self.bets)
            for bet_id, bet in self.bets.items():
                r = rows[bet_id]
                assert (r["user_id"], r["market_id"], r["selection"], r["amount"]) == (
                    bet.user,
                    bet.market,
                    bet.selection,
                    bet.amount,
                )
                assert (r["status"], r["payout"], r["odds_x100"], r["potential_payout"]) == (
                    bet.status,
                    bet.payout,
                    bet.odds_x100,
                    bet.potential,
                ), bet_id
                assert r["stake"] == "committed"
                assert r["payout_state"] == ("paid" if bet.payout else "none"), bet_id
            for m in self.markets:
                # pools and liabilities: what still stands (accepted, won, lost) per selection
                standing = dict.fromkeys(m.keys, 0)
                for bet_id in m.bets:
                    bet = self.bets[bet_id]
                    if bet.status in ("accepted", "won", "lost"):
                        standing[bet.selection] += m.exposure_of(bet)
                assert standing == m.exposure, m.id
                # the market's account: stakes in, payouts and refunds out
                stakes_in = sum(self.bets[b].amount for b in m.bets)
                paid_out = sum(self.bets[b].payout for b in m.bets)
                assert self._account(m.id) == stakes_in - paid_out, m.id
            for u in self.users:
                listed = {b["id"]: b for b in lootify.list_bets(u, limit=500)}
                mine = {i: b for i, b in self.bets.items() if b.user == u}
                assert set(listed) == set(mine)
                for bet_id, b in listed.items():
                    assert (b["status"], b["payout"]) == (mine[bet_id].status, mine[bet_id].payout)

        def _settled_rows(self, ids: list[str]) -> dict:
            deadline = time.monotonic() + 20
            while True:
                rows = sql(
                    "select id::text, user_id::text, market_id::text, selection, amount, "
                    "odds_x100, potential_payout, status, payout, stake, payout_state "
                    "from bets.bets where market_id = any($1::uuid[])",
                    ids,
                )
                if all(r["stake"] != "reserved" and r["payout_state"] != "owed" for r in rows):
                    return {r["id"]: r for r in rows}
                assert time.monotonic() < deadline, "money still moving after 20 s"
                time.sleep(0.05)

        def _account(self, market_id: str) -> int:
            return sql(
                "select coalesce(sum(amount), 0)::bigint as s "
                "from wallets.entries where account = $1",
                f"market:{market_id}",
            )[0]["s"]

    run_state_machine_as_test(
        Markets,
        settings=settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(sorted(seen.items())))
