from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from gateway.auth import tokens
from gateway.auth.users import User
from gateway.errors import Unauthenticated

ALICE = User(
    id="6f1c1a36-2c7d-4a53-9a43-8d2b0a1e5c11", email="a@x.io", username="alice", role="operator"
)


def test_issue_and_verify(db):
    async def body(pool):
        token = tokens.issue(ALICE)
        claims = await tokens.verify(pool, token, cache=tokens.RevocationCache(ttl=0))
        assert claims.user_id == ALICE.id and claims.role == "operator"
        assert claims.expires_at - claims.issued_at == tokens.DEFAULT_TTL_S
        raw = jwt.decode(token, options={"verify_signature": False})
        assert set(raw) == {"sub", "role", "jti", "iat", "exp"}
        assert jwt.get_unverified_header(token)["alg"] == "HS256"

    db(body)


def test_ttl_setting(monkeypatch):
    monkeypatch.setenv("LOOTIFY_JWT_TTL_S", "60")
    claims = tokens.decode(tokens.issue(ALICE))
    assert claims.expires_at - claims.issued_at == 60


@pytest.mark.parametrize("token", [None, "", "not.a.jwt", "abc"])
def test_missing_or_garbage(db, token):
    async def body(pool):
        with pytest.raises(Unauthenticated) as err:
            await tokens.verify(pool, token)
        assert err.value.status == 401

    db(body)


def test_expired(db):
    async def body(pool):
        token = tokens.issue(ALICE, ttl=10, now=time.time() - 100)
        with pytest.raises(Unauthenticated, match="expired"):
            await tokens.verify(pool, token)

    db(body)


def test_tampered_and_foreign_signature(db, monkeypatch):
    async def body(pool):
        header, payload, sig = tokens.issue(ALICE).split(".")
        forged_payload = jwt.utils.base64url_encode(
            jwt.utils.base64url_decode(payload).replace(b'"operator"', b'"admin"')
        ).decode()
        with pytest.raises(Unauthenticated, match="invalid"):
            await tokens.verify(pool, f"{header}.{forged_payload}.{sig}")
        now = int(time.time())
        claims = {"sub": ALICE.id, "role": "admin", "jti": "j", "iat": now, "exp": now + 60}
        foreign = jwt.encode(claims, "some-other-secret-of-sufficient-length!!", algorithm="HS256")
        with pytest.raises(Unauthenticated):
            await tokens.verify(pool, foreign)
        unsigned = jwt.encode(claims, None, algorithm="none")
        with pytest.raises(Unauthenticated):
            await tokens.verify(pool, unsigned)
        no_role = jwt.encode(
            {k: v for k, v in claims.items() if k != "role"},
            os.environ["LOOTIFY_JWT_SECRET"],
            algorithm="HS256",
        )
        with pytest.raises(Unauthenticated):
            await tokens.verify(pool, no_role)

    db(body)


def test_revoked_everywhere(db):
    async def body(pool):
        token = tokens.issue(ALICE)
        here, elsewhere = tokens.RevocationCache(ttl=60), tokens.RevocationCache(ttl=0)
        claims = await tokens.verify(pool, token, cache=here)
        await tokens.verify(pool, token, cache=elsewhere)
        await tokens.revoke(pool, claims, cache=here)
        with pytest.raises(Unauthenticated, match="revoked"):  # this replica: at once
            await tokens.verify(pool, token, cache=here)
        with pytest.raises(Unauthenticated, match="revoked"):  # ... without a query
            await tokens.verify(None, token, cache=here)
        with pytest.raises(Unauthenticated, match="revoked"):  # another: from PostgreSQL
            await tokens.verify(pool, token, cache=elsewhere)
        with pytest.raises(Unauthenticated, match="revoked"):  # a fresh process
            await tokens.verify(pool, token, cache=tokens.RevocationCache())
        other = await tokens.verify(pool, tokens.issue(ALICE), cache=elsewhere)
        assert other.jti != claims.jti
        await tokens.revoke(pool, claims)  # twice is harmless
        assert await tokens.purge_revoked(pool) == 0

    db(body)


def test_secret_file_created_once_and_private(tmp_path):
    with ThreadPoolExecutor(8) as ex:
        secrets_seen = set(ex.map(lambda _: tokens.load_secret(tmp_path), range(16)))
    assert len(secrets_seen) == 1
    path = tmp_path / tokens.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secrets_seen.pop()) >= 64
    assert [p.name for p in tmp_path.iterdir()] == [tokens.SECRET_FILE]  # no temp files left


def test_secret_creation_race_keeps_the_first(tmp_path, monkeypatch):
    """Another process creates the file between our read and our create: we must take
    its secret, never overwrite it."""
    path = tmp_path / tokens.SECRET_FILE
    path.write_text("the-winner\n")
    real, calls = tokens._read_secret, []

    def late(p):
        calls.append(p)
        if len(calls) == 1:
            raise FileNotFoundError(p)
        return real(p)

    monkeypatch.setattr(tokens, "_read_secret", late)
    assert tokens.load_secret(tmp_path) == "the-winner"
    assert path.read_text() == "the-winner\n"
    assert len(calls) == 2


def test_env_secret_wins(monkeypatch):
    monkeypatch.setenv("LOOTIFY_JWT_SECRET", "from-the-environment-" + "y" * 30)
    token = tokens.issue(ALICE)
    jwt.decode(token, "from-the-environment-" + "y" * 30, algorithms=["HS256"])
