"""The HTTP surface of the contract, against the real Serve app on the session cluster."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from decimal import Decimal

import httpx
import jwt
import pytest

from tests.serve_fixtures import JWT_SECRET

pytestmark = pytest.mark.cluster


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def test_the_driver_signs_with_the_replicas_secret(jwt_secret: str) -> None:
    assert jwt_secret == JWT_SECRET


# -- auth ----------------------------------------------------------------------------------


def test_register_login_me_logout(api: httpx.Client) -> None:
    email = f"Ana.{uuid.uuid4().hex[:8]}@Example.com"
    r = api.post("/api/auth/register",
                 json={"email": email, "username": "ana", "password": "s3cret-pass"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "token"}
    user = body["user"]
    assert set(user) == {"id", "email", "username", "role"}
    assert user["email"] == email.lower() and user["role"] == "player"
    uuid.UUID(user["id"])

    r = api.post("/api/auth/register",
                 json={"email": email.upper(), "username": "ana2", "password": "s3cret-pass"})
    assert r.status_code == 409 and error_of(r) == "email_taken"

    r = api.post("/api/auth/login", json={"email": email, "password": "wrong-pass"})
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    r = api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}

    r = api.get("/api/auth/me", headers=auth)
    assert r.status_code == 200 and r.json() == {"user": user}

    r = api.post("/api/auth/logout", headers=auth)
    assert r.status_code == 204 and r.content == b""
    for path in ("/api/auth/me", "/api/wallet/balance"):
        r = api.get(path, headers=auth)
        assert r.status_code == 401 and error_of(r) == "unauthenticated"
    # the registration token is a different one: still valid
    r = api.get("/api/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert r.status_code == 200


def test_bad_tokens_are_401(api: httpx.Client, new_user) -> None:
    u = new_user()
    now = int(time.time())
    expired = jwt.encode({"sub": u.id, "role": "player", "jti": "x1", "iat": now - 100,
                          "exp": now - 10}, JWT_SECRET, algorithm="HS256")
    forged = jwt.encode({"sub": u.id, "role": "admin", "jti": "x2", "iat": now,
                         "exp": now + 100}, "another-secret-" + "y" * 40, algorithm="HS256")
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {forged}"},
    ):
        r = api.get("/api/wallet/balance", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert error_of(r) == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"


def test_login_lockout_after_five_failures(api: httpx.Client, new_user) -> None:
    u = new_user()
    for _ in range(5):
        r = api.post("/api/auth/login", json={"email": u.email, "password": "nope-nope"})
        assert r.status_code == 401
    r = api.post("/api/auth/login", json={"email": u.email, "password": u.password})
    assert r.status_code == 429 and error_of(r) == "rate_limited"
    assert int(r.headers["retry-after"]) > 0


def test_register_validation(api: httpx.Client) -> None:
    for body in (
        {"email": "not-an-email", "username": "abc", "password": "long-enough"},
        {"email": "a@example.com", "username": "a", "password": "long-enough"},
        {"email": "a@example.com", "username": "abc", "password": "short"},
        {"email": "a@example.com", "username": "abc"},
        {"email": 5, "username": "abc", "password": "long-enough"},
        [],
    ):
        r = api.post("/api/auth/register", json=body)
        assert r.status_code == 422, (body, r.text)
        assert error_of(r) == "invalid_input"


# -- wallet --------------------------------------------------------------------------------


def test_wallet_deposit_withdraw_transactions(api: httpx.Client, new_user) -> None:
    u = new_user()
    r = api.get("/api/wallet/balance", headers=u.headers)
    assert r.status_code == 200
    assert r.json() == {"balance": "0.00", "available": "0.00", "reserved": "0.00",
                        "currency": r.json()["currency"]}

    r = api.post("/api/wallet/deposit", json={"amount": "100.50"}, headers=u.headers)
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == "100.50" and r.json()["available"] == "100.50"

    r = api.post("/api/wallet/withdraw", json={"amount": "0.50"}, headers=u.headers)
    assert r.status_code == 200 and r.json()["balance"] == "100.00"

    r = api.post("/api/wallet/withdraw", json={"amount": "100.01"}, headers=u.headers)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds"

    r = api.get("/api/wallet/transactions", headers=u.headers)
    assert r.status_code == 200
    txs = r.json()["transactions"]
    assert [(t["kind"], t["amount"], t["balance_after"]) for t in txs] == [
        ("withdrawal", "0.50", "100.00"),
        ("deposit", "100.50", "100.50"),
    ]
    assert set(txs[0]) == {"id", "kind", "amount", "balance_after", "reference_id",
                           "created_at"}

    r = api.get("/api/wallet/transactions", params={"limit": 1}, headers=u.headers)
    assert [t["kind"] for t in r.json()["transactions"]] == ["withdrawal"]
    r = api.get("/api/wallet/transactions", params={"before": txs[0]["id"]}, headers=u.headers)
    assert [t["kind"] for t in r.json()["transactions"]] == ["deposit"]
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"before": "nope"}):
        r = api.get("/api/wallet/transactions", params=params, headers=u.headers)
        assert r.status_code == 422 and error_of(r) == "invalid_input", params


@pytest.mark.parametrize("amount", ["0", "0.00", "-5.00", "1.234", "abc", "", 10.5, None, True,
                                    "1e3", "99999999999999.00"])
def test_bad_amounts_are_422(api: httpx.Client, new_user, amount) -> None:
    u = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": amount}, headers=u.headers)
    assert r.status_code == 422, r.text
    assert error_of(r) == "invalid_input"


def test_malformed_bodies_never_500(api: httpx.Client, new_user) -> None:
    u = new_user()
    h = {**u.headers, "Content-Type": "application/json"}
    for path in ("/api/wallet/deposit", "/api/bets"):  # the router's, and the bet lane's
        for content in (b"", b"{", b"null", b"[1,2]", b'"x"', b"\xff\xfe", b'{"amount": {}}'):
            r = api.post(path, content=content, headers=h)
            assert r.status_code == 422, (path, content, r.text)
            assert error_of(r) == "invalid_input"
    r = api.post("/api/bets", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"


def test_body_size_limit_is_413(api: httpx.Client, new_user) -> None:
    u = new_user()
    big = b'{"amount": "1.00", "pad": "' + b"x" * (200 * 1024) + b'"}'
    for path in ("/api/wallet/deposit", "/api/bets"):
        r = api.post(path, content=big, headers={**u.headers, "Content-Type": "application/json"})
        assert r.status_code == 413 and error_of(r) == "payload_too_large", path

    def chunks():
        yield b'{"amount": "1.00", "pad": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}'

    r = api.post("/api/wallet/deposit", content=chunks(),
                 headers={**u.headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r) == "payload_too_large"
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "0.00"


def test_unknown_routes_and_methods(api: httpx.Client) -> None:
    r = api.get("/api/nope")
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = api.get("/nope")  # `/` is the odds page (tests/gateway/test_page.py)
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = api.delete("/api/wallet/balance")
    assert r.status_code == 405 and error_of(r) == "method_not_allowed"


# -- idempotency ---------------------------------------------------------------------------


def test_idempotent_deposit_replays(api: httpx.Client, new_user) -> None:
    u = new_user()
    h = {**u.headers, "Idempotency-Key": "dep-1"}
    first = api.post("/api/wallet/deposit", json={"amount": "10.00"}, headers=h)
    assert first.status_code == 200
    again = api.post("/api/wallet/deposit", json={"amount": "10.00"}, headers=h)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    # same JSON, other spelling: still the same request
    again = api.post("/api/wallet/deposit", content=b'{ "amount" : "10.00" }',
                     headers={**h, "Content-Type": "application/json"})
    assert again.status_code == 200 and again.json() == first.json()

    r = api.post("/api/wallet/deposit", json={"amount": "11.00"}, headers=h)
    assert r.status_code == 409 and error_of(r) == "idempotency_conflict"
    r = api.post("/api/wallet/withdraw", json={"amount": "10.00"}, headers=h)
    assert r.status_code == 409 and error_of(r) == "idempotency_conflict"

    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "10.00"
    # keys are per user: another user's same key is a new request
    v = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": "3.00"},
                 headers={**v.headers, "Idempotency-Key": "dep-1"})
    assert r.status_code == 200 and r.json()["balance"] == "3.00"


def test_idempotent_errors_are_replayed_too(api: httpx.Client, new_user) -> None:
    u = new_user()
    h = {**u.headers, "Idempotency-Key": "w-1"}
    r = api.post("/api/wallet/withdraw", json={"amount": "5.00"}, headers=h)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds"
    api.post("/api/wallet/deposit", json={"amount": "50.00"}, headers=u.headers)
    r = api.post("/api/wallet/withdraw", json={"amount": "5.00"}, headers=h)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds"
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "50.00"


def test_bad_idempotency_key_is_422(api: httpx.Client, new_user) -> None:
    u = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": "1.00"},
                 headers={**u.headers, "Idempotency-Key": "k" * 300})
    assert r.status_code == 422 and error_of(r) == "invalid_input"


def test_odd_idempotency_keys_work(api: httpx.Client, new_user) -> None:
    u = new_user()
    for key in ("a key with spaces/and?symbols", "é-ünï".encode()):
        h = {**u.headers, "Idempotency-Key": key}
        r1 = api.post("/api/wallet/deposit", json={"amount": "1.00"}, headers=h)
        r2 = api.post("/api/wallet/deposit", json={"amount": "1.00"}, headers=h)
        assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
        assert r1.json() == r2.json()
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "2.00"


def test_concurrent_identical_requests_have_one_effect(serve_url: str, new_user) -> None:
    u = new_user()
    h = {**u.headers, "Idempotency-Key": f"burst-{uuid.uuid4().hex}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/api/wallet/deposit", json={"amount": "7.00"}, headers=h)
                for _ in range(20)
            ))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 409]
    assert len(ok) + len(busy) == 20, [r.text for r in responses]
    assert ok, "at least the first request succeeds"
    assert all(r.json() == ok[0].json() for r in ok)
    assert all(error_of(r) == "idempotency_in_progress" for r in busy)
    with httpx.Client(base_url=serve_url) as client:
        r = client.get("/api/wallet/balance", headers=u.headers)
        assert r.json()["balance"] == "7.00"
        r = client.get("/api/wallet/transactions", headers=u.headers)
        assert len(r.json()["transactions"]) == 1


# -- authorization -------------------------------------------------------------------------


OPERATOR_ROUTES = [
    ("POST", "/api/events", {"name": "A x B", "category": "football",
                             "starts_at": "2030-01-01T18:00:00Z"}),
    ("POST", "/api/events/{id}/markets", {"name": "Winner", "type": "fixed_odds",
                                          "selections": [{"key": "a", "name": "A"},
                                                         {"key": "b", "name": "B"}]}),
    ("POST", "/api/markets/{id}/suspend", None),
    ("POST", "/api/markets/{id}/reopen", None),
    ("POST", "/api/markets/{id}/close", None),
    ("PUT", "/api/markets/{id}/odds", {"odds": {"a": "2.10"}}),
    ("POST", "/api/markets/{id}/settle", {"winner": "a"}),
    ("POST", "/api/markets/{id}/void", None),
    ("POST", "/api/events/{id}/void", None),
    ("POST", "/api/lotteries/federal/draws", {"draw": "58342"}),
]
USER_ROUTES = [
    ("GET", "/api/auth/me", None),
    ("POST", "/api/auth/logout", None),
    ("GET", "/api/wallet/balance", None),
    ("POST", "/api/wallet/deposit", {"amount": "1.00"}),
    ("POST", "/api/wallet/withdraw", {"amount": "1.00"}),
    ("GET", "/api/wallet/transactions", None),
    ("GET", "/api/bets", None),
    ("POST", "/api/bets", {"market_id": str(uuid.uuid4()), "selection": "a", "amount": "1.00"}),
    ("GET", "/api/bets/{id}", None),
    ("DELETE", "/api/bets/{id}", None),
]


def _call(api: httpx.Client, method: str, path: str, body, headers=None) -> httpx.Response:
    return api.request(method, path.replace("{id}", str(uuid.uuid4())), json=body,
                       headers=headers or {})


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ROUTES + USER_ROUTES)
def test_anonymous_is_401(api: httpx.Client, method, path, body) -> None:
    r = _call(api, method, path, body)
    assert r.status_code == 401, r.text
    assert error_of(r) == "unauthenticated"


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ROUTES)
def test_players_may_not_run_the_book(api: httpx.Client, new_user, method, path, body) -> None:
    r = _call(api, method, path, body, new_user().headers)
    assert r.status_code == 403, r.text
    assert error_of(r) == "forbidden"


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operators_pass_the_role_check(api: httpx.Client, new_user, role) -> None:
    u = new_user(role)
    assert u.role == role
    r = api.get("/api/auth/me", headers=u.headers)
    assert r.json()["user"]["role"] == role
    # an unknown market: past the role check, the owner answers 404
    r = api.post(f"/api/markets/{uuid.uuid4()}/suspend", headers=u.headers)
    assert r.status_code in (404, 503), r.text
    assert error_of(r) in ("not_found", "unavailable")


def test_anyone_may_read_events(api: httpx.Client) -> None:
    r = api.get("/api/events")
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["events"], list)
    r = api.get(f"/api/events/{uuid.uuid4()}")
    assert r.status_code == 404 and error_of(r) == "not_found"
    r = api.get("/api/events/not-a-uuid")
    assert r.status_code == 404 and error_of(r) == "not_found"


# -- operations ----------------------------------------------------------------------------


def test_health(api: httpx.Client) -> None:
    r = api.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "healthy", __import__("json").dumps(body)
    assert body["checks"]["postgres"]["status"] == "ok"
    assert body["checks"]["pubsub"]["status"] == "ok"
    assert body["checks"]["wallets_hosts"]["status"] == "ok"


def test_metrics(api: httpx.Client, new_user) -> None:
    u = new_user()
    api.get("/api/wallet/balance", headers=u.headers)
    api.get("/api/nope")
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    # Every replica's figures carry the replica's name (one scrape shows them all).
    assert re.search(r'lootify_http_requests_total\{method="GET",replica="[^"]+",'
                     r'route="/api/wallet/balance",status="200"\}', text)
    assert 'route="unmatched",status="404"' in text
    assert "lootify_http_request_duration_seconds_bucket" in text
    assert "lootify_ws_connections" in text
    assert "lootify_bets_placed_total" in text or "lootify_bets_placed" in text


def test_openapi_and_docs(api: httpx.Client) -> None:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    for path, method in [
        ("/api/auth/register", "post"), ("/api/auth/login", "post"), ("/api/auth/me", "get"),
        ("/api/auth/logout", "post"), ("/api/wallet/balance", "get"),
        ("/api/wallet/deposit", "post"), ("/api/wallet/withdraw", "post"),
        ("/api/wallet/transactions", "get"), ("/api/events", "get"), ("/api/events", "post"),
        ("/api/events/{event_id}", "get"), ("/api/events/{event_id}/markets", "post"),
        ("/api/markets/{market_id}/suspend", "post"), ("/api/markets/{market_id}/odds", "put"),
        ("/api/markets/{market_id}/settle", "post"), ("/api/markets/{market_id}/void", "post"),
        ("/api/bets", "post"), ("/api/bets", "get"), ("/api/bets/{bet_id}", "get"),
        ("/api/bets/{bet_id}", "delete"), ("/health", "get"), ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), (path, method)
    deposit = paths["/api/wallet/deposit"]["post"]
    assert "requestBody" in deposit
    assert any(p["name"] == "Idempotency-Key" for p in deposit["parameters"])
    assert deposit["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorOut")
    assert "BetOut" in spec["components"]["schemas"]
    r = api.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


# -- events, markets and bets --------------------------------------------------------------


def _event(api: httpx.Client, op, name: str = "Brasil x Argentina") -> dict:
    r = api.post("/api/events", json={"name": name, "category": "futebol",
                                      "starts_at": "2030-06-01T20:00:00Z"}, headers=op.headers)
    assert r.status_code == 201, r.text
    return r.json()["event"]


def _market(api: httpx.Client, op, event_id: str, type: str = "fixed_odds", **extra) -> dict:
    odds = {"home": "2.10", "away": "1.80"} if type == "fixed_odds" else {}
    body = {"name": "Winner", "type": type,
            "selections": [{"key": k, "name": k.title(), **({"odds": odds[k]} if odds else {})}
                           for k in ("home", "away")], **extra}
    r = api.post(f"/api/events/{event_id}/markets", json=body, headers=op.headers)
    assert r.status_code == 201, r.text
    return r.json()["market"]


def _funded(api: httpx.Client, new_user, amount: str = "100.00"):
    u = new_user()
    assert api.post("/api/wallet/deposit", json={"amount": amount},
                    headers=u.headers).status_code == 200
    return u


def _balance(api: httpx.Client, u) -> str:
    return api.get("/api/wallet/balance", headers=u.headers).json()["balance"]


def test_event_and_market_lifecycle(api: httpx.Client, new_user) -> None:
    op = new_user("operator")
    event = _event(api, op)
    assert set(event) == {"id", "name", "category", "starts_at", "status", "markets"}
    assert event["markets"] == [] and event["starts_at"].startswith("2030-06-01T20:00:00")
    market = _market(api, op, event["id"])
    assert market["status"] == "open" and market["event_id"] == event["id"]
    assert {"id", "event_id", "name", "type", "status", "selections"} <= set(market)
    assert market["selections"] == [{"key": "home", "name": "Home", "odds": "2.10"},
                                    {"key": "away", "name": "Away", "odds": "1.80"}]

    r = api.get(f"/api/events/{event['id']}")
    assert r.status_code == 200 and r.json()["event"]["markets"][0]["id"] == market["id"]
    listed = {e["id"]: e for e in api.get("/api/events").json()["events"]}
    assert listed[event["id"]]["markets"][0]["status"] == "open"

    mid = market["id"]
    r = api.put(f"/api/markets/{mid}/odds", json={"odds": {"home": "2.25"}}, headers=op.headers)
    assert r.status_code == 200, r.text
    assert [s["odds"] for s in r.json()["market"]["selections"]] == ["2.25", "1.80"]
    listed = {e["id"]: e for e in api.get("/api/events").json()["events"]}
    assert listed[event["id"]]["markets"][0]["selections"][0]["odds"] == "2.25"

    assert api.post(f"/api/markets/{mid}/suspend", headers=op.headers).json()["market"][
        "status"] == "suspended"
    r = api.post(f"/api/markets/{mid}/suspend", headers=op.headers)
    assert r.status_code == 409 and error_of(r) == "invalid_transition"
    assert api.get(f"/api/events/{event['id']}").json()["event"]["markets"][0][
        "status"] == "suspended"
    assert api.post(f"/api/markets/{mid}/reopen", headers=op.headers).json()["market"][
        "status"] == "open"
    assert api.post(f"/api/markets/{mid}/close", headers=op.headers).json()["market"][
        "status"] == "closed"
    r = api.post(f"/api/markets/{mid}/settle", json={"winner": "nobody"}, headers=op.headers)
    assert r.status_code in (404, 422), r.text
    r = api.post(f"/api/markets/{mid}/settle", json={"winner": "home"}, headers=op.headers)
    assert r.status_code == 200 and r.json()["market"]["status"] == "settled"
    r = api.post(f"/api/markets/{mid}/settle", json={"winner": "home"}, headers=op.headers)
    assert r.status_code == 409 and error_of(r) == "already_settled"
    r = api.post(f"/api/markets/{mid}/void", headers=op.headers)
    assert r.status_code == 409


def test_market_validation(api: httpx.Client, new_user) -> None:
    op = new_user("admin")
    event = _event(api, op)
    url = f"/api/events/{event['id']}/markets"
    two = [{"key": "a", "name": "A", "odds": "2.00"}, {"key": "b", "name": "B", "odds": "2.00"}]
    for body in (
        {"name": "W", "type": "exotic", "selections": two},
        {"name": "W", "type": "fixed_odds", "selections": two[:1]},
        {"name": "W", "type": "fixed_odds", "selections": [two[0], two[0]]},
        {"name": "W", "type": "fixed_odds",
         "selections": [{"key": "a", "name": "A", "odds": "0.50"}, two[1]]},
        {"name": "W", "type": "fixed_odds",
         "selections": [{"key": "a", "name": "A"}, {"key": "b", "name": "B"}]},
        {"name": "W", "type": "fixed_odds", "selections": two, "min_stake": "-1"},
        {"name": "W", "type": "pool", "selections": two, "takeout": "abc"},
        {"name": "", "type": "fixed_odds", "selections": two},
    ):
        r = api.post(url, json=body, headers=op.headers)
        assert r.status_code == 422, (body, r.text)
        assert error_of(r) in ("invalid_input",), body
    r = api.post(f"/api/events/{uuid.uuid4()}/markets",
                 json={"name": "W", "type": "fixed_odds", "selections": two}, headers=op.headers)
    assert r.status_code == 404 and error_of(r) == "not_found"
    for body in ({"name": "X"}, {"name": "X", "category": "c", "starts_at": "yesterday"}):
        r = api.post("/api/events", json=body, headers=op.headers)
        assert r.status_code == 422 and error_of(r) == "invalid_input"
    mid = _market(api, op, event["id"])["id"]
    for odds in ({"home": "abc"}, {}, {"home": 2.1}):
        r = api.put(f"/api/markets/{mid}/odds", json={"odds": odds}, headers=op.headers)
        assert r.status_code == 422 and error_of(r) == "invalid_input", odds


def test_bets_over_http(api: httpx.Client, new_user) -> None:
    op = new_user("operator")
    event = _event(api, op)
    mid = _market(api, op, event["id"], max_payout="500.00")["id"]
    p = _funded(api, new_user)

    r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": "10.00",
                                    "odds": "2.10"}, headers=p.headers)
    assert r.status_code == 201, r.text
    bet = r.json()["bet"]
    assert set(bet) == {"id", "market_id", "selection", "amount", "odds", "potential_payout",
                        "status", "payout", "placed_at", "settled_at"}
    assert (bet["status"], bet["amount"], bet["odds"], bet["potential_payout"], bet["payout"]) \
        == ("accepted", "10.00", "2.10", "21.00", "0.00")
    assert _balance(api, p) == "90.00"

    r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": "10.00",
                                    "odds": "2.00"}, headers=p.headers)
    assert r.status_code == 409 and error_of(r) == "odds_changed"
    r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": "10.00",
                                    "odds": "2.00", "accept_odds": "higher"}, headers=p.headers)
    assert r.status_code == 201, r.text
    second = r.json()["bet"]
    assert Decimal("2.00") <= Decimal(second["odds"]) <= Decimal("2.10")  # the book moved
    win = Decimal(second["odds"]) * 10
    for amount, code in (("0.50", "stake_too_low"), ("20000.00", "stake_too_high"),
                         ("300.00", "payout_too_high")):
        rich = _funded(api, new_user, "30000.00")
        r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": amount},
                     headers=rich.headers)
        assert r.status_code == 422 and error_of(r) == code, (amount, r.text)
    r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": "500.00"},
                 headers=p.headers)
    assert r.status_code in (409, 422)
    for body in ({"market_id": mid, "selection": "draw", "amount": "1.00"},
                 {"market_id": "nope", "selection": "home", "amount": "1.00"},
                 {"market_id": mid, "selection": "home", "amount": "1.00", "accept_odds": "some"},
                 {"market_id": mid, "selection": "home", "amount": "1.00", "odds": "x"}):
        r = api.post("/api/bets", json=body, headers=p.headers)
        assert r.status_code in (404, 422), (body, r.text)
    r = api.post("/api/bets", json={"market_id": str(uuid.uuid4()), "selection": "home",
                                    "amount": "1.00"}, headers=p.headers)
    assert r.status_code == 404 and error_of(r) == "not_found"

    listed = api.get("/api/bets", headers=p.headers).json()["bets"]
    assert {b["id"] for b in listed} >= {bet["id"]} and len(listed) == 2
    assert api.get(f"/api/bets/{bet['id']}", headers=p.headers).json()["bet"] == bet
    other = new_user()
    r = api.get(f"/api/bets/{bet['id']}", headers=other.headers)
    assert r.status_code == 404 and error_of(r) == "not_found"
    assert api.get("/api/bets", headers=other.headers).json() == {"bets": []}
    r = api.delete(f"/api/bets/{bet['id']}", headers=other.headers)
    assert r.status_code == 404

    r = api.delete(f"/api/bets/{bet['id']}", headers=p.headers)
    assert r.status_code == 200 and r.json()["bet"]["status"] == "cancelled"
    assert _balance(api, p) == "90.00"  # 100 - two stakes + one refund
    r = api.delete(f"/api/bets/{bet['id']}", headers=p.headers)  # cancelling is idempotent
    assert r.status_code == 200 and r.json()["bet"]["status"] == "cancelled"
    assert _balance(api, p) == "90.00"

    api.post(f"/api/markets/{mid}/close", headers=op.headers)
    r = api.post("/api/bets", json={"market_id": mid, "selection": "home", "amount": "1.00"},
                 headers=p.headers)
    assert r.status_code == 409 and error_of(r) == "market_not_open"
    api.post(f"/api/markets/{mid}/settle", json={"winner": "home"}, headers=op.headers)
    bets = api.get("/api/bets", headers=p.headers).json()["bets"]
    won = [b for b in bets if b["status"] == "won"]
    assert len(won) == 1 and won[0]["id"] == second["id"] and won[0]["settled_at"]
    assert Decimal(won[0]["payout"]) == win
    assert Decimal(_balance(api, p)) == Decimal("90.00") + win
    txs = api.get("/api/wallet/transactions", headers=p.headers).json()["transactions"]
    assert [t["kind"] for t in txs][:1] == ["payout"]
    assert "bet_stake" in {t["kind"] for t in txs} and "bet_refund" in {t["kind"] for t in txs}

    text = api.get("/metrics").text
    assert re.search(r'lootify_bets_placed_total\{channel="http",replica="[^"]+"\}', text)
    assert re.search(r'lootify_bets_refused_total\{channel="http",reason="odds_changed",'
                     r'replica="[^"]+"\}', text)


def test_idempotent_bets(api: httpx.Client, new_user, users_pool, loop_thread) -> None:
    op = new_user("operator")
    mid = _market(api, op, _event(api, op)["id"])["id"]
    p = _funded(api, new_user)
    h = {**p.headers, "Idempotency-Key": "bet-1"}
    body = {"market_id": mid, "selection": "away", "amount": "4.00"}
    r1 = api.post("/api/bets", json=body, headers=h)
    r2 = api.post("/api/bets", json=body, headers=h)
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json()
    assert "idempotent-replayed" not in r1.headers
    assert r2.headers.get("idempotent-replayed") == "true"
    for other in ({**body, "amount": "5.00"}, {**body, "odds": "9.00"},
                  {**body, "accept_odds": "any"}):
        r = api.post("/api/bets", json=other, headers=h)
        assert r.status_code == 409 and error_of(r) == "idempotency_conflict", other
    assert _balance(api, p) == "96.00"
    assert len(api.get("/api/bets", headers=p.headers).json()["bets"]) == 1
    # the market keeps the key, not the gateway: no idempotency row was written
    keys = loop_thread.run(users_pool.fetchval(
        "select count(*) from gateway.idempotency_keys where user_id = $1::uuid", p.id))
    assert keys == 0


def test_a_refused_keyed_bet_is_refused_again_on_replay(api: httpx.Client, new_user) -> None:
    op = new_user("operator")
    mid = _market(api, op, _event(api, op)["id"])["id"]
    p = new_user()
    h = {**p.headers, "Idempotency-Key": "short"}
    body = {"market_id": mid, "selection": "home", "amount": "4.00"}
    r = api.post("/api/bets", json=body, headers=h)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds", r.text
    api.post("/api/wallet/deposit", json={"amount": "50.00"}, headers=p.headers)
    r = api.post("/api/bets", json=body, headers=h)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds", r.text
    r = api.post("/api/bets", json={**body, "amount": "3.00"}, headers=h)
    assert r.status_code == 409 and error_of(r) == "idempotency_conflict"
    assert _balance(api, p) == "50.00"
    r = api.post("/api/bets", json=body, headers={**p.headers, "Idempotency-Key": "funded"})
    assert r.status_code == 201, r.text
    assert _balance(api, p) == "46.00"


def test_one_key_is_one_bet_across_markets(api: httpx.Client, new_user) -> None:
    """A key refused on one market places nothing on another, and a key placed on one
    is not refused as new on another: both answer idempotency_conflict. Both markets
    are active (a bet on each first), so only the commit can tell."""
    op = new_user("operator")
    event_id = _event(api, op)["id"]
    a, b = (_market(api, op, event_id)["id"] for _ in range(2))
    p = _funded(api, new_user, "5.00")
    for mid in (a, b):
        r = api.post("/api/bets", json={"market_id": mid, "selection": "home",
                                        "amount": "1.00"}, headers=p.headers)
        assert r.status_code == 201, r.text
    refused = {**p.headers, "Idempotency-Key": "refused-on-a"}
    r = api.post("/api/bets", json={"market_id": a, "selection": "home", "amount": "9.00"},
                 headers=refused)
    assert r.status_code == 409 and error_of(r) == "insufficient_funds", r.text
    r = api.post("/api/bets", json={"market_id": b, "selection": "home", "amount": "1.00"},
                 headers=refused)
    assert r.status_code == 409 and error_of(r) == "idempotency_conflict", r.text
    placed = {**p.headers, "Idempotency-Key": "placed-on-a"}
    r = api.post("/api/bets", json={"market_id": a, "selection": "home", "amount": "1.00"},
                 headers=placed)
    assert r.status_code == 201, r.text
    r = api.post("/api/bets", json={"market_id": b, "selection": "home", "amount": "9.00"},
                 headers=placed)
    assert r.status_code == 409 and error_of(r) == "idempotency_conflict", r.text
    assert _balance(api, p) == "2.00"
    assert len(api.get("/api/bets", headers=p.headers).json()["bets"]) == 3


def test_twenty_concurrent_identical_keyed_bets_place_one(serve_url: str, api: httpx.Client,
                                                           new_user) -> None:
    op = new_user("operator")
    mid = _market(api, op, _event(api, op)["id"])["id"]
    p = _funded(api, new_user)
    h = {**p.headers, "Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    body = {"market_id": mid, "selection": "away", "amount": "2.00"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/api/bets", json=body, headers=h) for _ in range(20)))

    responses = asyncio.run(burst())
    placed = [r for r in responses if r.status_code == 201]
    busy = [r for r in responses if r.status_code == 409]
    assert len(placed) + len(busy) == 20, [r.text for r in responses]
    assert placed and all(r.json() == placed[0].json() for r in placed)
    assert all(error_of(r) == "idempotency_in_progress" for r in busy)
    assert _balance(api, p) == "98.00"
    assert len(api.get("/api/bets", headers=p.headers).json()["bets"]) == 1


def test_a_keyed_bet_whose_answer_was_lost_is_answered_on_retry(
    serve_url: str, api: httpx.Client, new_user
) -> None:
    op = new_user("operator")
    mid = _market(api, op, _event(api, op)["id"])["id"]
    p = _funded(api, new_user)
    h = {**p.headers, "Idempotency-Key": "lost"}
    body = {"market_id": mid, "selection": "home", "amount": "5.00"}
    with httpx.Client(base_url=serve_url, timeout=0.001) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/api/bets", json=body, headers=h)
    deadline = time.monotonic() + 20
    while True:  # the first request may still be running: then it is in progress
        r = api.post("/api/bets", json=body, headers=h)
        if r.status_code != 409 or time.monotonic() > deadline:
            break
        assert error_of(r) == "idempotency_in_progress", r.text
        time.sleep(0.05)
    assert r.status_code == 201, r.text
    assert _balance(api, p) == "95.00"
    assert len(api.get("/api/bets", headers=p.headers).json()["bets"]) == 1


def test_pool_markets_have_no_potential_payout(api: httpx.Client, new_user) -> None:
    op = new_user("operator")
    market = _market(api, op, _event(api, op)["id"], type="pool", takeout="0.10")
    assert market["type"] == "pool"
    p = _funded(api, new_user)
    r = api.post("/api/bets", json={"market_id": market["id"], "selection": "home",
                                    "amount": "10.00"}, headers=p.headers)
    assert r.status_code == 201, r.text
    assert r.json()["bet"]["potential_payout"] is None


def test_bet_rate_limit_is_per_user(serve_url: str, new_user) -> None:
    u, v = new_user(), new_user()

    async def burst(headers: dict, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/api/bets", headers=headers, json={
                    "market_id": str(uuid.uuid4()), "selection": "a", "amount": "1.00"})
                for _ in range(n)
            ))

    # Four times the burst: a slow machine checks them over a longer time, and the
    # bucket refills meanwhile (90 sent once came through without a 429).
    responses = asyncio.run(burst(u.headers, 200))
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert all(error_of(r) == "rate_limited" and r.headers["retry-after"] for r in limited)
    assert {r.status_code for r in responses} <= {404, 429}
    # another user (same IP) is not limited
    r = httpx.post(serve_url + "/api/bets", headers=v.headers, json={
        "market_id": str(uuid.uuid4()), "selection": "a", "amount": "1.00"})
    assert r.status_code == 404


def test_text_postgresql_cannot_store_is_422(api: httpx.Client, new_user) -> None:
    """A NUL character (PostgreSQL's text and jsonb refuse it) or a lone surrogate in
    any body's text is invalid input, not a failure where the text is stored."""
    op = new_user("operator")
    for name in ("A\u0000B", "\ud800"):
        body = json.dumps({"name": name, "category": "football",
                           "starts_at": "2030-01-01T18:00:00Z"}).encode()
        r = api.post("/api/events", content=body,
                     headers={**op.headers, "Content-Type": "application/json"})
        assert r.status_code == 422 and error_of(r) == "invalid_input", (name, r.text)
    r = api.post("/api/bets", json={"market_id": str(uuid.uuid4()), "selection": "h\u0000",
                                    "amount": "1.00"}, headers=new_user().headers)
    assert r.status_code == 422 and error_of(r) == "invalid_input", r.text
