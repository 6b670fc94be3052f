"""Rate limits of the contract.

- register: 10 a minute per client IP; login: 10 a minute per client IP;
- 5 failed logins for one email lock that email for 15 minutes (whether or not it has
  an account, so the answer reveals nothing);
- bets: 50 a second per user, never per IP.

The login, register and lockout state lives in PostgreSQL (`gateway.rate_limits`,
`users.login_failures`) so every replica enforces the same limit. Each IP limit is a
GCRA / token bucket in one row, updated by a single `insert ... on conflict do update
... returning`: `limit` requests may come at once, then one every `window / limit`;
the row lock makes concurrent replicas agree exactly.

Settings: `gateway.settings.RateLimitSettings`.

A refusal raises `RateLimited` with `details["retry_after"]`, whole seconds (send it
as the `Retry-After` header).
"""

from __future__ import annotations

import math
import time

import asyncpg

from .errors import RateLimited
from .settings import RateLimitSettings


def _refuse(message: str, retry_after: float) -> RateLimited:
    return RateLimited(message, retry_after=max(1, math.ceil(retry_after)))


# Allowed: move the bucket's theoretical arrival time on and return nothing special.
# Refused: the where clause leaves the row alone and nothing is returned.
_HIT = """
    insert into gateway.rate_limits as r (bucket, tat)
    values ($1, clock_timestamp() + make_interval(secs => $2))
    on conflict (bucket) do update
        set tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => $2)
        where greatest(r.tat, clock_timestamp()) + make_interval(secs => $2)
              <= clock_timestamp() + make_interval(secs => $3)
    returning true
"""


async def hit(pool: asyncpg.Pool, bucket: str, limit: int, window_s: float) -> float | None:
    """Count one request against `bucket` (`limit` per `window_s`, shared by all
    processes). None when allowed, else the seconds until one more would be allowed."""
    interval = window_s / limit
    async with pool.acquire() as c:
        async with c.transaction():
            if await c.fetchval(_HIT, bucket, interval, window_s):
                return None
            wait = await c.fetchval(
                "select extract(epoch from tat - clock_timestamp()) - $2 + $3 "
                "from gateway.rate_limits where bucket = $1",
                bucket,
                window_s,
                interval,
            )
    return max(float(wait or 0.0), 0.0)


# One more failure for an email; a window older than the lockout period starts again.
_FAILED = """
    insert into users.login_failures as f (email, failures, window_start)
    values ($1, 1, now())
    on conflict (email) do update
        set failures = case when f.window_start < now() - make_interval(secs => $2)
                            then 1 else f.failures + 1 end,
            window_start = case when f.window_start < now() - make_interval(secs => $2)
                                then now() else f.window_start end
"""


class TokenBucket:
    """An in-process token bucket per key (the bet limit, on the hot path: no I/O).

    Each replica counts on its own: with N gateway replicas a user whose requests are
    spread over all of them could place up to N times the rate. Acceptable for a
    per-user flood guard; the money limits themselves are enforced by the wallet."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)

    def take(self, key: str, now: float | None = None) -> float | None:
        """None when allowed (one token taken), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0 - 1e-9:  # a margin for float rounding of the refill
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they are the same as absent ones."""
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


class RateLimiter:
    """One per process."""

    def __init__(self, pool: asyncpg.Pool, settings: RateLimitSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.bets = TokenBucket(self.settings.bets_per_s, self.settings.bets_burst)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    async def check_register(self, ip: str) -> None:
        if not self.enabled:
            return
        wait = await hit(self.pool, f"register:ip:{ip}", self.settings.register_per_min, 60.0)
        if wait is not None:
            raise _refuse("too many registrations from this address; try again later", wait)

    async def check_login(self, ip: str, email: str) -> None:
        """Before checking the password: the per-IP limit, then the email's lockout."""
        if not self.enabled:
            return
        wait = await hit(self.pool, f"login:ip:{ip}", self.settings.login_per_min, 60.0)
        if wait is not None:
            raise _refuse("too many login attempts from this address; try again later", wait)
        async with self.pool.acquire() as c:
            locked_for = await c.fetchval(
                "select extract(epoch from locked_until - now()) from users.login_failures "
                "where email = $1 and locked_until > now()",
                _email_key(email),
            )
        if locked_for is not None:
            raise _refuse(
                "too many failed logins for this account; try again later", float(locked_for)
            )

    async def login_failed(self, email: str) -> None:
        """Count a failed login; the `lockout_failures`-th within `lockout_s` locks the
        email for `lockout_s`."""
        if not self.enabled:
            return
        s = self.settings
        async with self.pool.acquire() as c:
            async with c.transaction():  # the upsert's row lock serialises concurrent failures
                await c.execute(_FAILED, _email_key(email), s.lockout_s)
                await c.execute(
                    "update users.login_failures "
                    "set locked_until = now() + make_interval(secs => $3), failures = 0, "
                    "    window_start = now() "
                    "where email = $1 and failures >= $2",
                    _email_key(email),
                    s.lockout_failures,
                    s.lockout_s,
                )

    async def login_succeeded(self, email: str) -> None:
        """A successful login forgets the email's failures."""
        if not self.enabled:
            return
        async with self.pool.acquire() as c:
            await c.execute(
                "delete from users.login_failures where email = $1 and "
                "(locked_until is null or locked_until <= now())",
                _email_key(email),
            )

    def check_bet(self, user_id: str) -> None:
        """The per-user bet limit, in process (see `TokenBucket`)."""
        if not self.enabled:
            return
        wait = self.bets.take(str(user_id))
        if wait is not None:
            raise _refuse("too many bets; slow down", wait)


def _email_key(email: object) -> str:
    return str(email).strip().lower()[:320]


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Delete idle buckets and old failure counts; returns how many rows went."""
    async with pool.acquire() as c:
        async with c.transaction():
            a = await c.fetchval(
                "with d as (delete from gateway.rate_limits where tat < now() returning 1) "
                "select count(*) from d"
            )
            b = await c.fetchval(
                "with d as (delete from users.login_failures"
                " where coalesce(locked_until, window_start) < now() - interval '1 day'"
                " returning 1) select count(*) from d"
            )
    return int(a) + int(b)
