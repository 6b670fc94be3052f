"""What routes share: the replica context, the caller's identity and role, the client
address, and `Idempotency-Key` handling."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from actors.errors import LootifyError

from . import idempotency
from .auth import tokens
from .context import Context
from .errors import Forbidden, Unauthenticated

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

_REFERENCE_SAFE = re.compile(r"^[\w:.\-]{1,150}$")


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


async def current_claims(request: Request) -> tokens.Claims:
    """The verified claims of `Authorization: Bearer <jwt>`; 401 otherwise."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("missing Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("expected Authorization: Bearer <token>")
    claims = await tokens.verify(ctx_of(request).db(), token.strip())
    request.state.claims = claims
    return claims


Authenticated = Depends(current_claims)


def require_roles(*roles: str) -> Callable[..., Awaitable[tokens.Claims]]:
    async def check(claims: tokens.Claims = Authenticated) -> tokens.Claims:
        if claims.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}")
        return claims

    return check


Operator = Depends(require_roles("operator", "admin"))
# Documents the header in OpenAPI; `idempotent` reads it from the request.
IdempotencyKey = Header(
    None, alias="Idempotency-Key", max_length=idempotency.KEY_MAX,
    description="Replays the first answer for the same key and body (kept 24 hours); "
    "409 idempotency_conflict for another body, idempotency_in_progress while it runs.",
)


def client_ip(request: Request) -> str:
    peer = request.client.host if request.client else "unknown"
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    trusted = ctx_of(request).settings.trusted_proxies
    if forwarded and trusted:
        try:
            if any(ipaddress.ip_address(peer) in net for net in trusted):
                # The rightmost entry, over every header line, is the one our trusted
                # proxy added: a client's own header comes before it (a proxy that
                # adds a line of its own leaves the client's first line in place).
                return forwarded.split(",")[-1].strip() or peer
        except ValueError:
            pass
    return peer


def reference_for(kind: str, key: str | None) -> str:
    """The wallet reference id of a money operation: from the Idempotency-Key when
    given (so a retry after a crash is still one operation), else fresh."""
    if key is None:
        return f"http:{kind}:{uuid.uuid4().hex}"
    if _REFERENCE_SAFE.match(key):
        return f"http:{kind}:{key}"
    return f"http:{kind}:h{hashlib.sha256(key.encode()).hexdigest()[:48]}"


Work = Callable[[str | None], Awaitable[tuple[int, Any]]]


async def idempotent(request: Request, claims: tokens.Claims, work: Work) -> JSONResponse:
    """Run `work(key)` under the request's `Idempotency-Key` (if any): a replay gets
    the first answer; 4xx answers are stored too, 5xx are not (the client retries)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        status, body = await work(None)
        return JSONResponse(body, status_code=status)
    pool = ctx_of(request).db()
    fingerprint = idempotency.request_hash(request.method, request.url.path, await request.body())
    replay = await idempotency.begin(pool, claims.user_id, key, fingerprint)
    if replay is not None:
        return JSONResponse(replay.body, status_code=replay.status,
                            headers={"Idempotent-Replayed": "true"})
    try:
        status, body = await work(key)
    except LootifyError as exc:
        if exc.status >= 500:
            await _abandon(pool, claims.user_id, key)
            raise
        status, body = exc.status, {"error": exc.to_dict()}
    except BaseException:
        await _abandon(pool, claims.user_id, key)
        raise
    try:
        await idempotency.complete(pool, claims.user_id, key, status, body)
    except Exception as exc:
        # The work is done (the money moved): its answer is the truth, told now. The key
        # stays in progress until its lease ends; then a retry runs the work again and
        # the reference id makes that a replay. (The chaos run saw a deposit applied and
        # answered 500: PostgreSQL shut down as its answer was being stored.)
        log.warning("storing the answer for an Idempotency-Key failed: %r", exc)
    return JSONResponse(body, status_code=status)


async def _abandon(pool: Any, user_id: str, key: str) -> None:
    # Shielded: a cancelled request (client gone) must still free its key.
    try:
        await asyncio.shield(idempotency.abandon(pool, user_id, key))
    except Exception:
        pass
