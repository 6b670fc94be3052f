from __future__ import annotations

import asyncio
import base64
import json

import asyncpg
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import InsufficientFunds
from gateway.errors import Forbidden
from gateway.realtime import phoenix as phx
from gateway.realtime.phoenix import ChannelSession, Joined, Message, ProtocolError

USER = "6f1c1a36-2c7d-4a53-9a43-8d2b0a1e5c11"
EVENT = "0b6f3c52-8f1e-4b0e-9d55-2a7c1c9e4f00"


# -- codec ---------------------------------------------------------------------------------


def test_round_trip():
    msg = Message("1", "2", f"user:{USER}", "place_bet", {"amount": "50.00", "é": [1, None]})
    text = phx.encode(msg)
    assert json.loads(text) == ["1", "2", f"user:{USER}", "place_bet", msg.payload]
    assert phx.decode(text) == msg
    assert phx.decode(text.encode()) == msg
    assert phx.encode(phx.push(None, "phoenix", "x", {})) == '[null,null,"phoenix","x",{}]'


refs = st.one_of(st.none(), st.text(max_size=12))
names = st.text(min_size=1, max_size=20)
payloads = st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)))


@settings(max_examples=100, deadline=None)
@given(refs, refs, names, names, payloads)
def test_round_trip_any(join_ref, ref, topic, event, payload):
    msg = Message(join_ref, ref, topic, event, payload)
    assert phx.decode(phx.encode(msg)) == msg


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "not json",
        "{}",
        '"text"',
        "[]",
        '[null, "1", "phoenix", "heartbeat"]',
        '[null, "1", "phoenix", "heartbeat", {}, 1]',
        '[1, "1", "phoenix", "heartbeat", {}]',
        '[null, 1, "phoenix", "heartbeat", {}]',
        '[null, "1", null, "heartbeat", {}]',
        '[null, "1", "", "heartbeat", {}]',
        '[null, "1", "phoenix", 7, {}]',
        '[null, "1", "phoenix", "heartbeat", []]',
        '[null, "1", "phoenix", "heartbeat", "x"]',
        '[null, "1", "phoenix", "heartbeat", {"n": NaN}]',
        '[null, "1", "phoenix", "heartbeat", {}',
        "[" * 100_000,
        "[" * 60_000,
        b"\xff\xfe",
        "[null," + " " * phx.MAX_FRAME_CHARS + '"1","phoenix","heartbeat",{}]',
    ],
)
def test_malformed_frames(frame):
    with pytest.raises(ProtocolError) as err:
        phx.decode(frame)
    assert err.value.status == 422


def test_reply_echoes_refs_exactly():
    msg = phx.decode('["007", " 8 ", "user:X", "get_balance", {}]')
    out = phx.reply(msg, "ok", {"balance": "1.00"})
    assert json.loads(phx.encode(out)) == [
        "007",
        " 8 ",
        "user:X",
        "phx_reply",
        {"status": "ok", "response": {"balance": "1.00"}},
    ]


def test_error_reply_shape():
    msg = Message("1", "3", f"user:{USER}", "place_bet", {})
    out = phx.error_reply(msg, InsufficientFunds("not enough money"))
    assert out.payload == {
        "status": "error",
        "response": {
            "reason": "insufficient_funds",
            "error": {"code": "insufficient_funds", "message": "not enough money"},
        },
    }
    assert (out.join_ref, out.ref, out.event) == ("1", "3", "phx_reply")


def test_parse_topic():
    assert phx.parse_topic(f"user:{USER}") == phx.Topic(f"user:{USER}", "user", USER)
    upper = f"event:{EVENT.upper()}"
    assert phx.parse_topic(upper) == phx.Topic(upper, "event", EVENT)
    assert phx.parse_topic("phoenix") == phx.Topic("phoenix", "phoenix", None)
    for bad in ("user:", "user:123", f"room:{USER}", f"user:{USER}:x", f" user:{USER}", "lobby"):
        assert phx.parse_topic(bad) is None


# -- connection parameters -----------------------------------------------------------------


def js_auth_protocols(token: str) -> list[str]:
    """What phoenix.js 1.8 offers for `authToken`: btoa(token) without padding."""
    return [
        "phoenix",
        "base64url.bearer.phx." + base64.b64encode(token.encode()).decode().rstrip("="),
    ]


def test_token_from_subprotocols():
    for token in ("a.b.c", "ab", "eyJhbGciOi~?>>.x", "é-token"):
        assert phx.token_from_subprotocols(js_auth_protocols(token)) == token
    # A single raw header value works as well, and the URL-safe alphabet.
    urlsafe = base64.urlsafe_b64encode(b"~~~???").decode().rstrip("=")
    assert phx.token_from_subprotocols([f"phoenix, base64url.bearer.phx.{urlsafe}"]) == "~~~???"
    assert phx.token_from_subprotocols([]) is None
    assert phx.token_from_subprotocols(None) is None
    assert phx.token_from_subprotocols(["phoenix"]) is None
    assert phx.token_from_subprotocols(["base64url.bearer.phx.!!!"]) is None
    assert phx.token_from_subprotocols(["base64url.bearer.phx."]) is None
    two = js_auth_protocols("a") + js_auth_protocols("b")[1:]
    assert phx.token_from_subprotocols(two) is None


def test_select_subprotocol_and_redact():
    assert phx.select_subprotocol(js_auth_protocols("t")) == "phoenix"
    assert phx.select_subprotocol(["other"]) is None
    assert phx.select_subprotocol(None) is None
    assert phx.redact("/socket/websocket?token=eyJ.x.y&vsn=2.0.0") == (
        "/socket/websocket?token=[REDACTED]&vsn=2.0.0"
    )
    assert phx.redact("vsn=2.0.0&token=abc") == "vsn=2.0.0&token=[REDACTED]"


# -- the channel session -------------------------------------------------------------------


class Handlers:
    def __init__(self):
        self.joins, self.leaves, self.events = [], [], []

    async def on_join(self, topic, payload):
        self.joins.append(topic.name)
        if topic.kind == "user" and topic.id != USER:
            raise Forbidden("not your channel")
        if payload.get("crash"):
            raise RuntimeError("boom")
        if topic.kind == "event":
            return Joined({}, [("event_data", {"id": topic.id})])
        return None

    async def on_event(self, topic, event, payload):
        self.events.append((topic.name, event))
        if event == "get_balance":
            return {"balance": "5.00"}
        if event == "cancel_bet":  # as a market host's query while PostgreSQL restarts
            raise ray.exceptions.RayTaskError(
                "EntityHost.query", "", asyncpg.CannotConnectNowError("shutting down")
            ).as_instanceof_cause()
        if event == "get_bet":  # as a call to a host Ray is restarting
            raise ray.exceptions.ActorUnavailableError("the actor is restarting", b"\0" * 16)
        if event == "place_bet":
            raise InsufficientFunds("not enough")
        if event == "fire_and_forget":
            return phx.NO_REPLY
        raise RuntimeError("bug")

    async def on_leave(self, topic):
        self.leaves.append(topic.name)


def frames(session, *msgs):
    async def go():
        out = []
        for m in msgs:
            out.append([json.loads(f) for f in await session.receive(json.dumps(m))])
        return out

    return asyncio.run(go())


def new_session(**kw):
    h = Handlers()
    return h, ChannelSession(h.on_join, h.on_event, h.on_leave, **kw)


def test_heartbeat():
    _, s = new_session()
    [out] = frames(s, [None, "5", "phoenix", "heartbeat", {}])
    assert out == [[None, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}]]


def test_join_event_leave():
    h, s = new_session()
    topic = f"user:{USER}"
    join, bal, leave, after = frames(
        s,
        ["1", "1", topic, "phx_join", {}],
        ["1", "2", topic, "get_balance", {}],
        ["1", "3", topic, "phx_leave", {}],
        ["1", "4", topic, "get_balance", {}],
    )
    assert join == [["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}]]
    assert bal == [
        ["1", "2", topic, "phx_reply", {"status": "ok", "response": {"balance": "5.00"}}]
    ]
    assert leave == [
        ["1", "3", topic, "phx_reply", {"status": "ok", "response": {}}],
        ["1", "1", topic, "phx_close", {}],
    ]
    assert after[0][4]["status"] == "error"
    assert after[0][4]["response"]["reason"] == "unmatched topic"
    assert h.leaves == [topic] and h.events == [(topic, "get_balance")]
    assert s.joined == {}


def test_event_on_topic_not_joined_is_unmatched():
    h, s = new_session()
    [out] = frames(s, ["9", "10", f"user:{USER}", "place_bet", {"amount": "1.00"}])
    assert out == [
        [
            "9",
            "10",
            f"user:{USER}",
            "phx_reply",
            {
                "status": "error",
                "response": {
                    "reason": "unmatched topic",
                    "error": {"code": "unmatched_topic", "message": "unmatched topic"},
                },
            },
        ]
    ]
    assert h.events == []


def test_leave_never_joined_is_ok():
    h, s = new_session()
    [out] = frames(s, ["3", "4", f"event:{EVENT}", "phx_leave", {}])
    assert out == [["3", "4", f"event:{EVENT}", "phx_reply", {"status": "ok", "response": {}}]]
    assert h.leaves == []


def test_join_refused_and_unknown_topics():
    h, s = new_session()
    other = "user:00000000-0000-0000-0000-000000000001"
    refused, unknown, phoenix_join = frames(
        s,
        ["1", "1", other, "phx_join", {}],
        ["2", "2", "room:lobby", "phx_join", {}],
        ["3", "3", "phoenix", "phx_join", {}],
    )
    assert refused == [
        [
            "1",
            "1",
            other,
            "phx_reply",
            {
                "status": "error",
                "response": {
                    "reason": "forbidden",
                    "error": {"code": "forbidden", "message": "not your channel"},
                },
            },
        ]
    ]
    assert unknown[0][4]["response"]["reason"] == "unmatched topic"
    assert phoenix_join[0][4]["response"]["reason"] == "unmatched topic"
    assert s.joined == {} and h.leaves == []


def test_duplicate_join_closes_the_old_channel():
    h, s = new_session()
    topic = f"event:{EVENT}"
    first, second = frames(s, ["1", "1", topic, "phx_join", {}], ["5", "5", topic, "phx_join", {}])
    assert first == [
        ["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}],
        ["1", None, topic, "event_data", {"id": EVENT}],
    ]
    assert second == [
        ["1", "1", topic, "phx_close", {}],
        ["5", "5", topic, "phx_reply", {"status": "ok", "response": {}}],
        ["5", None, topic, "event_data", {"id": EVENT}],
    ]
    assert h.leaves == [topic] and h.joins == [topic, topic]
    assert s.joined == {topic: "5"}
    # A leave from the old join is answered but leaves the new one joined.
    [stale] = frames(s, ["1", "6", topic, "phx_leave", {}])
    assert stale == [["1", "6", topic, "phx_reply", {"status": "ok", "response": {}}]]
    assert s.joined == {topic: "5"}


def test_server_pushes_carry_the_join_ref():
    _, s = new_session()
    topic = f"user:{USER}"
    assert s.push(topic, "balance", {"balance": "1.00"}) is None
    frames(s, ["7", "7", topic, "phx_join", {}])
    assert json.loads(s.push(topic, "balance", {"balance": "1.00"})) == [
        "7",
        None,
        topic,
        "balance",
        {"balance": "1.00"},
    ]
    assert s.push(f"event:{EVENT}", "odds_updated", {}) is None


def test_event_errors_and_no_reply():
    _, s = new_session()
    topic = f"user:{USER}"
    _, bet, bug, silent, heartbeat = frames(
        s,
        ["1", "1", topic, "phx_join", {}],
        ["1", "2", topic, "place_bet", {}],
        ["1", "3", topic, "unknown_event", {}],
        ["1", "4", topic, "fire_and_forget", {}],
        [None, "5", "phoenix", "heartbeat", {}],
    )
    assert bet[0][4] == {
        "status": "error",
        "response": {
            "reason": "insufficient_funds",
            "error": {"code": "insufficient_funds", "message": "not enough"},
        },
    }
    assert bug[0][4]["response"]["reason"] == "internal_error"
    assert silent == []
    assert heartbeat[0][4]["status"] == "ok"  # the socket goes on


def test_dependency_failures_are_unavailable_not_internal_errors():
    """Found by the chaos run: a `cancel_bet` while a market host restarted, or while
    its PostgreSQL did, was answered `internal_error` where HTTP answers 503."""
    _, s = new_session()
    topic = f"user:{USER}"
    _, cancel, get = frames(
        s,
        ["1", "1", topic, "phx_join", {}],
        ["1", "2", topic, "cancel_bet", {}],
        ["1", "3", topic, "get_bet", {}],
    )
    for out in (cancel, get):
        assert out[0][4]["status"] == "error"
        assert out[0][4]["response"]["reason"] == "unavailable"


def test_join_crash():
    h, s = new_session()
    [out] = frames(s, ["1", "1", f"user:{USER}", "phx_join", {"crash": True}])
    assert out[0][4]["status"] == "error"
    assert out[0][4]["response"]["reason"] == "join crashed"
    assert s.joined == {}


def test_error_and_close():
    h, s = new_session()
    user, event = f"user:{USER}", f"event:{EVENT}"
    frames(s, ["1", "1", user, "phx_join", {}], ["2", "2", event, "phx_join", {}])
    assert json.loads(s.error(event)) == ["2", "2", event, "phx_error", {}]
    assert s.error(event) is None
    assert s.joined == {user: "1"}
    asyncio.run(s.close())
    assert h.leaves == [user] and s.joined == {}


def test_topic_limit():
    _, s = new_session(max_topics=1)
    a, b = frames(
        s,
        ["1", "1", f"user:{USER}", "phx_join", {}],
        ["2", "2", f"event:{EVENT}", "phx_join", {}],
    )
    assert a[0][4]["status"] == "ok"
    assert b[0][4]["response"]["reason"] == "too_many_topics"


def test_malformed_frame_raises_and_session_survives():
    _, s = new_session()

    async def go():
        with pytest.raises(ProtocolError):
            await s.receive("[1,2,3]")
        return await s.receive('[null,"1","phoenix","heartbeat",{}]')

    assert len(asyncio.run(go())) == 1
