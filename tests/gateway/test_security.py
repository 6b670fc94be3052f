"""Intruders at the gateway, against the real Serve app: tokens that must be refused,
passwords that must never be stored or logged in the clear, a forged client address,
and money spelled in other scripts' digits."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest
import ray

from gateway.auth import tokens, users
from tests.gateway.test_ws import refused_status, socket_for  # noqa: F401  (a fixture)
from tests.polling import wait_until
from tests.serve_fixtures import JWT_SECRET

pytestmark = pytest.mark.cluster


def error_of(r: httpx.Response) -> str:
    assert r.status_code >= 400, r.text
    return r.json()["error"]["code"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bad_tokens(user_id: str) -> dict[str, str]:
    """Tokens for `user_id` that must all be refused."""
    now = int(time.time())
    claims = {"sub": user_id, "role": "player", "jti": uuid.uuid4().hex, "iat": now,
              "exp": now + 600}
    good = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    header, payload, signature = good.split(".")
    as_admin = _b64(json.dumps(claims | {"role": "admin"}).encode())
    return {
        "expired": jwt.encode(claims | {"iat": now - 120, "exp": now - 60}, JWT_SECRET,
                              algorithm="HS256"),
        "tampered payload": f"{header}.{as_admin}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": jwt.encode(claims | {"role": "admin"}, None, algorithm="none"),
        "alg none, signature kept": (
            f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}.{signature}"),
        "HS384 with the right secret": jwt.encode(claims, JWT_SECRET, algorithm="HS384"),
        "another secret": jwt.encode(claims, "not-the-secret-" + "z" * 40, algorithm="HS256"),
    }


def test_bad_tokens_are_refused_over_http_and_the_socket(api: httpx.Client, serve_url: str,
                                                         new_user) -> None:
    u = new_user()
    for name, token in _bad_tokens(u.id).items():
        r = api.get("/api/wallet/balance", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and error_of(r) == "unauthenticated", (name, r.text)
        assert refused_status(serve_url, f"vsn=2.0.0&token={token}") == 403, name


def test_a_revoked_token_is_refused_everywhere_at_once_on_its_replica(
        api: httpx.Client, serve_url: str, new_user, socket_for) -> None:  # noqa: F811
    u = new_user()
    socket_for(u.token).join(f"user:{u.id}")  # the token works on the socket before
    assert api.post("/api/auth/logout", headers=u.headers).status_code == 204
    r = api.get("/api/auth/me", headers=u.headers)
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    r = api.post("/api/wallet/deposit", json={"amount": "1.00"}, headers=u.headers)
    assert r.status_code == 401
    assert refused_status(serve_url, f"vsn=2.0.0&token={u.token}") == 403


# -- the logout bound across replicas ------------------------------------------------------


def test_a_logout_reaches_every_other_replica_within_the_revocation_feed_period(db) -> None:
    """Each replica follows `users.revoked_tokens` as a feed, read at most once per
    `LOOTIFY_REVOCATION_CACHE_S` (1 s). The bound kept: a token logged out on one
    replica is refused on every other replica once that period (plus the one feed read
    in flight) has passed since the revocation committed; on its own replica, at once.
    Two caches stand for two replicas' processes."""
    period = tokens.TokenSettings().revocation_cache_s
    assert period == 1.0
    user = users.User(id=str(uuid.uuid4()), email="b@example.com", username="b", role="player")

    async def body(pool: asyncpg.Pool) -> float:
        here, elsewhere = tokens.RevocationCache(period), tokens.RevocationCache(period)
        token = tokens.issue(user)
        claims = await tokens.verify(pool, token, cache=here)
        await tokens.verify(pool, token, cache=elsewhere)  # warm: it just read the feed
        await tokens.revoke(pool, claims, cache=here)
        revoked_at = time.monotonic()
        with pytest.raises(tokens.Unauthenticated):
            await tokens.verify(pool, token, cache=here)
        while True:
            try:
                await tokens.verify(pool, token, cache=elsewhere)
            except tokens.Unauthenticated:
                return time.monotonic() - revoked_at
            assert time.monotonic() - revoked_at < period + 0.5, "logout not seen in time"

    refused_after = db(body)
    assert refused_after <= period + 0.5


# -- passwords -----------------------------------------------------------------------------


def _serve_logs_mention(text: str) -> list[str]:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [p.name for p in logs.rglob("*") if p.is_file() and text in
            p.read_text(errors="ignore")]


def test_passwords_are_neither_stored_nor_logged_in_the_clear(api: httpx.Client,
                                                              database_url: str, run) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    typo = f"typo-{uuid.uuid4().hex}"
    email = f"p{uuid.uuid4().hex[:10]}@example.com"
    request_ids = []

    def post(path: str, body: dict) -> httpx.Response:
        request_ids.append(str(uuid.uuid4()))
        return api.post(path, json=body, headers={"X-Request-ID": request_ids[-1]})

    assert post("/api/auth/register", {"email": email, "username": "pwuser",
                                       "password": password}).status_code == 201
    assert post("/api/auth/login", {"email": email, "password": password}).status_code == 200
    assert post("/api/auth/login", {"email": email, "password": typo}).status_code == 401
    assert post("/api/auth/register", {"email": "bad", "username": "pwuser",
                                       "password": typo}).status_code == 422
    # The replica logs each request under its id: once the last one is in the files,
    # whatever was logged while handling them is there too.
    wait_until(lambda: _serve_logs_mention(request_ids[-1]), timeout=15,
               what="the access log of the last request")
    assert _serve_logs_mention(password) == [] and _serve_logs_mention(typo) == []

    async def rows_holding(text: str) -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            tables = await conn.fetch(
                "select table_schema, table_name from information_schema.tables "
                "where table_type = 'BASE TABLE' "
                "and table_schema not in ('pg_catalog', 'information_schema')")
            found = []
            for t in tables:
                name = f'"{t["table_schema"]}"."{t["table_name"]}"'
                # sql-identifier: a table of information_schema, quoted
                if await conn.fetchval(
                        f"select count(*) from {name} t where t::text like '%' || $1 || '%'",
                        text):
                    found.append(name)
            stored = await conn.fetchval(
                "select password_hash from users.users where email = $1", email)
            return found + [stored]
        finally:
            await conn.close()

    *holding, stored = run(rows_holding(password))
    assert holding == []
    assert stored.startswith("scrypt$") and users.verify_password(password, stored)
    assert run(rows_holding(typo))[:-1] == []


# -- the client address --------------------------------------------------------------------


def test_a_forged_forwarded_for_does_not_pick_the_rate_limit_bucket(api: httpx.Client,
                                                                   sql) -> None:
    """The test app trusts no proxy: whatever a client claims in X-Forwarded-For, its
    registrations count against its own address."""
    forged = f"203.0.113.{random.randint(1, 254)}"
    r = api.post("/api/auth/register", headers={"X-Forwarded-For": forged}, json={
        "email": f"x{uuid.uuid4().hex[:10]}@example.com", "username": "xff",
        "password": "long enough pw"})
    assert r.status_code == 201, r.text
    buckets = {row["bucket"] for row in sql("select bucket from gateway.rate_limits")}
    assert "register:ip:127.0.0.1" in buckets
    assert not any(forged in b for b in buckets), buckets


# -- money in ASCII digits -----------------------------------------------------------------


NON_ASCII_AMOUNTS = ["５.00", "5．00", "٥.٠٠", "5\u066b00", "\u00a05.00", "५.००", "5.0\u0660"]


def _first_non_ascii(text: str) -> str:
    return next(ch for ch in text if not ch.isascii())


def test_non_ascii_money_and_odds_are_422(api: httpx.Client, new_user,
                                          socket_for) -> None:  # noqa: F811
    u, op = new_user(), new_user("operator")
    event = api.post("/api/events", headers=op.headers, json={
        "name": "A x B", "category": "football", "starts_at": "2030-01-01T18:00:00Z"}).json()
    selections = [{"key": "a", "name": "A", "odds": "2.00"},
                  {"key": "b", "name": "B", "odds": "2.00"}]
    market_path = f"/api/events/{event['event']['id']}/markets"
    market = api.post(market_path, headers=op.headers, json={
        "name": "Winner", "type": "fixed_odds", "selections": selections}).json()["market"]
    assert api.post("/api/wallet/deposit", json={"amount": "10.00"},
                    headers=u.headers).status_code == 200
    phx = socket_for(u.token)
    assert phx.join(f"user:{u.id}")["status"] == "ok"
    for text in NON_ASCII_AMOUNTS:
        odds = text  # "５.00" would be fine odds, were it in ASCII digits
        attempts = [
            ("POST", "/api/wallet/deposit", u, {"amount": text}),
            ("POST", "/api/wallet/withdraw", u, {"amount": text}),
            ("POST", "/api/bets", u, {"market_id": market["id"], "selection": "a",
                                      "amount": text}),
            ("POST", "/api/bets", u, {"market_id": market["id"], "selection": "a",
                                      "amount": "1.00", "odds": odds}),
            ("PUT", f"/api/markets/{market['id']}/odds", op, {"odds": {"a": odds}}),
            ("POST", market_path, op, {"name": "W", "type": "fixed_odds",
                                       "selections": [selections[0] | {"odds": odds},
                                                      selections[1]]}),
            ("POST", market_path, op, {"name": "W", "type": "fixed_odds",
                                       "selections": selections, "min_stake": text}),
            ("POST", market_path, op, {"name": "W", "type": "pool", "selections": selections,
                                       "takeout": "0.1" + _first_non_ascii(text)}),
        ]
        for method, path, who, body in attempts:
            r = api.request(method, path, json=body, headers=who.headers)
            assert r.status_code == 422, (text, path, body, r.text)
            assert error_of(r) == "invalid_input"
        reply = phx.push(f"user:{u.id}", "place_bet",
                         {"market_id": market["id"], "selection": "a", "amount": text})
        assert reply["status"] == "error" and reply["response"]["reason"] == "invalid_input"
    r = api.get("/api/wallet/transactions", params={"limit": "５"}, headers=u.headers)
    assert r.status_code == 422 and error_of(r) == "invalid_input"
    assert api.get("/api/wallet/balance", headers=u.headers).json()["balance"] == "10.00"
    assert api.get(f"/api/events/{event['event']['id']}").json()["event"]["markets"][0][
        "selections"] == selections
