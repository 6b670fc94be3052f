"""Bearer tokens: HS256 JWTs with `sub` (user id), `role`, `jti`, `iat`, `exp`.

The signing secret is `LOOTIFY_JWT_SECRET`, else one generated on first use and kept
in `DATA_DIR/jwt_secret` (mode 0600), so every process of the cluster and every
restart signs and checks with the same key.

Logout revokes a token by its `jti` in `users.revoked_tokens`, which every replica
reads, until the token's own expiry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncpg
import jwt

from actors.runtime.breaker import CircuitOpen, is_outage
from actors.settings import DATA_DIR

from ..errors import Unauthenticated
from ..settings import TokenSettings

ALGORITHM = "HS256"
# How long a check waits for the deny-list's refresh: past it (PostgreSQL hung or down)
# the token is checked against the copy this process has.
REFRESH_WAIT_S = 1.0
# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)
DEFAULT_TTL_S = TokenSettings.ttl_s
SECRET_FILE = "jwt_secret"
ROLES = frozenset({"player", "operator", "admin"})

_secret_lock = threading.Lock()
_secret: str | None = None


class _HasIdentity(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def role(self) -> str: ...


@dataclass(frozen=True)
class Claims:
    user_id: str
    role: str
    jti: str
    issued_at: int
    expires_at: int

    @property
    def sub(self) -> str:
        return self.user_id


# -- the secret ----------------------------------------------------------------------------


def load_secret(data_dir: Path | None = None, name: str = SECRET_FILE) -> str:
    """The secret in `data_dir/<name>` (`jwt_secret`), created if missing.

    Creation is atomic and race-free across processes: the new secret is written to a
    private temporary file which is then hard-linked to its final name; `link` fails if
    another process got there first, and then that process's secret is used. No reader
    ever sees a partly written file."""
    directory = Path(data_dir if data_dir is not None else DATA_DIR)
    path = directory / name
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"{path} is empty: delete it to generate a new JWT secret")
    return value


def secret() -> str:
    """`LOOTIFY_JWT_SECRET`, else the shared file's secret (read once per process)."""
    global _secret
    configured = TokenSettings.from_env().secret
    if configured:
        return configured
    if _secret is None:
        with _secret_lock:
            if _secret is None:
                _secret = load_secret()
    return _secret


def ttl_s() -> int:
    return TokenSettings.from_env().ttl_s


# -- issue and verify ----------------------------------------------------------------------


def issue(user: _HasIdentity, *, ttl: int | None = None, now: float | None = None) -> str:
    """A signed token for `user` (anything with `id` and `role`, e.g. `users.User`)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "jti": uuid.uuid4().hex,
        "iat": issued,
        "exp": issued + (ttl_s() if ttl is None else ttl),
    }
    return jwt.encode(claims, secret(), algorithm=ALGORITHM)


# Tokens whose signature and shape were checked, by (secret, token): a client sends
# the same token with every request, and checking an HS256 signature again cost more
# than the rest of authentication. Expiry is still checked at every use.
_VERIFIED_MAX = 100_000
_verified: dict[tuple[str, str], Claims] = {}


def decode(token: object) -> Claims:
    """Check signature, expiry and shape (no database): `Unauthenticated` otherwise."""
    if not isinstance(token, str) or not token:
        raise Unauthenticated("missing token")
    key = (secret(), token)
    known = _verified.get(key)
    if known is not None:
        if known.expires_at <= time.time():
            del _verified[key]
            raise Unauthenticated("token expired")
        return known
    claims = _check(token, key[0])
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[key] = claims
    return claims


def _check(token: str, signing_secret: str) -> Claims:
    try:
        raw = jwt.decode(
            token,
            signing_secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "role", "jti", "iat", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("invalid token") from exc
    sub, role, jti = raw.get("sub"), raw.get("role"), raw.get("jti")
    if not isinstance(sub, str) or not isinstance(jti, str) or role not in ROLES:
        raise Unauthenticated("invalid token")
    try:
        uuid.UUID(sub)
    except ValueError as exc:
        raise Unauthenticated("invalid token") from exc
    return Claims(
        user_id=sub, role=role, jti=jti, issued_at=int(raw["iat"]), expires_at=int(raw["exp"])
    )


class RevocationCache:
    """This process's copy of the deny-list, followed from PostgreSQL as a feed.

    Trade-off: the copy is refreshed at most every `ttl` seconds, so checking a token
    costs no query (one small read per process per `ttl`, whatever the number of
    users); the price is that a logout on another replica may take up to `ttl`
    seconds to be refused here. A logout on this replica is seen at once. With
    `ttl=0` every check reads the feed first."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._revoked: dict[str, float] = {}  # jti -> token expiry (epoch seconds)
        self._seq = 0
        self._synced_at = float("-inf")

    def due(self) -> bool:
        return time.monotonic() - self._synced_at >= self.ttl

    async def refresh(self, pool: asyncpg.Pool) -> None:
        # Claimed before the read, so concurrent checks go on with the current copy
        # instead of all reading the feed at once.
        claimed, self._synced_at = self._synced_at, time.monotonic()
        try:
            async with pool.acquire() as c:
                rows = await c.fetch(
                    "select seq, jti, extract(epoch from expires_at)::float8 as expires "
                    "from users.revoked_tokens where seq > $1 order by seq",
                    self._seq,
                )
        except BaseException:
            self._synced_at = claimed
            raise
        for r in rows:
            self._revoked[r["jti"]] = r["expires"]
            self._seq = r["seq"]
        if len(self._revoked) > 100_000:
            now = time.time()
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def mark_revoked(self, jti: str, expires_at: float) -> None:
        self._revoked[jti] = expires_at

    def clear(self) -> None:
        self._revoked.clear()
        self._seq = 0
        self._synced_at = float("-inf")


DEFAULT_CACHE = RevocationCache(TokenSettings.from_env().revocation_cache_s)


async def verify(
    pool: asyncpg.Pool, token: object, *, cache: RevocationCache | None = None
) -> Claims:
    """The claims of a valid, unexpired, unrevoked token; `Unauthenticated` otherwise."""
    claims = decode(token)
    cache = DEFAULT_CACHE if cache is None else cache
    if not cache.is_revoked(claims.jti) and cache.due():
        await _refresh_within(cache, pool)
    if cache.is_revoked(claims.jti):
        raise Unauthenticated("token revoked")
    return claims


async def _refresh_within(cache: RevocationCache, pool: asyncpg.Pool) -> None:
    """Refresh the deny-list, waiting `REFRESH_WAIT_S` at most. With PostgreSQL
    unavailable, tokens are checked against the copy this process has (no logout can be
    stored meanwhile either), so reads that need no database still answer; the
    refresh goes on and the next due check reads the feed again."""
    task = asyncio.ensure_future(cache.refresh(pool))
    # Not wait_for: cancelling a query on a hung PostgreSQL waits on PostgreSQL.
    await asyncio.wait({task}, timeout=REFRESH_WAIT_S)
    if not task.done():
        task.add_done_callback(_log_outcome)
        return
    exc = task.exception()
    if exc is None:
        return
    if isinstance(exc, CircuitOpen) or is_outage(exc):
        log.warning("revocations not refreshed, checking the copy: %r", exc)
        return
    raise exc


def _log_outcome(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("revocations not refreshed, checking the copy: %r", task.exception())


async def revoke(
    pool: asyncpg.Pool, claims: Claims, *, cache: RevocationCache | None = None
) -> None:
    """Refuse this token from now on, on every replica (within the cache's ttl elsewhere)."""
    async with pool.acquire() as c:
        await c.execute(
            "insert into users.revoked_tokens (jti, expires_at) values ($1, to_timestamp($2)) "
            "on conflict (jti) do nothing",
            claims.jti,
            float(claims.expires_at),
        )
    (DEFAULT_CACHE if cache is None else cache).mark_revoked(claims.jti, claims.expires_at)


async def purge_revoked(pool: asyncpg.Pool) -> int:
    """Forget revocations of tokens that have expired anyway; returns how many."""
    async with pool.acquire() as c:
        deleted = await c.fetchval(
            "with d as (delete from users.revoked_tokens where expires_at < now() returning 1) "
            "select count(*) from d"
        )
    return int(deleted)
