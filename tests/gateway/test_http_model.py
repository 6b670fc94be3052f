"""A Hypothesis state machine over the HTTP surface of the real Serve app, checked
against a plain model (issue 14: "a Hypothesis stateful test of the HTTP surface
against a model, run against the real stack and bounded in examples").

Players register, log in (right and wrong passwords, into the lockout), log out,
deposit and withdraw (valid and malformed amounts), place bets (fixed odds and pool;
stakes too small and too big, payouts too high, stale and malformed odds, unknown
selections and markets, markets not open) and cancel them (their own and others');
an operator suspends, reopens, closes, settles, voids and reprices markets, and a
player who tries is refused. Every money-moving POST goes with no `Idempotency-Key`,
a fresh one, a replay of an earlier one (the same body), or an earlier key with
another body. The model (tests/betting_model.py, shared with test_model_stateful.py)
predicts each answer's status and error code, replays included (status and body),
and every balance, bet and transaction. After every step no answer was a 5xx and
every balance is the model's; at the end of each example every bet and transaction
list is too, and the session's ledger audit runs after the test.

Keys are per user and kept with what they acted on: the replica's table for
deposits and withdrawals, the market for bets (README, "Bets"). The contract says a
key used again with another body is `409 idempotency_conflict`; a body the gateway
refuses as malformed (422) is refused before its key is looked at, and stores nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from actors.money import format_amount, parse_amount
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
    odds_text,
)
from tests.polling import wait_until

pytestmark = pytest.mark.cluster

MAX_USERS = 3
MAX_MARKETS = 4
INITIAL_DEPOSIT = 20_000
LOCKOUT_FAILURES = 5  # the contract: 5 failed logins for one email lock it out

STATUS = {
    "invalid_input": 422, "stake_too_low": 422, "stake_too_high": 422, "payout_too_high": 422,
    "insufficient_funds": 409, "market_not_open": 409, "odds_changed": 409,
    "idempotency_conflict": 409, "invalid_transition": 409, "already_settled": 409,
    "email_taken": 409, "not_found": 404, "unauthenticated": 401, "forbidden": 403,
    "rate_limited": 429,
}
# Refused by the gateway before anything acts (and before an Idempotency-Key is used).
BAD_AMOUNTS = ("0", "0.00", "-5.00", "1.234", "abc", "", "\uff15.00", " 5.00", "1e3",
               "10000000000.01", 10.5, None)
BAD_ODDS = ("abc", "0.50", "1.00", "2.123", "1000.01", "\uff12.10", 2.1)
KEY_MODES = ("none", "fresh", "replay", "other_body", "other_endpoint")
# Where a key is kept: the replica's table, or the market the bet went to.
KEEPER = {"/api/wallet/deposit": "gateway", "/api/wallet/withdraw": "gateway",
          "/api/bets": "market"}

stakes = st.one_of(st.integers(MIN_STAKE, 3_000), st.integers(50, 40_000))
oddities = st.sampled_from(("none",) * 8 + ("bad_amount", "bad_odds", "unknown_market"))


@dataclass
class Keyed:
    """What an Idempotency-Key acted on first, and its answer."""

    path: str
    body: Any
    status: int
    answer: Any


@dataclass
class Player:
    id: str
    email: str
    password: str
    reader: dict[str, str]  # a token never logged out: the checks read with it
    session: dict[str, str]  # the token the rules act with
    revoked: bool = False
    balance: int = 0
    failures: int = 0
    locked: bool = False
    keys: dict[str, Keyed] = field(default_factory=dict)
    transactions: Counter[tuple[str, str]] = field(default_factory=Counter)


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def bet_view(bet: BetModel) -> dict[str, Any]:
    """The contract's fields of a bet the model knows."""
    return {
        "id": bet.id, "market_id": bet.market, "selection": bet.selection,
        "amount": format_amount(bet.amount), "odds": odds_text(bet.odds_x100),
        "potential_payout": None if bet.potential is None else format_amount(bet.potential),
        "status": bet.status, "payout": format_amount(bet.payout),
    }


def test_http_surface_follows_the_model(api: httpx.Client, new_user) -> None:
    seen: Counter[str] = Counter()  # what the examples exercised, printed at the end
    op = new_user("operator")

    class Http(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.users: list[Player] = []
            self.markets: list[MarketModel] = []
            self.bets: dict[str, BetModel] = {}
            for _ in range(2):
                self._register()
            r = self._call("POST", "/api/events", op.headers, 201,
                           json={"name": "Model FC x HTTP", "category": "football",
                                 "starts_at": "2030-06-01T20:00:00Z"})
            self.event = r.json()["event"]["id"]
            self._open_market("fixed_odds")
            self._open_market("pool")

        # -- helpers ---------------------------------------------------------

        def _call(self, method: str, path: str, headers: dict[str, str] | None,
                  status: int, code: str | set[str] | None = None,
                  **kwargs: Any) -> httpx.Response:
            """One request; its answer must be `status` (and `code`), never a 5xx."""
            r = api.request(method, path, headers=headers, **kwargs)
            what = (method, path, kwargs.get("json"), r.status_code, r.text)
            assert r.status_code < 500, what
            assert r.status_code == status, (*what, "expected", status, code)
            if status >= 400:
                got = error_of(r)
                assert got in ({code} if isinstance(code, str) else code or {got}), (*what, code)
                seen[f"{method} {path.split('/')[2]}: {got}"] += 1
            return r

        def _register(self) -> Player:
            email = f"m{uuid.uuid4().hex[:12]}@example.com"
            password = "model " + uuid.uuid4().hex[:8]
            r = self._call("POST", "/api/auth/register", None, 201,
                           json={"email": email, "username": "model", "password": password})
            body = r.json()
            assert body["user"]["email"] == email and body["user"]["role"] == "player"
            reader = {"Authorization": f"Bearer {body['token']}"}
            r = self._call("POST", "/api/auth/login", None, 200,
                           json={"email": email, "password": password})
            u = Player(body["user"]["id"], email, password, reader,
                       {"Authorization": f"Bearer {r.json()['token']}"})
            self.users.append(u)
            self._move(u, "deposit", INITIAL_DEPOSIT, "none", 0)
            return u

        def _open_market(self, type: str) -> None:
            body = {"name": "Winner" if type == "fixed_odds" else "Pool", "type": type,
                    "selections": model.selections(type),
                    "min_stake": format_amount(MIN_STAKE), "max_stake": format_amount(MAX_STAKE),
                    "max_payout": format_amount(MAX_PAYOUT)}
            if type == "pool":
                body["takeout"] = TAKEOUT
            r = self._call("POST", f"/api/events/{self.event}/markets", op.headers, 201,
                           json=body)
            market = r.json()["market"]
            assert market["status"] == "open" and market["event_id"] == self.event
            self.markets.append(MarketModel.new(market["id"], type))

        def _market(self, index: int) -> MarketModel:
            return self.markets[index % len(self.markets)]

        def _credit(self, credits: list[tuple[str, int]], kind: str) -> None:
            by_id = {u.id: u for u in self.users}
            for user, amount in credits:
                by_id[user].balance += amount
                by_id[user].transactions[(kind, format_amount(amount))] += 1

        def _signed_out(self, u: Player, method: str, path: str, **kwargs: Any) -> bool:
            """A player whose session was logged out is refused, whatever they ask."""
            if not u.revoked:
                return False
            self._call(method, path, u.session, 401, "unauthenticated", **kwargs)
            return True

        def _key(self, u: Player, mode: str, pick: int,
                 path: str) -> tuple[str | None, Keyed | None]:
            """The Idempotency-Key a request sends under `mode`, and its record if used."""
            if mode == "none":
                return None, None
            same = [k for k, v in u.keys.items() if v.path == path]
            # Across deposits and withdrawals only: see test_a_key_is_one_request_everywhere.
            other = [k for k, v in u.keys.items()
                     if v.path != path and KEEPER[v.path] == KEEPER[path]]
            pool = {"replay": same, "other_body": same, "other_endpoint": other}.get(mode)
            if not pool:
                return f"k-{uuid.uuid4().hex[:16]}", None
            key = sorted(pool)[pick % len(pool)]
            return key, u.keys[key]

        def _keyed_answer(self, u: Player, method: str, path: str, key: str, first: Keyed,
                          body: Any) -> None:
            """A key used before: its first answer for the same request, else a conflict."""
            headers = {**u.session, "Idempotency-Key": key}
            if (first.path, first.body) != (path, body):
                self._call(method, path, headers, 409, "idempotency_conflict", json=body)
                seen[f"key reused: {path} after {first.path}"] += 1
                return
            r = self._call(method, path, headers, first.status, json=body)
            assert r.json() == first.answer, (r.json(), first.answer)
            if r.status_code < 400:
                assert r.headers.get("idempotent-replayed") == "true"
            seen[f"replayed: {path} {first.status}"] += 1

        # -- auth ------------------------------------------------------------

        @rule(user=st.integers(0, MAX_USERS - 1))
        def register(self, user):
            """A new player, or (once there are MAX_USERS) one more with a taken email."""
            if len(self.users) < MAX_USERS:
                self._register()
                return
            u = self.users[user % len(self.users)]
            self._call("POST", "/api/auth/register", None, 409, "email_taken",
                       json={"email": u.email.upper(), "username": "again",
                             "password": "whatever1"})

        @rule(user=st.integers(0, MAX_USERS - 1), right=st.booleans())
        def login(self, user, right):
            u = self.users[user % len(self.users)]
            body = {"email": u.email, "password": u.password if right else "wrong password"}
            if u.locked:
                self._call("POST", "/api/auth/login", None, 429, "rate_limited", json=body)
            elif not right:
                self._call("POST", "/api/auth/login", None, 401, "unauthenticated", json=body)
                u.failures += 1
                u.locked = u.failures >= LOCKOUT_FAILURES
            else:
                r = self._call("POST", "/api/auth/login", None, 200, json=body)
                assert r.json()["user"]["id"] == u.id
                u.session = {"Authorization": f"Bearer {r.json()['token']}"}
                u.revoked, u.failures = False, 0

        @rule(user=st.integers(0, MAX_USERS - 1))
        def logout(self, user):
            u = self.users[user % len(self.users)]
            if self._signed_out(u, "POST", "/api/auth/logout"):
                return
            r = self._call("POST", "/api/auth/logout", u.session, 204)
            assert r.content == b""
            u.revoked = True
            # Other replicas may honour it up to a second later (README, issue 14).
            wait_until(lambda: api.get("/api/auth/me", headers=u.session).status_code == 401,
                       timeout=3, what="the logged-out token refused")

        @rule(user=st.integers(0, MAX_USERS - 1))
        def me(self, user):
            u = self.users[user % len(self.users)]
            if not self._signed_out(u, "GET", "/api/auth/me"):
                r = self._call("GET", "/api/auth/me", u.session, 200)
                assert r.json()["user"] == {"id": u.id, "email": u.email, "username": "model",
                                            "role": "player"}

        # -- wallet ----------------------------------------------------------

        money = dict(
            user=st.integers(0, MAX_USERS - 1),
            amount=st.integers(1, 30_000),
            key_mode=st.sampled_from(KEY_MODES),
            pick=st.integers(0, 1_000),
            bad=st.one_of(st.none(), st.none(), st.none(), st.integers(0, len(BAD_AMOUNTS) - 1)),
        )

        @rule(**money)
        def deposit(self, user, amount, key_mode, pick, bad):
            self._move(self.users[user % len(self.users)], "deposit", amount, key_mode, pick, bad)

        @rule(**money)
        def withdraw(self, user, amount, key_mode, pick, bad):
            self._move(self.users[user % len(self.users)], "withdraw", amount, key_mode, pick, bad)

        def _move(self, u: Player, kind: str, amount: int, key_mode: str, pick: int,
                  bad: int | None = None) -> None:
            path = f"/api/wallet/{kind}"
            body = {"amount": format_amount(amount) if bad is None else BAD_AMOUNTS[bad]}
            key, first = self._key(u, key_mode, pick, path)
            if key_mode == "replay" and first is not None:
                body, bad = first.body, None
            if self._signed_out(u, "POST", path, json=body):
                return
            headers = u.session if key is None else {**u.session, "Idempotency-Key": key}
            if bad is not None:
                self._call("POST", path, headers, 422, "invalid_input", json=body)
                return
            if first is not None:
                self._keyed_answer(u, "POST", path, key, first, body)
                return
            minor = parse_amount(body["amount"])
            if kind == "withdraw" and minor > u.balance:
                r = self._call("POST", path, headers, 409, "insufficient_funds", json=body)
            else:
                r = self._call("POST", path, headers, 200, json=body)
                u.balance += minor if kind == "deposit" else -minor
                u.transactions[("deposit" if kind == "deposit" else "withdrawal",
                                body["amount"])] += 1
                assert r.json() == self._balance_view(u)
                seen[f"{kind} done"] += 1
            if key is not None:
                u.keys[key] = Keyed(path, body, r.status_code, r.json())

        def _balance_view(self, u: Player) -> dict[str, str]:
            b = format_amount(u.balance)
            return {"balance": b, "available": b, "reserved": "0.00", "currency": "BRL"}

        # -- bets ------------------------------------------------------------

        bet_args = dict(
            user=st.integers(0, MAX_USERS - 1),
            market=st.integers(0, 100),
            anywhere=st.integers(0, 4),
            selection=st.sampled_from((0, 1, 2) * 3 + (12,)),  # 12: no such selection
            amount=stakes,
            policy=st.sampled_from(POLICIES),
            oddity=oddities,
            bad=st.integers(0, 100),
            key_mode=st.sampled_from(KEY_MODES),
            pick=st.integers(0, 1_000),
        )

        @rule(**bet_args)
        def place_bet(self, **args):
            self._bet(**args)

        @rule(**bet_args)
        def place_another_bet(self, **args):  # bets are most of the traffic
            self._bet(**args)

        @rule(**bet_args)
        def place_a_third_bet(self, **args):
            self._bet(**args)

        def _bet(self, user, market, anywhere, selection, amount, policy, oddity, bad,
                 key_mode, pick):
            """Mostly on an open market; one time in five on any market; a used key with
            another body half the time to the market of its first bet."""
            u = self.users[user % len(self.users)]
            path = "/api/bets"
            key, first = self._key(u, key_mode, pick, path)
            open_ = [m for m in self.markets if m.status == "open"]
            choices = open_ if open_ and anywhere else self.markets
            m = choices[market % len(choices)]
            if key_mode == "other_body" and first is not None and pick % 2:
                m = next(x for x in self.markets if x.id == first.body["market_id"])
            key_name = m.keys[selection % len(m.keys)] if selection < 12 else "nope"
            requested, accept = model.requested_odds(policy, m.odds().get(key_name))
            body: dict[str, Any] = {"market_id": m.id, "selection": key_name,
                                    "amount": format_amount(amount)}
            if requested is not None:
                body |= {"odds": odds_text(requested), "accept_odds": accept}
            if oddity == "bad_amount":
                body["amount"] = BAD_AMOUNTS[bad % len(BAD_AMOUNTS)]
            elif oddity == "bad_odds":
                body |= {"odds": BAD_ODDS[bad % len(BAD_ODDS)], "accept_odds": "exact"}
            elif oddity == "unknown_market":
                body["market_id"] = str(uuid.uuid4())
                if first is not None:  # an unknown market answers 404, whatever the key
                    key, first = f"k-{uuid.uuid4().hex[:16]}", None
            if key_mode == "replay" and first is not None:
                body, oddity = first.body, "none"
            if self._signed_out(u, "POST", path, json=body):
                return
            headers = u.session if key is None else {**u.session, "Idempotency-Key": key}
            if oddity in ("bad_amount", "bad_odds"):
                self._call("POST", path, headers, 422, "invalid_input", json=body)
                return
            if oddity == "unknown_market":
                self._call("POST", path, headers, 404, "not_found", json=body)
                return
            if first is not None:
                self._keyed_answer(u, "POST", path, key, first, body)
                return
            r = self._place(u, m, body, headers, amount, requested, accept)
            if key is not None:
                u.keys[key] = Keyed(path, body, r.status_code, r.json())

        def _place(self, u: Player, m: MarketModel, body: dict, headers: dict[str, str],
                   amount: int, requested: int | None, accept: str | None) -> httpx.Response:
            key_name = body["selection"]
            reasons = model.refusal_reasons(m, key_name, amount, requested, accept, u.balance)
            if reasons:
                r = api.post("/api/bets", json=body, headers=headers)
                assert r.status_code < 500, r.text
                code = error_of(r)
                assert code in reasons and r.status_code == STATUS[code], (reasons, r.text)
                seen[f"bet refused: {code}"] += 1
                return r
            r = self._call("POST", "/api/bets", headers, 201, json=body)
            got = r.json()["bet"]
            bet = model.accept(m, got["id"], u.id, key_name, amount)
            assert got["id"] not in self.bets
            self.bets[bet.id] = bet
            u.balance -= amount
            u.transactions[("bet_stake", format_amount(amount))] += 1
            assert {k: got[k] for k in bet_view(bet)} == bet_view(bet), (got, bet)
            assert got["placed_at"] and got["settled_at"] is None
            seen[f"bet accepted: {m.type}"] += 1
            return r

        @rule(pick=st.integers(0, 10_000), who=st.sampled_from(["owner"] * 4 + ["other", "none"]))
        def cancel(self, pick, who):
            """A bet by its owner; someone else's, or no bet at all, is 404."""
            if not self.bets or who == "none":
                u = self.users[pick % len(self.users)]
                path = f"/api/bets/{'nope' if pick % 2 else uuid.uuid4()}"
                if not self._signed_out(u, "DELETE", path):
                    self._call("DELETE", path, u.session, 404, "not_found")
                return
            bet = list(self.bets.values())[pick % len(self.bets)]
            as_other = who == "other"
            m = next(x for x in self.markets if x.id == bet.market)
            owner = next(u for u in self.users if u.id == bet.user)
            caller = next((u for u in self.users if u.id != bet.user), owner) if as_other else owner
            path = f"/api/bets/{bet.id}"
            if self._signed_out(caller, "DELETE", path):
                return
            if caller is not owner:
                self._call("DELETE", path, caller.session, 404, "not_found")
            elif bet.status == "cancelled":
                r = self._call("DELETE", path, caller.session, 200)
                assert r.json()["bet"]["status"] == "cancelled"
            elif m.status != "open":
                self._call("DELETE", path, caller.session, 409, "market_not_open")
            else:
                r = self._call("DELETE", path, caller.session, 200)
                self._credit(model.cancel(m, bet), "bet_refund")
                assert {k: r.json()["bet"][k] for k in bet_view(bet)} == bet_view(bet)
                seen["bet cancelled"] += 1

        # -- the book --------------------------------------------------------

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
            path = f"/api/markets/{m.id}/{action}"
            if target is None:
                self._call("POST", path, op.headers, STATUS[code], code)
                return
            r = self._call("POST", path, op.headers, 200)
            assert r.json()["market"]["status"] == target
            m.status = target
            if target == "void":
                self._credit(model.refund(m, self.bets, "void"), "bet_refund")

        @rule(
            market=st.integers(0, MAX_MARKETS - 1),
            user=st.integers(0, MAX_USERS - 1),
            action=st.sampled_from(["suspend", "reopen", "close", "void", "settle", "odds"]),
        )
        def players_may_not_run_the_book(self, market, user, action):
            m, u = self._market(market), self.users[user % len(self.users)]
            method, body = ("PUT", {"odds": {m.keys[0]: "2.00"}}) if action == "odds" else (
                "POST", {"winner": m.keys[0]})
            path = f"/api/markets/{m.id}/{action}"
            if not self._signed_out(u, method, path, json=body):
                self._call(method, path, u.session, 403, "forbidden", json=body)

        @precondition(lambda self: any(m.status == "open" and m.bets for m in self.markets))
        @rule(market=st.integers(0, 100), pick=st.integers(0, 100))
        def close_and_settle(self, market, pick):
            """Close a market that holds bets and settle it, mostly for a selection
            someone backed (so that winners are paid)."""
            busy = [m for m in self.markets if m.status == "open" and m.bets]
            m = busy[market % len(busy)]
            self._transition(m, "close")
            backed = sorted({self.bets[b].selection for b in m.bets})
            self._settle(m, backed[pick % len(backed)] if pick % 4 else m.keys[pick % len(m.keys)])

        @rule(market=st.integers(0, 100), anywhere=st.integers(0, 4), winner=st.integers(0, 3))
        def settle(self, market, anywhere, winner):
            """Mostly a closed market; one time in five any market; now and then a
            winner that is no selection."""
            closed = [m for m in self.markets if m.status == "closed"]
            choices = closed if closed and anywhere else self.markets
            m = choices[market % len(choices)]
            self._settle(m, m.keys[winner] if winner < len(m.keys) else "nobody")

        def _settle(self, m: MarketModel, key: str) -> None:
            path = f"/api/markets/{m.id}/settle"
            code = model.settle_refusal(m, key)
            if code is not None:
                self._call("POST", path, op.headers, STATUS[code], code, json={"winner": key})
                return
            r = self._call("POST", path, op.headers, 200, json={"winner": key})
            accepted = [b for b in m.bets if self.bets[b].status == "accepted"]
            seen[f"settled {m.type}, {len(accepted)} bets"] += 1
            credits = model.settle(m, self.bets, key)
            self._credit(credits, "payout" if m.status == "settled" else "bet_refund")
            assert r.json()["market"]["status"] == m.status  # void: nobody backed the winner

        @rule(
            market=st.integers(0, MAX_MARKETS - 1),
            selection=st.integers(0, 2),
            odds=st.integers(101, 2_000),
        )
        def set_odds(self, market, selection, odds):
            m = self._market(market)
            key = m.keys[selection]
            path, body = f"/api/markets/{m.id}/odds", {"odds": {key: odds_text(odds)}}
            code = model.set_odds_refusal(m)
            if code is not None:
                self._call("PUT", path, op.headers, STATUS[code], code, json=body)
                return
            r = self._call("PUT", path, op.headers, 200, json=body)
            model.set_odds(m, key, odds)
            shown = {s["key"]: as_x100(s["odds"]) for s in r.json()["market"]["selections"]}
            assert shown == m.odds()

        @precondition(lambda self: len(self.markets) < MAX_MARKETS)
        @rule(type=st.sampled_from(["fixed_odds", "pool"]))
        def open_market(self, type):
            self._open_market(type)

        # -- reads -----------------------------------------------------------

        @rule()
        def read_event(self):
            """Markets as anyone reads them: the replica's odds cache, which bets move
            through PubSub, so it may lag a moment."""
            def matches() -> bool:
                r = self._call("GET", f"/api/events/{self.event}", None, 200)
                shown = {m["id"]: (m["status"], {s["key"]: as_x100(s["odds"])
                                                 for s in m["selections"]})
                         for m in r.json()["event"]["markets"]}
                return shown == {m.id: (m.status, m.odds()) for m in self.markets}

            wait_until(matches, timeout=5, what="the event's markets as the model has them")

        @precondition(lambda self: self.bets)
        @rule(pick=st.integers(0, 10_000), as_other=st.booleans())
        def read_bet(self, pick, as_other):
            bet = list(self.bets.values())[pick % len(self.bets)]
            owner = next(u for u in self.users if u.id == bet.user)
            other = next((u for u in self.users if u.id != bet.user), owner)
            if as_other and other is not owner:
                self._call("GET", f"/api/bets/{bet.id}", other.reader, 404, "not_found")
                return
            r = self._call("GET", f"/api/bets/{bet.id}", owner.reader, 200)
            got = r.json()["bet"]
            assert {k: got[k] for k in bet_view(bet)} == bet_view(bet)

        @rule(user=st.integers(0, MAX_USERS - 1))
        def read_bets_and_transactions(self, user):
            self._check_bets(self.users[user % len(self.users)])
            self._check_transactions(self.users[user % len(self.users)])

        def _check_bets(self, u: Player) -> None:
            listed = self._call("GET", "/api/bets", u.reader, 200).json()["bets"]
            got = {b["id"]: {k: b[k] for k in bet_view(self.bets[b["id"]])}
                   for b in listed if b["id"] in self.bets}
            assert len(got) == len(listed), "a bet the model does not know"
            mine = {b.id: bet_view(b) for b in self.bets.values() if b.user == u.id}
            assert got == mine

        def _check_transactions(self, u: Player) -> None:
            r = self._call("GET", "/api/wallet/transactions", u.reader, 200,
                           params={"limit": 500})
            listed = r.json()["transactions"]
            assert Counter((t["kind"], t["amount"]) for t in listed) == u.transactions
            if listed:
                assert listed[0]["balance_after"] == format_amount(u.balance)

        # -- checks ----------------------------------------------------------

        @invariant()
        def balances_match_the_model(self):
            seen["steps"] += 1
            for u in self.users:
                r = self._call("GET", "/api/wallet/balance", u.reader, 200)
                assert r.json() == self._balance_view(u), u.id

        def teardown(self):
            seen["examples"] += 1
            for u in self.users:
                self._check_bets(u)
                self._check_transactions(u)

    run_state_machine_as_test(
        Http,
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(sorted(seen.items())))


def _player_and_market(api: httpx.Client, new_user) -> tuple[Any, str]:
    """A player with 50.00 in the wallet, and an operator's open fixed-odds market."""
    op = new_user("operator")
    r = api.post("/api/events", json={"name": "Key FC", "category": "football",
                                      "starts_at": "2030-06-01T20:00:00Z"}, headers=op.headers)
    event = r.json()["event"]["id"]
    r = api.post(f"/api/events/{event}/markets", headers=op.headers, json={
        "name": "Winner", "type": "fixed_odds", "selections": model.selections("fixed_odds")})
    market = r.json()["market"]["id"]
    u = new_user()
    assert api.post("/api/wallet/deposit", json={"amount": "50.00"},
                    headers=u.headers).status_code == 200
    return u, market


@pytest.mark.parametrize(("first", "payment"), [("bet", "deposit"), ("payment", "deposit"),
                                              ("bet", "withdraw"), ("payment", "withdraw")])
def test_a_key_is_one_request_everywhere(api: httpx.Client, new_user, first: str,
                                         payment: str) -> None:
    """The contract: "the same key with a different body is 409 idempotency_conflict.
    Keys are per user", as a deposit's key is on a withdrawal (test_http.py): a bet and
    a deposit or withdrawal sent with one key, in either order, act once."""
    u, market = _player_and_market(api, new_user)
    keyed = {**u.headers, "Idempotency-Key": "one-key"}
    bet = {"market_id": market, "selection": "home", "amount": "5.00"}
    requests = [("/api/bets", bet, 201), (f"/api/wallet/{payment}", {"amount": "7.00"}, 200)]
    if first == "payment":
        requests.reverse()
    (path, body, status), (again, other, _) = requests
    assert api.post(path, json=body, headers=keyed).status_code == status
    r = api.post(again, json=other, headers=keyed)
    left = {"bet": "45.00", "deposit": "57.00", "withdraw": "43.00"}[
        "bet" if first == "bet" else payment]
    balance = api.get("/api/wallet/balance", headers=u.headers).json()["balance"]
    assert (r.status_code, error_of(r), balance) == (409, "idempotency_conflict", left)
    # The refusal is the key's answer from now on.
    r = api.post(again, json=other, headers=keyed)
    assert (r.status_code, error_of(r)) == (409, "idempotency_conflict")


@pytest.mark.parametrize("payment", ["deposit", "withdraw"])
def test_a_refused_bet_key_moves_no_money_later(api: httpx.Client, new_user,
                                                payment: str) -> None:
    """A keyed bet refused (funds short) moved no money, so the wallet never saw its
    key: a deposit or withdrawal sent with that key afterwards is refused all the
    same, and that refusal is the key's answer from then on."""
    u, market = _player_and_market(api, new_user)
    keyed = {**u.headers, "Idempotency-Key": "refused-then-paid"}
    r = api.post("/api/bets", json={"market_id": market, "selection": "home",
                                    "amount": "60.00"}, headers=keyed)
    assert (r.status_code, error_of(r)) == (409, "insufficient_funds"), r.text
    for _ in range(2):
        r = api.post(f"/api/wallet/{payment}", json={"amount": "7.00"}, headers=keyed)
        assert (r.status_code, error_of(r)) == (409, "idempotency_conflict"), r.text
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "50.00"


@pytest.mark.parametrize("first", ["refused", "placed"])
def test_a_bet_key_is_one_request_on_every_market(api: httpx.Client, new_user,
                                                  first: str) -> None:
    """A key first refused on one market (funds short) and then sent with another body
    to a second market, or first placed and then sent to a second market with a body
    that market refuses: 409 idempotency_conflict, and nothing moved or held (the
    second market's reservation is released, not left to its time-out).
    test_http.py::test_one_key_is_one_bet_across_markets looks at the balance only."""
    op = new_user("operator")
    r = api.post("/api/events", json={"name": "Key FC", "category": "football",
                                      "starts_at": "2030-06-01T20:00:00Z"}, headers=op.headers)
    event = r.json()["event"]["id"]
    markets = []
    for _ in range(2):
        r = api.post(f"/api/events/{event}/markets", headers=op.headers, json={
            "name": "Winner", "type": "fixed_odds", "selections": model.selections("fixed_odds"),
            "min_stake": "1.00"})
        markets.append(r.json()["market"]["id"])
    u = new_user()
    assert api.post("/api/wallet/deposit", json={"amount": "50.00"},
                    headers=u.headers).status_code == 200
    keyed = {**u.headers, "Idempotency-Key": "one-bet"}
    amounts = ("60.00", "5.00") if first == "refused" else ("5.00", "0.50")
    r = api.post("/api/bets", json={"market_id": markets[0], "selection": "home",
                                    "amount": amounts[0]}, headers=keyed)
    assert r.status_code == (409 if first == "refused" else 201), r.text
    r = api.post("/api/bets", json={"market_id": markets[1], "selection": "home",
                                    "amount": amounts[1]}, headers=keyed)
    assert (r.status_code, error_of(r)) == (409, "idempotency_conflict"), r.text
    left = "50.00" if first == "refused" else "45.00"
    assert api.get("/api/wallet/balance", headers=u.headers).json() == {
        "balance": left, "available": left, "reserved": "0.00", "currency": "BRL"}
