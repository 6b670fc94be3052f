"""Webhook signatures as Stripe makes them: the header `t=<unix time>,v1=<hex
HMAC-SHA256 of "<t>.<raw body>">`, checked in constant time within a tolerance."""

from __future__ import annotations

import hashlib
import hmac
import time

from actors.errors import LootifyError

HEADER = "Lootify-Signature"
SCHEME = "v1"


class BadSignature(LootifyError):
    status = 400
    code = "invalid_signature"


class StaleSignature(LootifyError):
    """Signed too long ago (or in the future): a captured request replayed later."""

    status = 400
    code = "stale_signature"


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header's value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={_digest(secret, t, body)}"


def verify(header: str | None, body: bytes, secret: str, tolerance_s: float,
           now: float | None = None) -> None:
    """Raise `BadSignature` or `StaleSignature` unless `header` signs `body` with
    `secret` within `tolerance_s` of `now`."""
    if not header:
        raise BadSignature(f"missing {HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise BadSignature("the signature's timestamp is not a number") from None
        elif name == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise BadSignature(f"{HEADER} must be t=<time>,{SCHEME}=<signature>")
    expected = _digest(secret, timestamp, body)
    # Every candidate is compared, each in constant time, so timing tells nothing.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise BadSignature("the signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise StaleSignature(f"the signature is older than {int(tolerance_s)} s")
