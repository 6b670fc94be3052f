"""User accounts: registration, password check, lookup.

Passwords are hashed with scrypt (stdlib) and stored as a self-describing string
`scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can be raised later without
breaking old hashes (`needs_rehash` tells when a stored hash is below the current cost).
Hashing takes tens of milliseconds of CPU: it runs in a worker thread so the event
loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from actors.errors import InvalidInput

from ..errors import EmailTaken, Unauthenticated

ROLES = ("player", "operator", "admin")

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# scrypt needs 128 * n * r bytes; allow up to 8x today's cost for future hashes.
_SCRYPT_MAXMEM = 128 * SCRYPT_R * SCRYPT_N * 8 + 1024 * 1024

EMAIL_MAX = 254
USERNAME_MIN, USERNAME_MAX = 3, 32
PASSWORD_MIN, PASSWORD_MAX = 8, 1024

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_WRONG_CREDENTIALS = "invalid email or password"


@dataclass(frozen=True)
class User:
    id: str
    email: str
    username: str
    role: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "email": self.email, "username": self.username, "role": self.role}

    @classmethod
    def _from_row(cls, row: asyncpg.Record) -> User:
        return cls(
            id=str(row["id"]), email=row["email"], username=row["username"], role=row["role"]
        )


# -- passwords -----------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=HASH_BYTES
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of `password` against a stored hash; False for any
    malformed hash rather than an exception."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def needs_rehash(encoded: str) -> bool:
    try:
        scheme, n, r, p, _salt, _hash = encoded.split("$")
        return scheme != "scrypt" or (int(n), int(r), int(p)) < (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    except ValueError:
        return True


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password, checked when the email is unknown, so that a
    wrong email costs the same time as a wrong password and timing reveals no accounts."""
    return hash_password(secrets.token_urlsafe(16))


# -- validation ----------------------------------------------------------------------------


def normalize_email(email: object) -> str:
    if not isinstance(email, str):
        raise InvalidInput("email must be a string", field="email")
    value = email.strip().lower()
    if len(value) > EMAIL_MAX or not _EMAIL.match(value):
        raise InvalidInput("email is not a valid address", field="email")
    return value


def _check_username(username: object) -> str:
    if not isinstance(username, str):
        raise InvalidInput("username must be a string", field="username")
    value = username.strip()
    if not USERNAME_MIN <= len(value) <= USERNAME_MAX:
        raise InvalidInput(
            f"username must be {USERNAME_MIN} to {USERNAME_MAX} characters", field="username"
        )
    if _CONTROL.search(value):
        raise InvalidInput("username contains control characters", field="username")
    return value


def _check_password(password: object) -> str:
    if not isinstance(password, str):
        raise InvalidInput("password must be a string", field="password")
    if len(password) < PASSWORD_MIN:
        raise InvalidInput(f"password must be at least {PASSWORD_MIN} characters", field="password")
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f"password must be at most {PASSWORD_MAX} characters", field="password")
    return password


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    return str(role)


# -- the service ---------------------------------------------------------------------------


async def create_user(
    pool: asyncpg.Pool, email: str, username: str, password: str, role: str = "player"
) -> User:
    """Register a user. 422 `invalid_input` for a malformed field, 409 `email_taken`
    when the (case-insensitive) email already has an account."""
    email = normalize_email(email)
    username = _check_username(username)
    password = _check_password(password)
    role = _check_role(role)
    encoded = await asyncio.to_thread(hash_password, password)
    try:
        async with pool.acquire() as c:
            row = await c.fetchrow(
                "insert into users.users (id, email, username, password_hash, role) "
                "values ($1, $2, $3, $4, $5) returning id, email, username, role",
                uuid.uuid4(),
                email,
                username,
                encoded,
                role,
            )
    except asyncpg.UniqueViolationError as exc:
        raise EmailTaken("an account with this email already exists", field="email") from exc
    return User._from_row(row)


async def authenticate(pool: asyncpg.Pool, email: object, password: object) -> User:
    """The user with these credentials; 401 with the same message whether the email
    or the password is wrong."""
    if not isinstance(email, str) or not isinstance(password, str):
        raise Unauthenticated(_WRONG_CREDENTIALS)
    email = email.strip().lower()
    if len(password) > PASSWORD_MAX:  # never spend scrypt time on a huge input
        raise Unauthenticated(_WRONG_CREDENTIALS)
    async with pool.acquire() as c:
        row = await c.fetchrow(
            "select id, email, username, role, password_hash from users.users where email = $1",
            email,
        )
    encoded = row["password_hash"] if row is not None else _dummy_hash()
    ok = await asyncio.to_thread(verify_password, password, encoded)
    if row is None or not ok:
        raise Unauthenticated(_WRONG_CREDENTIALS)
    return User._from_row(row)


async def get_user(pool: asyncpg.Pool, user_id: object) -> User | None:
    """The user with this id, or None (also for a string that is not a UUID)."""
    try:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        return None
    async with pool.acquire() as c:
        row = await c.fetchrow(
            "select id, email, username, role from users.users where id = $1", uid
        )
    return User._from_row(row) if row is not None else None


async def set_role(pool: asyncpg.Pool, user_id: object, role: str) -> User | None:
    """Change a user's role (for the admin CLI); None when there is no such user.
    Tokens already issued keep the old role until they expire."""
    role = _check_role(role)
    try:
        uid = uuid.UUID(str(user_id))
    except ValueError:
        return None
    async with pool.acquire() as c:
        row = await c.fetchrow(
            "update users.users set role = $2 where id = $1 returning id, email, username, role",
            uid,
            role,
        )
    return User._from_row(row) if row is not None else None
