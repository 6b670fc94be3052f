from __future__ import annotations

import pytest

from actors.errors import InvalidInput
from gateway.auth import users
from gateway.errors import EmailTaken, Unauthenticated


def test_create_and_get(db):
    async def body(pool):
        u = await users.create_user(pool, "  Alice@Example.COM ", "alice", "correct horse")
        assert u.email == "alice@example.com"
        assert u.role == "player"
        assert u.to_dict() == {"id": u.id, "email": u.email, "username": "alice", "role": "player"}
        assert await users.get_user(pool, u.id) == u
        assert await users.get_user(pool, "not-a-uuid") is None
        assert await users.get_user(pool, "00000000-0000-0000-0000-000000000000") is None
        stored = await pool.fetchval(
            "select password_hash from users.users where id = $1::uuid", u.id
        )
        assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored

    db(body)


def test_duplicate_email_is_409_email_taken(db):
    async def body(pool):
        await users.create_user(pool, "bob@example.com", "bob", "password1")
        with pytest.raises(EmailTaken) as err:
            await users.create_user(pool, "BOB@example.com", "bobby", "password2")
        assert err.value.status == 409 and err.value.code == "email_taken"

    db(body)


@pytest.mark.parametrize(
    "email, username, password, role",
    [
        ("no-at-sign", "carol", "password1", "player"),
        ("carol@nodot", "carol", "password1", "player"),
        ("carol@example.com", "ca", "password1", "player"),
        ("carol@example.com", "c" * 33, "password1", "player"),
        ("carol@example.com", "carol", "short", "player"),
        ("carol@example.com", "carol", "password1", "root"),
        ("carol@example.com", "carol", 12345678, "player"),
    ],
)
def test_validation_is_422(db, email, username, password, role):
    async def body(pool):
        with pytest.raises(InvalidInput) as err:
            await users.create_user(pool, email, username, password, role)
        assert err.value.status == 422
        assert await pool.fetchval("select count(*) from users.users") == 0

    db(body)


def test_authenticate(db):
    async def body(pool):
        u = await users.create_user(pool, "dave@example.com", "dave", "password1", "operator")
        assert await users.authenticate(pool, "DAVE@example.com", "password1") == u
        with pytest.raises(Unauthenticated) as wrong_password:
            await users.authenticate(pool, "dave@example.com", "password2")
        with pytest.raises(Unauthenticated) as wrong_email:
            await users.authenticate(pool, "nobody@example.com", "password1")
        assert wrong_password.value.status == 401
        assert wrong_password.value.message == wrong_email.value.message

    db(body)


def test_password_hash_roundtrip_and_rehash():
    encoded = users.hash_password("s3cret-pass", n=2**10)
    assert users.verify_password("s3cret-pass", encoded)
    assert not users.verify_password("s3cret-pasS", encoded)
    assert not users.verify_password("s3cret-pass", "garbage")
    assert users.needs_rehash(encoded)  # below today's cost
    assert not users.needs_rehash(users.hash_password("x" * 8))
    assert users.needs_rehash("pbkdf2$99999$8$1$c2FsdA==$aGFzaA==")  # another scheme
    assert users.needs_rehash("garbage")
