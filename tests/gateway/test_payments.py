"""Money in and out through the payment provider (`LOOTIFY_PAYMENTS=provider`), end to
end over HTTP: a second Serve application in provider mode, whose sandbox provider
posts its signed webhooks back to it, on the session's cluster and database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from ray import serve

import serve_app
from gateway.payments.signing import HEADER, sign
from tests.polling import wait_until
from tests.serve_fixtures import replica_env

pytestmark = pytest.mark.cluster

WEBHOOK_SECRET = "whsec_test_" + "z" * 32
PREFIX = "/provider"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def provider_url(serve_url: str, database_url: str, settings) -> Iterator[str]:
    url = serve_url + PREFIX
    env = {
        **replica_env(database_url, settings),
        "LOOTIFY_PAYMENTS": "provider",
        "LOOTIFY_PAYMENTS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOTIFY_PAYMENTS_WEBHOOK_URL": url + "/api/payments/webhook",
        "LOOTIFY_WITHDRAWAL_AUTO_APPROVE_BELOW": "10.00",
        # Long enough for a test to post its own events first; three copies of each,
        # as providers deliver at least once.
        "LOOTIFY_SANDBOX_DELAY_S": "1.5",
        "LOOTIFY_SANDBOX_DELIVERIES": "3",
        "LOOTIFY_CORS_ORIGINS": ORIGIN,
    }
    serve.run(serve_app.build(env, replicas=1), name="lootify-provider", route_prefix=PREFIX,
              blocking=False)
    wait_until(lambda: _healthy(url), timeout=120, interval=0.5, what="the provider-mode app")
    try:
        yield url
    finally:
        serve.delete("lootify-provider")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def pay(provider_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=provider_url, timeout=30) as client:
        yield client


def _balance(pay: httpx.Client, headers: dict[str, str]) -> dict[str, str]:
    r = pay.get("/api/wallet/balance", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _status_of(pay: httpx.Client, headers: dict[str, str], kind: str, row_id: str) -> str:
    r = pay.get(f"/api/wallet/{kind}s/{row_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()[kind]["status"]


def _succeeded(payment_id: str, deposit_id: str, amount: int, event_id: str) -> bytes:
    return json.dumps({"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {
        "id": payment_id, "amount": amount, "metadata": {"deposit_id": deposit_id}}}}).encode()


def _post(pay: httpx.Client, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({HEADER: signature} if signature else {})
    return pay.post("/api/payments/webhook", content=body, headers=headers)


def _funded(pay: httpx.Client, new_user, amount: str):
    user = new_user()
    r = pay.post("/api/wallet/deposit", json={"amount": amount}, headers=user.headers)
    assert r.status_code == 202, r.text
    deposit_id = r.json()["deposit"]["id"]
    wait_until(lambda: _status_of(pay, user.headers, "deposit", deposit_id) == "credited",
               timeout=20, what="the deposit credited")
    return user


def test_a_deposit_is_pending_until_its_webhook_and_credited_once(pay, new_user, sql) -> None:
    user = new_user()
    r = pay.post("/api/wallet/deposit", json={"amount": "25.00"}, headers=user.headers)
    assert r.status_code == 202, r.text
    deposit = r.json()["deposit"]
    assert (deposit["amount"], deposit["status"]) == ("25.00", "pending")
    assert _balance(pay, user.headers)["balance"] == "0.00"
    payment_id = sql("select provider_payment_id from gateway.deposits where id = $1",
                     uuid.UUID(deposit["id"]))[0]["provider_payment_id"]

    # Our own copy of the confirmation, before the sandbox's: it credits the deposit...
    event_id = "evt_test_" + uuid.uuid4().hex
    body = _succeeded(payment_id, deposit["id"], 2500, event_id)
    first = _post(pay, body, sign(WEBHOOK_SECRET, body))
    assert first.status_code == 200 and first.json() == {"received": True}, first.text
    assert _balance(pay, user.headers)["balance"] == "25.00"
    # ...and every replay of it is answered without acting again.
    for _ in range(3):
        again = _post(pay, body, sign(WEBHOOK_SECRET, body))
        assert again.status_code == 200 and again.json()["duplicate"] is True
    # The sandbox's own event (a different event id, three deliveries) credits nothing more.
    wait_until(lambda: len(sql("select 1 from gateway.webhook_events")) == 2, timeout=20,
               what="the sandbox's event")
    time.sleep(1.0)  # its second and third copies
    assert _balance(pay, user.headers) == {
        "balance": "25.00", "available": "25.00", "reserved": "0.00", "currency": "BRL"}
    credits = sql("select count(*) as n from wallets.operations where reference_id = $1",
                  f"provider:{payment_id}")
    assert credits[0]["n"] == 1
    assert _status_of(pay, user.headers, "deposit", deposit["id"]) == "credited"


def test_a_forged_or_stale_webhook_moves_nothing(pay, new_user, sql) -> None:
    user = new_user()
    r = pay.post("/api/wallet/deposit", json={"amount": "40.00"}, headers=user.headers)
    deposit_id = r.json()["deposit"]["id"]
    payment_id = sql("select provider_payment_id from gateway.deposits where id = $1",
                     uuid.UUID(deposit_id))[0]["provider_payment_id"]
    body = _succeeded(payment_id, deposit_id, 4000, "evt_forged_" + uuid.uuid4().hex)
    now = int(time.time())
    refusals = {
        "invalid_signature": [
            None,
            "garbage",
            f"t={now}",
            sign("whsec_someone_else", body),
            sign(WEBHOOK_SECRET, body.replace(b"4000", b"9000")),
            f"t={now + 1},v1={sign(WEBHOOK_SECRET, body, now).split('v1=')[1]}",
        ],
        # Past the 300 s tolerance either way. The future one has a margin: `now` is
        # up to a second behind already, and a loaded machine takes seconds to get
        # through the requests before it (at now + 301 it once fell inside).
        "stale_signature": [sign(WEBHOOK_SECRET, body, now - 301),
                            sign(WEBHOOK_SECRET, body, now + 360)],
    }
    for code, signatures in refusals.items():
        for signature in signatures:
            r = _post(pay, body, signature)
            assert r.status_code == 400, (signature, r.text)
            assert r.json()["error"]["code"] == code, (signature, r.text)
    assert _balance(pay, user.headers)["balance"] == "0.00"
    assert _status_of(pay, user.headers, "deposit", deposit_id) == "pending"
    assert sql("select 1 from gateway.webhook_events") == []
    # The same body, signed with the secret, is what moves money.
    r = _post(pay, body, sign(WEBHOOK_SECRET, body))
    assert r.status_code == 200, r.text
    assert _balance(pay, user.headers)["balance"] == "40.00"
    r = _post(pay, b"{not json", sign(WEBHOOK_SECRET, b"{not json"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"


def test_a_failed_payout_releases_the_funds(pay, new_user) -> None:
    user = _funded(pay, new_user, "50.00")
    # Under the automatic threshold (10.00): no operator; the sandbox fails ".13" payouts.
    r = pay.post("/api/wallet/withdraw", json={"amount": "5.13"}, headers=user.headers)
    assert r.status_code == 202, r.text
    withdrawal = r.json()["withdrawal"]
    assert withdrawal["amount"] == "5.13" and withdrawal["status"] == "approved"
    held = _balance(pay, user.headers)
    assert (held["available"], held["reserved"]) == ("44.87", "5.13")
    wait_until(lambda: _status_of(pay, user.headers, "withdrawal", withdrawal["id"]) == "failed",
               timeout=20, what="the payout failed")
    after = _balance(pay, user.headers)
    assert (after["balance"], after["available"], after["reserved"]) == ("50.00", "50.00", "0.00")


def test_an_approved_payout_commits(pay, new_user, client_env) -> None:
    user, operator = _funded(pay, new_user, "100.00"), new_user("operator")
    ids = []
    for amount in ("20.00", "30.00"):  # at or over the threshold: they wait for an operator
        r = pay.post("/api/wallet/withdraw", json={"amount": amount}, headers=user.headers)
        assert r.status_code == 202 and r.json()["withdrawal"]["status"] == "pending", r.text
        ids.append(r.json()["withdrawal"]["id"])
    assert _balance(pay, user.headers)["reserved"] == "50.00"
    queue = pay.get("/api/withdrawals?status=pending", headers=operator.headers)
    assert queue.status_code == 200
    assert {w["id"] for w in queue.json()["withdrawals"]} == set(ids)
    assert pay.get("/api/withdrawals", headers=user.headers).status_code == 403
    assert pay.post(f"/api/withdrawals/{ids[0]}/approve", headers=user.headers).status_code == 403

    r = pay.post(f"/api/withdrawals/{ids[0]}/approve", headers=operator.headers)
    assert r.status_code == 200 and r.json()["withdrawal"]["status"] == "approved", r.text
    cli = subprocess.run([sys.executable, "-m", "gateway.cli", "withdrawals", "approve", ids[1]],
                         env=client_env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    for withdrawal_id in ids:
        wait_until(lambda w=withdrawal_id: _status_of(pay, user.headers, "withdrawal", w)
                   == "paid", timeout=20, what="the payout paid")
    after = _balance(pay, user.headers)
    assert (after["balance"], after["available"], after["reserved"]) == ("50.00", "50.00", "0.00")
    again = pay.post(f"/api/withdrawals/{ids[0]}/approve", headers=operator.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    kinds = [t["kind"] for t in pay.get("/api/wallet/transactions",
                                        headers=user.headers).json()["transactions"]]
    assert kinds.count("deposit") == 1


def test_a_withdrawal_beyond_the_funds_is_refused_and_not_queued(pay, new_user, sql) -> None:
    user = _funded(pay, new_user, "5.00")
    r = pay.post("/api/wallet/withdraw", json={"amount": "5.01"}, headers=user.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_funds", r.text
    assert sql("select 1 from gateway.withdrawals") == []


def test_cors_allows_the_configured_origins_only(pay) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = pay.options("/api/wallet/deposit", headers={"Origin": ORIGIN, **preflight})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = pay.options("/api/wallet/deposit", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in r.headers


def test_direct_mode_has_no_provider(api) -> None:
    r = api.post("/api/payments/webhook", content=b"{}", headers={HEADER: "t=1,v1=00"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
