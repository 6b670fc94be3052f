from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request

from actors.errors import IdempotencyConflict, IdempotencyInProgress, InvalidInput
from gateway import idempotency as idem
from gateway.auth.tokens import Claims
from gateway.deps import idempotent

USER = str(uuid.uuid4())
H1 = idem.request_hash("POST", "/api/wallet/deposit", b'{"amount": "10.00"}')
H2 = idem.request_hash("POST", "/api/wallet/deposit", b'{"amount": "20.00"}')


def test_request_hash():
    assert H1 == idem.request_hash("post", "/api/wallet/deposit", b'{ "amount":"10.00" }')
    assert H1 != H2
    assert H1 != idem.request_hash("POST", "/api/wallet/withdraw", b'{"amount": "10.00"}')
    assert idem.request_hash("POST", "/x", b"\xff") != idem.request_hash("POST", "/x", b"\xfe")
    assert idem.request_hash("POST", "/x", None) == idem.request_hash("POST", "/x", b"")


def test_first_runs_then_replays(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k1", H1) is None
        assert await idem.complete(pool, USER, "k1", 200, {"balance": "10.00"})
        replay = await idem.begin(pool, USER, "k1", H1)
        assert replay == idem.Replay(200, {"balance": "10.00"})
        # Keys are per user: another user's "k1" is a new request.
        assert await idem.begin(pool, uuid.uuid4(), "k1", H2) is None

    db(body)


def test_4xx_answers_are_replayed_too(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k", H1) is None
        error = {"error": {"code": "insufficient_funds", "message": "no"}}
        await idem.complete(pool, USER, "k", 409, error)
        assert await idem.begin(pool, USER, "k", H1) == idem.Replay(409, error)

    db(body)


def test_different_body_conflicts(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k", H1) is None
        with pytest.raises(IdempotencyConflict) as err:  # while in progress
            await idem.begin(pool, USER, "k", H2)
        assert err.value.status == 409 and err.value.code == "idempotency_conflict"
        await idem.complete(pool, USER, "k", 201, {"ok": True})
        with pytest.raises(IdempotencyConflict):  # and once done
            await idem.begin(pool, USER, "k", H2)

    db(body)


def test_in_progress(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k", H1) is None
        with pytest.raises(IdempotencyInProgress) as err:
            await idem.begin(pool, USER, "k", H1)
        assert err.value.status == 409 and err.value.code == "idempotency_in_progress"

    db(body)


def test_abandon_allows_retry(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k", H1) is None
        await idem.abandon(pool, USER, "k")
        assert await idem.begin(pool, USER, "k", H1) is None
        await idem.complete(pool, USER, "k", 200, None)
        await idem.abandon(pool, USER, "k")  # a done key stays
        assert await idem.begin(pool, USER, "k", H1) == idem.Replay(200, None)

    db(body)


def test_dead_request_lease_and_retention(db):
    async def body(pool):
        assert await idem.begin(pool, USER, "k", H1, lease_s=0) is None  # dies at once
        assert await idem.begin(pool, USER, "k", H1) is None  # taken over
        assert not await idem.complete(pool, USER, "other", 200, {})
        assert await idem.complete(pool, USER, "k", 200, {"n": 2})
        assert await idem.begin(pool, USER, "k", H1) == idem.Replay(200, {"n": 2})
        await pool.execute("update gateway.idempotency_keys set expires_at = now() - interval '1s'")
        assert await idem.purge_expired(pool) == 1
        # Expired keys may be reused, even with another body.
        assert await idem.begin(pool, USER, "k", H2) is None
        await pool.execute("update gateway.idempotency_keys set expires_at = now() - interval '1s'")
        assert await idem.begin(pool, USER, "k", H1) is None

    db(body)


def test_retention_is_at_least_a_day(db):
    async def body(pool):
        await idem.begin(pool, USER, "k", H1)
        await idem.complete(pool, USER, "k", 200, {})
        hours = await pool.fetchval(
            "select extract(epoch from expires_at - now()) / 3600 from gateway.idempotency_keys"
        )
        assert hours >= 23.99

    db(body)


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "a\nb"])
def test_bad_keys(db, key):
    async def body(pool):
        with pytest.raises(InvalidInput):
            await idem.begin(pool, USER, key, H1)

    db(body)


def test_twenty_concurrent_identical_requests_run_once(db):
    async def body(pool):
        runs = 0

        async def request():
            nonlocal runs
            try:
                replay = await idem.begin(pool, USER, "same", H1)
            except IdempotencyInProgress:
                return "in_progress"
            if replay is not None:
                return "replay"
            runs += 1
            await asyncio.sleep(0.05)
            await idem.complete(pool, USER, "same", 201, {"bet": "b1"})
            return "ran"

        outcomes = await asyncio.gather(*(request() for _ in range(20)))
        assert runs == 1 and outcomes.count("ran") == 1
        assert set(outcomes) <= {"ran", "in_progress", "replay"}
        assert await idem.begin(pool, USER, "same", H1) == idem.Replay(201, {"bet": "b1"})

    db(body)


def test_the_work_answer_stands_when_storing_it_fails(db):
    """Found by the chaos run: a deposit was applied, then PostgreSQL shut down while
    its answer was being stored, and the client got 500 for money that had moved. The
    work's answer is the truth: it is sent; a retry after the key's lease replays."""

    async def body(pool):
        app = FastAPI()
        app.state.ctx = SimpleNamespace(db=lambda: pool)

        async def receive():
            return {"type": "http.request", "body": b'{"amount": "5.00"}', "more_body": False}

        request = Request({"type": "http", "method": "POST", "path": "/api/wallet/deposit",
                           "query_string": b"", "headers": [(b"idempotency-key", b"k-stored")],
                           "app": app}, receive)

        async def work(key):
            await pool.close()  # PostgreSQL goes away once the money has moved
            return 200, {"balance": "5.00"}

        response = await idempotent(request, Claims(str(USER), "player", "j", 0, 0), work)
        assert (response.status_code, json.loads(response.body)) == (200, {"balance": "5.00"})

    db(body)
