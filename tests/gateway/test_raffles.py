"""Raffles (rifa1122) over HTTP: numbered tickets sold once each, settled by a draw's
last digits, by a lottery's posted draw, or voided with refunds when none comes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from actors.pubsub import Subscriber
from tests.polling import wait_until

pytestmark = pytest.mark.cluster


def error_of(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


def _event(api: httpx.Client, op, starts_in: timedelta = timedelta(days=1)) -> dict:
    starts_at = (datetime.now(UTC) + starts_in).isoformat()
    r = api.post("/api/events", json={"name": "Rifa", "category": "raffle",
                                      "starts_at": starts_at}, headers=op.headers)
    assert r.status_code == 201, r.text
    return r.json()["event"]


def _raffle(api: httpx.Client, op, event_id: str, **terms) -> dict:
    body = {"name": "Rifa 100", "type": "raffle", "tickets": 100, "ticket_price": "5.00",
            "prize": "300.00", **terms}
    r = api.post(f"/api/events/{event_id}/markets", json=body, headers=op.headers)
    assert r.status_code == 201, r.text
    return r.json()["market"]


def _player(api: httpx.Client, new_user, amount: str = "50.00"):
    player = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": amount}, headers=player.headers)
    assert r.status_code == 200, r.text
    return player


def _buy(api: httpx.Client, player, market_id: str, number: str, amount: str = "5.00"):
    return api.post("/api/bets", json={"market_id": market_id, "selection": number,
                                       "amount": amount}, headers=player.headers)


def _balance(api: httpx.Client, player) -> str:
    return api.get("/api/wallet/balance", headers=player.headers).json()["balance"]


def _market(api: httpx.Client, event_id: str, market_id: str) -> dict:
    event = api.get(f"/api/events/{event_id}").json()["event"]
    return next(m for m in event["markets"] if m["id"] == market_id)


def test_one_ticket_per_number_and_the_holder_of_the_draw_wins(
    api: httpx.Client, new_user, run, settings
) -> None:
    op = new_user("operator")
    event = _event(api, op)
    raffle = _raffle(api, op, event["id"])
    assert {k: raffle[k] for k in ("type", "tickets", "sold", "ticket_price", "prize")} == {
        "type": "raffle", "tickets": 100, "sold": 0, "ticket_price": "5.00", "prize": "300.00"}
    pushed: list = []

    async def subscribe() -> Subscriber:
        sub = Subscriber(settings.namespace)
        sub.start()
        await sub.subscribe(f"event:{event['id']}", lambda _t, n, p: pushed.append((n, p)))
        return sub

    sub = run(subscribe())
    try:
        ana, bia = _player(api, new_user), _player(api, new_user)
        r = _buy(api, ana, raffle["id"], "07")
        assert r.status_code == 201, r.text
        assert r.json()["bet"]["potential_payout"] == "300.00"
        r = _buy(api, bia, raffle["id"], "07")
        assert r.status_code == 409 and error_of(r) == "ticket_taken"
        for number, amount in (("7", "5.00"), ("007", "5.00"), ("x7", "5.00"), ("08", "4.00")):
            r = _buy(api, bia, raffle["id"], number, amount)
            assert r.status_code == 422, (number, amount, r.text)
        assert _buy(api, bia, raffle["id"], "42").status_code == 201
        wait_until(lambda: ("sales_updated", 2) in [(n, p.get("sold")) for n, p in pushed],
                   timeout=10, what=f"the sales count pushed: {pushed}")
        wait_until(lambda: _market(api, event["id"], raffle["id"])["sold"] == 2, timeout=10,
                   what="the event to show 2 tickets sold")
    finally:
        run(sub.close())

    r = api.post(f"/api/markets/{raffle['id']}/settle", json={"draw": "58342"},
                 headers=op.headers)
    assert r.status_code == 409 and error_of(r) == "invalid_transition"  # still open
    assert api.post(f"/api/markets/{raffle['id']}/close", headers=op.headers).status_code == 200
    r = api.post(f"/api/markets/{raffle['id']}/settle", json={"draw": "5"}, headers=op.headers)
    assert r.status_code == 422, r.text
    r = api.post(f"/api/markets/{raffle['id']}/settle", json={"draw": "58342"},
                 headers=op.headers)
    assert r.status_code == 200, r.text
    settled = r.json()["market"]
    assert settled["status"] == "settled" and settled["house_keeps_sales"] is False
    assert _balance(api, bia) == "345.00"  # 50 - 5 + 300
    assert _balance(api, ana) == "45.00"
    bets = api.get("/api/bets", headers=ana.headers).json()["bets"]
    assert [b["status"] for b in bets] == ["lost"]


def test_an_unsold_winning_number_leaves_the_sales_to_the_house(
    api: httpx.Client, new_user
) -> None:
    op = new_user("operator")
    event = _event(api, op)
    raffle = _raffle(api, op, event["id"], tickets=1000, ticket_price="2.00", prize="100.00")
    ana = _player(api, new_user)
    assert _buy(api, ana, raffle["id"], "042", "2.00").status_code == 201
    assert _buy(api, ana, raffle["id"], "42", "2.00").status_code == 422
    api.post(f"/api/markets/{raffle['id']}/close", headers=op.headers)
    r = api.post(f"/api/markets/{raffle['id']}/settle", json={"draw": "12399"},
                 headers=op.headers)
    assert r.status_code == 200, r.text
    assert r.json()["market"]["house_keeps_sales"] is True
    assert _balance(api, ana) == "48.00"
    wait_until(lambda: _market(api, event["id"], raffle["id"])["house_keeps_sales"] is True,
               timeout=10, what="the event to say the house kept the sales")


def test_a_lotterys_draw_settles_waiting_raffles_and_a_missing_one_voids_them(
    api: httpx.Client, new_user
) -> None:
    op = new_user("operator")
    lottery = f"federal-{uuid.uuid4().hex[:6]}"
    event = _event(api, op)
    closes_at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    drawn = _raffle(api, op, event["id"], lottery=lottery, closes_at=closes_at,
                    result_grace_s=600)
    forgotten = _raffle(api, op, event["id"], lottery=f"{lottery}-late", closes_at=closes_at,
                        result_grace_s=2)
    ana, bia = _player(api, new_user), _player(api, new_user)
    assert _buy(api, ana, drawn["id"], "42").status_code == 201
    assert _buy(api, bia, drawn["id"], "43").status_code == 201
    assert _buy(api, bia, forgotten["id"], "01").status_code == 201
    wait_until(lambda: _market(api, event["id"], drawn["id"])["status"] == "closed",
               timeout=15, what="the raffle to close at closes_at")

    r = api.post(f"/api/lotteries/{lottery}/draws", json={"draw": "00042"}, headers=op.headers)
    assert r.status_code == 201, r.text
    r = api.post(f"/api/lotteries/{lottery}/draws",
                 json={"draw": "00043", "drawn_at": r.json()["drawn_at"]}, headers=op.headers)
    assert r.status_code == 409, r.text  # one number per drawing
    wait_until(lambda: _market(api, event["id"], drawn["id"])["status"] == "settled",
               timeout=15, what="the lottery's draw to settle the raffle")
    assert _balance(api, ana) == "345.00"
    wait_until(lambda: _market(api, event["id"], forgotten["id"])["status"] == "void",
               timeout=15, what="the raffle without a draw to be voided")
    wait_until(lambda: _balance(api, bia) == "45.00", timeout=10,
               what="the void raffle's ticket refunded")
