"""`Idempotency-Key` for money-moving POSTs, Stripe-style, shared by all replicas.

Use in a handler::

    h = idempotency.request_hash(request.method, request.url.path, body_bytes)
    replay = await idempotency.begin(pool, user_id, key, h)   # 409s raise here
    if replay is not None:
        return JSONResponse(replay.body, status_code=replay.status)
    try:
        status, body = await do_the_work()                     # LootifyError -> 4xx
    except LootifyError as exc:
        if exc.status >= 500:
            await idempotency.abandon(pool, user_id, key)      # may be retried
            raise
        status, body = exc.status, {"error": exc.to_dict()}    # 4xx are stored too
    except BaseException:
        await idempotency.abandon(pool, user_id, key)
        raise
    await idempotency.complete(pool, user_id, key, status, body)

The first `begin` for a (user, key) inserts an `in_progress` row; the primary key makes
that insert the single point of decision, so of any number of concurrent identical
requests exactly one runs. The others get `IdempotencyInProgress` while it runs and
the stored answer once it is done.

An `in_progress` row whose request died with its process, or could not be abandoned
(PostgreSQL was down when it failed), is taken over by a retry after `lease_s`
(`LOOTIFY_IDEMPOTENCY_LEASE_S`, default 10 s: past the request deadline, 4.5 s, after
which no replica still works on it). Money operations below are keyed by reference id
as well, so a takeover of a request whose message still waits in a host cannot move
money twice: the retry learns its outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from actors.errors import IdempotencyConflict, IdempotencyInProgress, InvalidInput

KEY_MAX = 255
RETENTION_S = 24 * 3600
LEASE_S = float(os.environ.get("LOOTIFY_IDEMPOTENCY_LEASE_S", 10.0))


@dataclass(frozen=True)
class Replay:
    """The stored answer of the first request with this key."""

    status: int
    body: Any


def request_hash(method: str, path: str, body: bytes | str | None) -> str:
    """Fingerprint of a request. A JSON body is canonicalised (key order, whitespace)
    so that re-serialising the same object is still "the same body"; anything else is
    compared byte for byte."""
    raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    try:
        canonical = json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        canonical = b"raw:" + raw
    h = hashlib.sha256()
    h.update(method.upper().encode("ascii", "replace") + b"\n")
    h.update(path.encode("utf-8", "replace") + b"\n")
    h.update(canonical)
    return h.hexdigest()


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > KEY_MAX:
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {KEY_MAX} characters", field="idempotency_key"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise InvalidInput("Idempotency-Key contains control characters", field="idempotency_key")
    return key


# A key's id: one key of one user, whichever replica, socket or endpoint it comes
# through. A keyed bet's id is its key's id, and the wallet takes one operation per key
# id (`actors.wallets.messages`), so a key is one request across bets and payments.
_KEY_NS = uuid.UUID("6f1c7c2e-4b1e-4d8e-9a4f-0c1d2b3a4e5f")


def key_id(user_id: str, key: str) -> str:
    return str(uuid.uuid5(_KEY_NS, f"{user_id}\n{key}"))


def _uid(user_id: object) -> uuid.UUID:
    return user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))


# The insert wins for a new key; the update takes over a key whose retention has
# passed, or whose in_progress lease ran out (its request died) for the same request.
_CLAIM = """
    insert into gateway.idempotency_keys as k
        (user_id, key, request_hash, status, locked_until, expires_at)
    values ($1, $2, $3, 'in_progress',
            now() + make_interval(secs => $4), now() + make_interval(secs => $5))
    on conflict (user_id, key) do update
        set request_hash = excluded.request_hash, status = 'in_progress',
            response_status = null, response_body = null, created_at = now(),
            locked_until = excluded.locked_until, expires_at = excluded.expires_at
        where k.expires_at < now()
           or (k.status = 'in_progress' and k.locked_until < now()
               and k.request_hash = excluded.request_hash)
    returning true
"""


async def begin(
    pool: asyncpg.Pool,
    user_id: object,
    key: str,
    request_hash: str,
    *,
    lease_s: float = LEASE_S,
    retention_s: float = RETENTION_S,
) -> Replay | None:
    """Claim `key` for this request. None: go ahead (then `complete` or `abandon`).
    A `Replay`: the same request was answered before; send its answer again.
    Raises `IdempotencyConflict` (the key was used with another request) or
    `IdempotencyInProgress` (the first request with this key is still running)."""
    key = check_key(key)
    uid = _uid(user_id)
    row = None
    async with pool.acquire() as c:
        # A row can vanish between the claim and the read (its request was abandoned):
        # then claiming again succeeds, so this settles within a couple of rounds.
        for _ in range(5):
            if await c.fetchval(_CLAIM, uid, key, request_hash, float(lease_s), float(retention_s)):
                return None
            row = await c.fetchrow(
                "select request_hash, status, response_status, response_body::text as body "
                "from gateway.idempotency_keys where user_id = $1 and key = $2",
                uid,
                key,
            )
            if row is not None:
                break
    if row is None:
        raise IdempotencyInProgress("a request with this Idempotency-Key is still running", key=key)
    if row["request_hash"] != request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request", key=key
        )
    if row["status"] != "done":
        raise IdempotencyInProgress("a request with this Idempotency-Key is still running", key=key)
    body = json.loads(row["body"]) if row["body"] is not None else None
    return Replay(status=int(row["response_status"]), body=body)


async def complete(
    pool: asyncpg.Pool,
    user_id: object,
    key: str,
    status: int,
    body: Any,
    *,
    retention_s: float = RETENTION_S,
) -> bool:
    """Store the answer (any status below 500) for replays; False if this request no
    longer held the key (it was abandoned or taken over meanwhile)."""
    async with pool.acquire() as c:
        result = await c.execute(
            """
            update gateway.idempotency_keys
               set status = 'done', response_status = $3, response_body = $4::text::jsonb,
                   locked_until = null, expires_at = now() + make_interval(secs => $5)
             where user_id = $1 and key = $2 and status = 'in_progress'
            """,
            _uid(user_id),
            key,
            int(status),
            json.dumps(body),
            float(retention_s),
        )
    return result.endswith(" 1")


async def abandon(pool: asyncpg.Pool, user_id: object, key: str) -> None:
    """Forget an in-progress key whose request failed with a 5xx (or crashed), so the
    client can retry it with the same key."""
    async with pool.acquire() as c:
        await c.execute(
            "delete from gateway.idempotency_keys "
            "where user_id = $1 and key = $2 and status = 'in_progress'",
            _uid(user_id),
            key,
        )


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Delete keys past their retention; returns how many."""
    async with pool.acquire() as c:
        deleted = await c.fetchval(
            "with d as (delete from gateway.idempotency_keys where expires_at < now() returning 1) "
            "select count(*) from d"
        )
    return int(deleted)
