"""The Phoenix socket (`/socket/websocket`), against the real Serve app."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import ray
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from actors.pubsub import Publisher, pubsub_handle
from actors.pubsub.subscriber import CONTROL_TIMEOUT_S
from tests.polling import sigstop, wait_until
from tests.serve_fixtures import JWT_SECRET

pytestmark = pytest.mark.cluster


class Phx:
    """A minimal Phoenix V2 client: refs are strings, replies matched by ref."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ref = 0
        self.inbox: list[list] = []
        self.join_refs: dict[str, str] = {}

    def send(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        self.ref += 1
        ref = str(self.ref)
        self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        return ref

    def next(self, predicate: Callable[[list], bool], timeout: float = 5.0) -> list:
        for i, msg in enumerate(self.inbox):
            if predicate(msg):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame; got {self.inbox}")
            msg = json.loads(self.ws.recv(timeout=left))
            if predicate(msg):
                return msg
            self.inbox.append(msg)

    def reply(self, ref: str, timeout: float = 10.0) -> dict:
        msg = self.next(lambda m: m[1] == ref and m[3] == "phx_reply", timeout)
        return msg[4]

    def join(self, topic: str, payload: dict | None = None) -> dict:
        self.ref += 1
        ref = str(self.ref)
        self.join_refs[topic] = ref
        self.ws.send(json.dumps([ref, ref, topic, "phx_join", payload or {}]))
        reply = self.reply(ref)
        return reply

    def push(self, topic: str, event: str, payload: dict) -> dict:
        return self.reply(self.send(topic, event, payload, self.join_refs.get(topic)))

    def pushed(self, topic: str, event: str, timeout: float = 5.0) -> list:
        return self.next(lambda m: m[2] == topic and m[3] == event and m[1] is None, timeout)


def ws_url(serve_url: str) -> str:
    return serve_url.replace("http://", "ws://") + "/socket/websocket"


@pytest.fixture
def socket_for(serve_url: str):
    with contextlib.ExitStack() as stack:

        def open_(token: str | None = None, *, subprotocols: list[str] | None = None,
                  query: str = "vsn=2.0.0") -> Phx:
            url = ws_url(serve_url) + "?" + query + (f"&token={token}" if token else "")
            ws = stack.enter_context(
                connect(url, subprotocols=subprotocols, proxy=None, open_timeout=15))
            return Phx(ws)

        yield open_


def refused_status(serve_url: str, query: str, subprotocols: list[str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as info:
        with connect(ws_url(serve_url) + "?" + query, subprotocols=subprotocols, proxy=None,
                     open_timeout=15):
            pass
    return info.value.response.status_code


# -- connecting ----------------------------------------------------------------------------


def test_bad_tokens_refuse_the_upgrade_with_403(serve_url: str, api: httpx.Client,
                                                 new_user) -> None:
    u = new_user()
    now = int(time.time())
    expired = jwt.encode({"sub": u.id, "role": "player", "jti": "e1", "iat": now - 100,
                          "exp": now - 10}, JWT_SECRET, algorithm="HS256")
    for query in ("vsn=2.0.0", "vsn=2.0.0&token=", "vsn=2.0.0&token=garbage",
                  f"vsn=2.0.0&token={expired}"):
        assert refused_status(serve_url, query) == 403, query
    # revoked: log out, then the same token is refused
    victim = new_user()
    assert api.post("/api/auth/logout", headers=victim.headers).status_code == 204
    assert refused_status(serve_url, f"vsn=2.0.0&token={victim.token}") == 403


def test_token_in_phoenix_auth_subprotocol(socket_for, new_user) -> None:
    u = new_user()
    encoded = base64.b64encode(u.token.encode()).decode().rstrip("=")
    phx = socket_for(subprotocols=["phoenix", f"base64url.bearer.phx.{encoded}"])
    assert phx.ws.subprotocol == "phoenix"
    assert phx.join(f"user:{u.id}")["status"] == "ok"


def test_bad_subprotocol_token_is_403(serve_url: str) -> None:
    bad = base64.b64encode(b"not-a-token").decode().rstrip("=")
    status = refused_status(serve_url, "vsn=2.0.0",
                            subprotocols=["phoenix", f"base64url.bearer.phx.{bad}"])
    assert status == 403


def test_heartbeat_and_leave_of_a_topic_never_joined(socket_for, new_user) -> None:
    phx = socket_for(new_user().token)
    ref = phx.send("phoenix", "heartbeat", {})
    msg = phx.next(lambda m: m[1] == ref)
    assert msg == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    assert phx.push(f"user:{uuid.uuid4()}", "phx_leave", {})["status"] == "ok"


# -- the user topic ------------------------------------------------------------------------


def test_join_own_topic_and_get_balance(socket_for, api: httpx.Client, new_user) -> None:
    u = new_user()
    api.post("/api/wallet/deposit", json={"amount": "12.34"}, headers=u.headers)
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    reply = phx.join(topic)
    assert reply == {"status": "ok", "response": {}}
    reply = phx.push(topic, "get_balance", {})
    assert reply["status"] == "ok"
    assert reply["response"]["balance"] == "12.34"
    assert set(reply["response"]) == {"balance", "available", "reserved", "currency"}
    # the reply echoes join_ref and ref exactly
    ref = phx.send(topic, "get_balance", {}, join_ref=phx.join_refs[topic])
    msg = phx.next(lambda m: m[1] == ref)
    assert msg[0] == phx.join_refs[topic] and msg[2] == topic and msg[3] == "phx_reply"


def test_another_users_topic_is_refused(socket_for, new_user) -> None:
    u, other = new_user(), new_user()
    phx = socket_for(u.token)
    reply = phx.join(f"user:{other.id}")
    assert reply["status"] == "error"
    assert reply["response"]["reason"] == "forbidden"
    assert reply["response"]["error"]["code"] == "forbidden"
    # and events on it are unmatched
    reply = phx.push(f"user:{other.id}", "get_balance", {})
    assert reply["status"] == "error" and reply["response"]["reason"] == "unmatched topic"


def test_unknown_topics_and_events(socket_for, new_user) -> None:
    u = new_user()
    phx = socket_for(u.token)
    assert phx.join("lobby:1")["response"]["reason"] == "unmatched topic"
    topic = f"user:{u.id}"
    phx.join(topic)
    reply = phx.push(topic, "fly", {})
    assert reply["status"] == "error" and reply["response"]["error"]["code"] == "invalid_input"
    reply = phx.push(topic, "place_bet", {"market_id": "x", "amount": 5})
    assert reply["status"] == "error" and reply["response"]["reason"] == "invalid_input"


def test_balance_is_pushed_after_a_deposit(socket_for, api: httpx.Client, new_user) -> None:
    u = new_user()
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    assert phx.join(topic)["status"] == "ok"
    r = api.post("/api/wallet/deposit", json={"amount": "5.00"}, headers=u.headers)
    assert r.status_code == 200
    msg = phx.pushed(topic, "balance")
    assert msg[0] == phx.join_refs[topic]
    assert msg[4] == r.json()


def test_pubsub_delivers_to_the_socket(socket_for, api: httpx.Client, new_user, run,
                                       settings) -> None:
    """Any process can publish: a Publisher in the test process reaches the socket,
    payloads formatted to the contract (money as strings)."""
    u = new_user()
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    phx.join(topic)

    async def publish() -> None:
        p = Publisher(settings.namespace)
        p.publish(topic, "balance", {"balance": 700, "available": 500, "reserved": 200})
        await p.drain()

    run(publish())
    msg = phx.pushed(topic, "balance")
    assert msg[4]["balance"] == "7.00" and msg[4]["reserved"] == "2.00"
    received = re.findall(r"^lootify_pubsub_events_received_total\{[^}]*\} (\S+)$",
                          api.get("/metrics").text, re.MULTILINE)
    assert received and max(float(n) for n in received) >= 1


def test_malformed_frames_close_only_their_socket(socket_for, new_user) -> None:
    u = new_user()
    good = socket_for(u.token)
    good.join(f"user:{u.id}")
    for garbage in ("not json", "[1,2,3]", '{"a": 1}', '[null, "1", "phoenix", "heartbeat", 5]',
                    "[" * 100_000):
        bad = socket_for(u.token)
        bad.ws.send(garbage)
        with pytest.raises(ConnectionClosed) as info:
            bad.ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code in (1007, 1009), garbage
        ref = good.send("phoenix", "heartbeat", {})
        assert good.reply(ref)["status"] == "ok"
    assert good.push(f"user:{u.id}", "get_balance", {})["status"] == "ok"


def test_tokens_are_not_logged(socket_for, new_user) -> None:
    u = new_user()
    phx = socket_for(u.token)
    phx.join(f"user:{u.id}")
    phx.push(f"user:{u.id}", "get_balance", {})
    phx.ws.close()
    time.sleep(2)  # let the log handlers flush
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and u.token in
              p.read_text(errors="ignore")]
    assert leaked == []


# -- event topics and bets over the socket -------------------------------------------------


def _book(api: httpx.Client, new_user) -> tuple[Any, dict, dict]:
    op = new_user("operator")
    r = api.post("/api/events", json={"name": "A x B", "category": "football",
                                      "starts_at": "2030-01-01T18:00:00+00:00"},
                 headers=op.headers)
    event = r.json()["event"]
    r = api.post(f"/api/events/{event['id']}/markets", headers=op.headers, json={
        "name": "Winner", "type": "fixed_odds",
        "selections": [{"key": "home", "name": "Home", "odds": "2.00"},
                       {"key": "away", "name": "Away", "odds": "2.00"}]})
    assert r.status_code == 201, r.text
    return op, event, r.json()["market"]


def test_event_topic_pushes_data_odds_and_status(socket_for, api: httpx.Client,
                                                  new_user) -> None:
    op, event, market = _book(api, new_user)
    phx = socket_for(new_user().token)
    topic = f"event:{event['id']}"
    assert phx.join(topic) == {"status": "ok", "response": {}}
    data = phx.pushed(topic, "event_data")
    assert data[0] == phx.join_refs[topic]
    assert data[4]["id"] == event["id"] and data[4]["markets"][0]["id"] == market["id"]
    assert data[4]["markets"][0]["selections"][0]["odds"] == "2.00"

    r = api.put(f"/api/markets/{market['id']}/odds", json={"odds": {"home": "2.40"}},
                headers=op.headers)
    assert r.status_code == 200
    msg = phx.next(lambda m: m[3] == "odds_updated" and m[4]["odds"].get("home") == "2.40")
    assert msg[4] == {"market_id": market["id"], "odds": {"home": "2.40", "away": "2.00"}}

    api.post(f"/api/markets/{market['id']}/suspend", headers=op.headers)
    msg = phx.pushed(topic, "status_changed")
    assert msg[4] == {"market_id": market["id"], "status": "suspended"}


def test_unknown_event_topic_is_refused(socket_for, new_user) -> None:
    phx = socket_for(new_user().token)
    reply = phx.join(f"event:{uuid.uuid4()}")
    assert reply["status"] == "error" and reply["response"]["reason"] == "not_found"


def test_bets_over_the_socket(socket_for, api: httpx.Client, new_user) -> None:
    op, event, market = _book(api, new_user)
    u = new_user()
    api.post("/api/wallet/deposit", json={"amount": "50.00"}, headers=u.headers)
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    phx.join(topic)

    reply = phx.push(topic, "place_bet", {"market_id": market["id"], "selection": "home",
                                          "amount": "10.00", "odds": "2.00"})
    assert reply["status"] == "ok", reply
    bet = reply["response"]["bet"]
    assert bet["status"] == "accepted" and bet["amount"] == "10.00"
    placed = phx.pushed(topic, "bet_placed")
    assert placed[4]["id"] == bet["id"] and "user_id" not in placed[4]
    balance = phx.next(lambda m: m[3] == "balance" and m[4]["balance"] == "40.00")
    assert balance[4]["reserved"] == "0.00"

    reply = phx.push(topic, "place_bet", {"market_id": market["id"], "selection": "home",
                                          "amount": "999.00"})
    assert reply["status"] == "error"
    assert reply["response"]["reason"] == "insufficient_funds"
    assert reply["response"]["error"]["code"] == "insufficient_funds"

    reply = phx.push(topic, "cancel_bet", {"bet_id": bet["id"]})
    assert reply["status"] == "ok" and reply["response"]["bet"]["status"] == "cancelled"
    settled = phx.pushed(topic, "bet_settled")
    assert settled[4]["id"] == bet["id"] and settled[4]["status"] == "cancelled"
    assert phx.push(topic, "get_balance", {})["response"]["balance"] == "50.00"

    reply = phx.push(topic, "place_bet", {"market_id": market["id"], "selection": "away",
                                          "amount": "5.00", "accept_odds": "any"})
    assert reply["status"] == "ok"
    won = reply["response"]["bet"]
    api.post(f"/api/markets/{market['id']}/close", headers=op.headers)
    api.post(f"/api/markets/{market['id']}/settle", json={"winner": "away"}, headers=op.headers)
    msg = phx.next(lambda m: m[3] == "bet_settled" and m[4]["id"] == won["id"])
    assert msg[4]["status"] == "won" and msg[4]["payout"] != "0.00"


def test_a_resent_keyed_bet_push_is_one_bet(socket_for, api: httpx.Client, new_user) -> None:
    _, _, market = _book(api, new_user)
    u = new_user()
    api.post("/api/wallet/deposit", json={"amount": "50.00"}, headers=u.headers)
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    phx.join(topic)
    bet = {"market_id": market["id"], "selection": "home", "amount": "10.00",
           "accept_odds": "any", "idempotency_key": "tap-1"}
    first = phx.push(topic, "place_bet", bet)
    again = phx.push(topic, "place_bet", bet)
    assert first["status"] == again["status"] == "ok", (first, again)
    assert first["response"] == again["response"]
    other = phx.push(topic, "place_bet", {**bet, "amount": "11.00"})
    assert other["response"]["reason"] == "idempotency_conflict"
    bad = phx.push(topic, "place_bet", {**bet, "idempotency_key": 7})
    assert bad["response"]["reason"] == "invalid_input"
    assert phx.push(topic, "get_balance", {})["response"]["balance"] == "40.00"


def test_a_join_while_pubsub_hangs_is_answered_unavailable(socket_for, api: httpx.Client,
                                                           new_user, settings) -> None:
    """A hung PubSub fails a join within a bounded time, and the socket goes on."""
    u = new_user()
    api.post("/api/wallet/deposit", json={"amount": "5.00"}, headers=u.headers)
    phx = socket_for(u.token)
    handle = pubsub_handle(settings.namespace)
    pid = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()))
    topic = f"user:{u.id}"
    sigstop(pid)
    try:
        started = time.monotonic()
        reply = phx.join(topic)
        assert time.monotonic() - started < CONTROL_TIMEOUT_S + 2
        assert reply["status"] == "error"
        assert reply["response"]["error"]["code"] == "unavailable"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert phx.join(topic) == {"status": "ok", "response": {}}
    assert phx.push(topic, "get_balance", {})["response"]["balance"] == "5.00"


def test_pushes_resume_after_a_pubsub_restart(socket_for, api: httpx.Client, new_user,
                                              settings) -> None:
    u = new_user()
    phx = socket_for(u.token)
    topic = f"user:{u.id}"
    phx.join(topic)
    handle = pubsub_handle(settings.namespace)
    epoch = ray.get(handle.ping.remote())["epoch"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if ray.get(handle.ping.remote(), timeout=5)["epoch"] != epoch:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "PubSub did not restart"
        time.sleep(0.2)
    # Events are ephemeral: those published while the replica re-registers are lost.
    deadline = time.monotonic() + 30
    while True:
        assert api.post("/api/wallet/deposit", json={"amount": "1.00"},
                        headers=u.headers).status_code == 200
        try:
            phx.pushed(topic, "balance", timeout=1.0)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "no push after the restart"
    assert phx.push(topic, "get_balance", {})["status"] == "ok"
    # Healthy once the re-registration is acknowledged: a restarted PubSub waits out the
    # publishers' old leases first, while publishers that know it already hand it events.
    wait_until(lambda: api.get("/health").json()["checks"]["pubsub"]["status"] == "ok",
               timeout=10, what="PubSub healthy again")
