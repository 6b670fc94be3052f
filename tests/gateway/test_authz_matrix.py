"""Who may do what: every HTTP route of `/openapi.json` and every socket topic, for an
anonymous caller, a player, another player, an operator and an admin.

The routes come from the running app's OpenAPI document, and the topic kinds from the
socket's topic grammar, so a new route or topic fails here until its rule is written
down in `RULES` or `TOPIC_RULES`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.realtime import phoenix
from tests.gateway.test_ws import socket_for, ws_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.cluster

ANONYMOUS, PLAYER, OTHER, OPERATOR, ADMIN = "anonymous", "player", "other player", "operator", \
    "admin"
PRINCIPALS = (ANONYMOUS, PLAYER, OTHER, OPERATOR, ADMIN)

# Who may call a route:
#   public    anyone, no token needed
#   user      any valid token (acts on the caller's own account)
#   owner     any valid token, but only the player's own resource: others get 404, so
#             the answer does not even say that the resource exists
#   operator  the roles operator and admin; a player gets 403
RULES: dict[tuple[str, str], str] = {
    ("GET", "/health"): "public",
    ("GET", "/metrics"): "public",
    ("POST", "/api/auth/register"): "public",
    ("POST", "/api/auth/login"): "public",
    ("GET", "/api/auth/me"): "user",
    ("POST", "/api/auth/logout"): "user",
    ("GET", "/api/wallet/balance"): "user",
    ("POST", "/api/wallet/deposit"): "user",
    ("POST", "/api/wallet/withdraw"): "user",
    ("GET", "/api/wallet/transactions"): "user",
    ("GET", "/api/events"): "public",
    ("GET", "/api/events/{event_id}"): "public",
    ("POST", "/api/events"): "operator",
    ("POST", "/api/events/{event_id}/markets"): "operator",
    ("POST", "/api/markets/{market_id}/suspend"): "operator",
    ("POST", "/api/markets/{market_id}/reopen"): "operator",
    ("POST", "/api/markets/{market_id}/close"): "operator",
    ("PUT", "/api/markets/{market_id}/odds"): "operator",
    ("POST", "/api/markets/{market_id}/settle"): "operator",
    ("POST", "/api/markets/{market_id}/void"): "operator",
    ("POST", "/api/events/{event_id}/void"): "operator",
    ("POST", "/api/lotteries/{lottery}/draws"): "operator",
    ("POST", "/api/payments/webhook"): "public",  # signed by the provider, not a token
    ("GET", "/api/wallet/deposits/{deposit_id}"): "user",
    ("GET", "/api/wallet/withdrawals/{withdrawal_id}"): "user",
    ("GET", "/api/withdrawals"): "operator",
    ("POST", "/api/withdrawals/{withdrawal_id}/approve"): "operator",
    ("POST", "/api/series"): "operator",
    ("GET", "/api/series"): "operator",
    ("GET", "/api/series/{series_id}"): "operator",
    ("POST", "/api/series/{series_id}/stop"): "operator",
    ("POST", "/api/series/{series_id}/rounds/{round_no}/result"): "operator",
    ("POST", "/api/bets"): "user",
    ("GET", "/api/bets"): "user",
    ("GET", "/api/bets/{bet_id}"): "owner",
    ("DELETE", "/api/bets/{bet_id}"): "owner",
}

# Who may join a topic: `owner` only the user the topic names (operators and admins
# included: a user topic carries that user's money); `user` anyone with a token.
TOPIC_RULES = {"user": "owner", "event": "user"}


def _expected(rule: str, principal: str) -> str:
    """allowed, unauthenticated (401), forbidden (403) or hidden (404)."""
    if rule == "public":
        return "allowed"
    if principal == ANONYMOUS:
        return "unauthenticated"
    if rule == "operator":
        return "allowed" if principal in (OPERATOR, ADMIN) else "forbidden"
    if rule == "owner":
        return "allowed" if principal == PLAYER else "hidden"
    return "allowed"


@dataclass
class World:
    """Real resources for the routes to act on: the player's bet on an open market."""

    tokens: dict[str, str | None]
    ids: dict[str, str]
    user_ids: dict[str, str]
    player_login: dict[str, str]


@pytest.fixture
def world(api: httpx.Client, new_user) -> World:
    accounts = {PLAYER: new_user(), OTHER: new_user(), OPERATOR: new_user("operator"),
                ADMIN: new_user("admin")}
    op = accounts[OPERATOR].headers
    r = api.post("/api/events", headers=op, json={
        "name": "A x B", "category": "football", "starts_at": "2030-01-01T18:00:00Z"})
    assert r.status_code == 201, r.text
    event_id = r.json()["event"]["id"]
    r = api.post(f"/api/events/{event_id}/markets", headers=op, json={
        "name": "Winner", "type": "fixed_odds",
        "selections": [{"key": "a", "name": "A", "odds": "2.00"},
                       {"key": "b", "name": "B", "odds": "2.00"}]})
    assert r.status_code == 201, r.text
    market_id = r.json()["market"]["id"]
    player = accounts[PLAYER].headers
    assert api.post("/api/wallet/deposit", json={"amount": "50.00"},
                    headers=player).status_code == 200
    r = api.post("/api/bets", headers=player,
                 json={"market_id": market_id, "selection": "a", "amount": "1.00"})
    assert r.status_code == 201, r.text
    return World(
        tokens={ANONYMOUS: None} | {p: a.token for p, a in accounts.items()},
        ids={"event_id": event_id, "market_id": market_id, "bet_id": r.json()["bet"]["id"],
             "lottery": "matrix", "deposit_id": str(uuid.uuid4()),
             "withdrawal_id": str(uuid.uuid4()), "series_id": str(uuid.uuid4()), "round_no": "1"},
        user_ids={p: a.id for p, a in accounts.items()},
        player_login={"email": accounts[PLAYER].email, "password": accounts[PLAYER].password},
    )


def _body(method: str, path: str, world: World) -> object:
    """A valid body, so a 422 can never hide the authorization decision."""
    bodies: dict[tuple[str, str], object] = {
        ("POST", "/api/auth/register"): {"email": f"m{time.monotonic_ns()}@example.com",
                                         "username": "matrix", "password": "long enough pw"},
        ("POST", "/api/auth/login"): world.player_login,
        ("POST", "/api/wallet/deposit"): {"amount": "1.00"},
        ("POST", "/api/wallet/withdraw"): {"amount": "1.00"},
        ("POST", "/api/events"): {"name": "C x D", "category": "football",
                                  "starts_at": "2030-01-01T18:00:00Z"},
        ("POST", "/api/events/{event_id}/markets"): {
            "name": "Other", "type": "fixed_odds",
            "selections": [{"key": "x", "name": "X"}, {"key": "y", "name": "Y"}]},
        ("PUT", "/api/markets/{market_id}/odds"): {"odds": {"a": "2.10"}},
        ("POST", "/api/markets/{market_id}/settle"): {"winner": "a"},
        ("POST", "/api/lotteries/{lottery}/draws"): {"draw": "58342"},
        ("POST", "/api/bets"): {"market_id": world.ids["market_id"], "selection": "b",
                                "amount": "1.00"},
    }
    return bodies.get((method, path))


def _routes(api: httpx.Client) -> list[tuple[str, str]]:
    spec = api.get("/openapi.json").json()
    routes = [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]
    # Logging out spends the token: last, so every other route sees a live one.
    return sorted(routes, key=lambda r: r == ("POST", "/api/auth/logout"))


def test_every_route_has_a_rule(api: httpx.Client) -> None:
    assert set(_routes(api)) == set(RULES)


def test_http_authorization_matrix(api: httpx.Client, world: World) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for method, path in _routes(api):
        rule = RULES.get((method, path))
        assert rule is not None, f"{method} {path} has no rule in RULES"
        for principal in PRINCIPALS:
            token = world.tokens[principal]
            r = api.request(method, path.format(**world.ids), json=_body(method, path, world),
                            headers={"Authorization": f"Bearer {token}"} if token else {})
            seen[(method, path, principal)] = _verdict(r)
    wrong = {k: v for k, v in seen.items() if v != _expected(RULES[k[:2]], k[2])}
    assert wrong == {}, "\n".join(
        f"{m} {p} as {who}: {got}, expected {_expected(RULES[(m, p)], who)}"
        for (m, p, who), got in wrong.items())


def _verdict(r: httpx.Response) -> str:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text)
    code = r.json()["error"]["code"] if r.status_code >= 400 and r.content else None
    if r.status_code == 401:
        assert code == "unauthenticated", r.text
        return "unauthenticated"
    if r.status_code == 403:
        assert code == "forbidden", r.text
        return "forbidden"
    if r.status_code == 404 and "/bets/" in r.request.url.path:
        assert code == "not_found", r.text
        return "hidden"
    return "allowed"


# -- socket topics -------------------------------------------------------------------------


def _topic_kinds() -> set[str]:
    """The kinds the socket's topic grammar accepts (`user|event` today)."""
    alternation = re.match(r"\^\(([\w|]+)\)", phoenix._TOPIC.pattern)
    assert alternation is not None, phoenix._TOPIC.pattern
    return set(alternation.group(1).split("|"))


def test_every_topic_kind_has_a_rule() -> None:
    assert _topic_kinds() == set(TOPIC_RULES)


def test_anonymous_sockets_are_refused(serve_url: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        with connect(f"{ws_url(serve_url)}?vsn=2.0.0", proxy=None, open_timeout=15):
            pass
    assert info.value.response.status_code == 403


def test_topic_authorization_matrix(world: World, socket_for) -> None:  # noqa: F811
    topics = {"user": f"user:{world.user_ids[PLAYER]}", "event": f"event:{world.ids['event_id']}"}
    assert set(topics) == set(TOPIC_RULES)
    wrong = {}
    for principal in PRINCIPALS[1:]:
        token = world.tokens[principal]
        assert token is not None
        phx = socket_for(token)
        for kind, topic in topics.items():
            reply = phx.join(topic)
            expected = "ok" if _expected(TOPIC_RULES[kind], principal) == "allowed" else "error"
            if reply["status"] != expected:
                wrong[(topic, principal)] = json.dumps(reply)
            elif expected == "error":
                assert reply["response"]["reason"] == "forbidden", reply
                # Not joined, so the topic's events are refused too.
                answer = phx.push(topic, "get_balance", {})
                assert answer["response"]["reason"] == phoenix.UNMATCHED_TOPIC, answer
    assert wrong == {}
