from __future__ import annotations

import asyncio

import pytest

from gateway.errors import RateLimited
from gateway.ratelimit import RateLimiter, TokenBucket
from gateway.settings import RateLimitSettings

ON = RateLimitSettings()


async def _allowed(call, n):
    ok = 0
    for _ in range(n):
        try:
            await call()
            ok += 1
        except RateLimited:
            pass
    return ok


def test_eleventh_login_in_a_minute_is_refused(db):
    async def body(pool):
        limiter = RateLimiter(pool, ON)
        for i in range(10):
            await limiter.check_login("10.0.0.1", f"user{i}@example.com")
        with pytest.raises(RateLimited) as err:
            await limiter.check_login("10.0.0.1", "user99@example.com")
        assert err.value.status == 429 and err.value.code == "rate_limited"
        assert 1 <= err.value.details["retry_after"] <= 6  # one slot frees every 6 s
        await limiter.check_login("10.0.0.2", "user0@example.com")  # per IP
        # Registration has its own budget.
        assert await _allowed(lambda: limiter.check_register("10.0.0.1"), 11) == 10

    db(body)


def test_limit_is_shared_by_replicas_and_exact_under_concurrency(db):
    async def body(pool):
        a, b = RateLimiter(pool, ON), RateLimiter(pool, ON)

        async def attempt(limiter):
            try:
                await limiter.check_register("192.0.2.7")
                return True
            except RateLimited:
                return False

        results = await asyncio.gather(*(attempt(a if i % 2 else b) for i in range(20)))
        assert results.count(True) == 10

    db(body)


def test_five_failures_lock_the_email(db):
    async def body(pool):
        limiter = RateLimiter(pool, RateLimitSettings(login_per_min=1000))
        email = "victim@example.com"
        for _ in range(4):
            await limiter.check_login("10.0.0.1", email)
            await limiter.login_failed(email)
        await limiter.check_login("10.0.0.1", email)  # 4 failures: still open
        await limiter.login_failed(email)
        for ip in ("10.0.0.1", "10.0.0.9"):  # locked, whatever the address
            with pytest.raises(RateLimited) as err:
                await limiter.check_login(ip, "  VICTIM@example.com")
            assert 890 <= err.value.details["retry_after"] <= 900
        await limiter.check_login("10.0.0.1", "other@example.com")
        # The lock ends after its time, and counting starts again.
        await pool.execute("update users.login_failures set locked_until = now()")
        await limiter.check_login("10.0.0.1", email)

    db(body)


def test_success_resets_failures(db):
    async def body(pool):
        limiter = RateLimiter(pool, ON)
        email = "forgetful@example.com"
        for _ in range(4):
            await limiter.login_failed(email)
        await limiter.login_succeeded(email)
        for _ in range(4):
            await limiter.login_failed(email)
        await limiter.check_login("10.0.0.1", email)

    db(body)


def test_off_switch(db):
    async def body(pool):
        limiter = RateLimiter(pool, RateLimitSettings.from_env({"LOOTIFY_RATE_LIMITS": "off"}))
        assert not limiter.enabled
        for _ in range(30):
            await limiter.check_login("10.0.0.1", "x@example.com")
            await limiter.check_register("10.0.0.1")
            await limiter.login_failed("x@example.com")
        for _ in range(200):
            limiter.check_bet("u1")
        assert await pool.fetchval("select count(*) from gateway.rate_limits") == 0

    db(body)


def test_settings_from_env():
    s = RateLimitSettings.from_env(
        {"LOOTIFY_RATE_LOGIN_PER_MIN": "3", "LOOTIFY_RATE_BETS_PER_S": "5"}
    )
    assert s.enabled and s.login_per_min == 3 and s.bets_per_s == 5 and s.bets_burst == 5
    assert s.register_per_min == 10 and s.lockout_failures == 5 and s.lockout_s == 900
    assert RateLimitSettings.from_env({}) == RateLimitSettings()
    assert RateLimitSettings.from_env({"LOOTIFY_RATE_LIMITS": "on"}).enabled


def test_bets_token_bucket_per_user():
    bucket = TokenBucket(rate=50, burst=50)
    assert all(bucket.take("u1", now=100.0) is None for _ in range(50))
    wait = bucket.take("u1", now=100.0)
    assert wait == pytest.approx(0.02)
    assert bucket.take("u2", now=100.0) is None  # another user is not affected
    assert bucket.take("u1", now=100.02) is None  # refilled one token
    assert bucket.take("u1", now=100.02) is not None
    assert sum(bucket.take("u1", now=101.5) is None for _ in range(100)) == 50


def test_check_bet_raises_with_retry_after():
    limiter = RateLimiter(pool=None, settings=RateLimitSettings(bets_per_s=2, bets_burst=2))
    limiter.check_bet("u1")
    limiter.check_bet("u1")
    with pytest.raises(RateLimited) as err:
        limiter.check_bet("u1")
    assert err.value.details["retry_after"] == 1


def test_bucket_memory_is_bounded():
    bucket = TokenBucket(rate=10, burst=10, max_keys=100)
    for i in range(1000):
        bucket.take(f"u{i}", now=float(i))
    assert len(bucket._buckets) <= 100
