"""The Phoenix Channels V2 JSON protocol, so the official `phoenix` JS client works.

Transport-agnostic: this module turns text frames into `Message`s and back, and keeps
one socket's channel state in a `ChannelSession`; the web layer owns the socket, the
authorization and the actual event handling (passed in as callbacks).

Wire format (what `phoenix` 1.8's serializer.js sends and reads): a JSON array
`[join_ref, ref, topic, event, payload]`. `join_ref` and `ref` are strings (or null)
that the server echoes back exactly: the client matches a reply to its push by `ref`
and drops messages whose `join_ref` is not its channel's current one. Server pushes
carry the join's `join_ref` and a null `ref`.

Connection (socket.js): `GET {endpoint}/websocket?vsn=2.0.0&<params>` (so
`?token=<jwt>` with `params: {token}`); with the `authToken` option, the client instead
offers the subprotocols `["phoenix", "base64url.bearer.phx.<base64 of the token,
unpadded>"]`, and the server must accept with the subprotocol `phoenix` (a browser fails
the connection when an offered subprotocol is not selected). Heartbeat: every 30 s
`[null, ref, "phoenix", "heartbeat", {}]`, expecting `phx_reply` `{status: "ok"}` with
the same ref, else the client reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as _dt
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from actors.errors import InvalidInput, LootifyError, Unavailable

from ..errors import InternalError, TooManyTopics, UnmatchedTopic
from ..failures import dependency_failure

log = logging.getLogger("lootify.gateway.phoenix")

VSN = "2.0.0"
SUBPROTOCOL = "phoenix"
AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
MAX_FRAME_CHARS = 64 * 1024
MAX_TOPICS = 100

JOIN, LEAVE, REPLY, CLOSE, ERROR = "phx_join", "phx_leave", "phx_reply", "phx_close", "phx_error"
HEARTBEAT, PHOENIX_TOPIC = "heartbeat", "phoenix"
UNMATCHED_TOPIC = "unmatched topic"


class ProtocolError(InvalidInput):
    """A frame that is not a Phoenix V2 message. The socket that sent it may be closed
    (WebSocket close code 1007 or 1008); no other socket is affected."""

    code = "invalid_frame"


@dataclass(frozen=True)
class Message:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


@dataclass(frozen=True)
class Topic:
    """A parsed topic: `user:{uuid}`, `event:{uuid}` or `phoenix` (id None). `name` is
    the topic exactly as the client sent it (replies must echo it); `id` is the UUID
    in canonical lower-case form."""

    name: str
    kind: str
    id: str | None


# -- codec ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(text: str | bytes, *, max_chars: int = MAX_FRAME_CHARS) -> Message:
    """Parse one text frame; `ProtocolError` for anything but a 5-element array of
    (string|null, string|null, non-empty string, non-empty string, object)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("frame is not UTF-8") from exc
    if not isinstance(text, str):
        raise ProtocolError("frame must be text")
    if len(text) > max_chars:
        raise ProtocolError(f"frame longer than {max_chars} characters")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("frame is not valid JSON") from exc
    if not isinstance(data, list) or len(data) != 5:
        raise ProtocolError("frame must be [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = data
    for name, value in (("join_ref", join_ref), ("ref", ref)):
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"{name} must be a string or null")
    for name, value in (("topic", topic), ("event", event)):
        if not isinstance(value, str) or not value:
            raise ProtocolError(f"{name} must be a non-empty string")
    if not isinstance(payload, dict):
        raise ProtocolError("payload must be an object")
    return Message(join_ref, ref, topic, event, payload)


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(msg: Message) -> str:
    return json.dumps(
        [msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload],
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    )


# -- message builders ----------------------------------------------------------------------


def reply(msg: Message, status: str, response: Any) -> Message:
    """The `phx_reply` to `msg`, echoing its join_ref, ref and topic exactly."""
    return Message(
        msg.join_ref, msg.ref, msg.topic, REPLY, {"status": status, "response": response}
    )


def push(join_ref: str | None, topic: str, event: str, payload: Any) -> Message:
    """A server push (no ref) for the channel joined with `join_ref`."""
    return Message(join_ref, None, topic, event, payload)


def close_message(topic: str, join_ref: str | None) -> Message:
    """Tells the client the channel is closed (after a leave, a duplicate join)."""
    return Message(join_ref, join_ref, topic, CLOSE, {})


def error_message(topic: str, join_ref: str | None) -> Message:
    """Tells the client the channel crashed: the JS client rejoins it after a back-off."""
    return Message(join_ref, join_ref, topic, ERROR, {})


def error_response(exc: LootifyError, reason: str | None = None) -> dict[str, Any]:
    """`{reason: code, error: {code, message}}`, the contract's error reply body."""
    return {"reason": reason or exc.code, "error": exc.to_dict()}


def error_reply(msg: Message, exc: LootifyError, reason: str | None = None) -> Message:
    return reply(msg, "error", error_response(exc, reason))


def unmatched_reply(msg: Message) -> Message:
    """Phoenix's answer to a message for a topic this socket has not joined:
    `{reason: "unmatched topic"}` (plus our `error` object)."""
    return error_reply(msg, UnmatchedTopic(UNMATCHED_TOPIC), reason=UNMATCHED_TOPIC)


# -- topics and connection parameters ------------------------------------------------------

_TOPIC = re.compile(r"^(user|event):([0-9A-Fa-f-]{32,36})$")


def parse_topic(name: str) -> Topic | None:
    if name == PHOENIX_TOPIC:
        return Topic(name, PHOENIX_TOPIC, None)
    m = _TOPIC.match(name)
    if not m:
        return None
    try:
        return Topic(name, m.group(1), str(uuid.UUID(m.group(2))))
    except ValueError:
        return None


def _offered(protocols: Iterable[str]) -> list[str]:
    """Subprotocols one per item; items holding a raw comma-separated header work too."""
    return [p.strip() for item in protocols for p in str(item).split(",") if p.strip()]


def token_from_subprotocols(protocols: Iterable[str] | None) -> str | None:
    """The token of Phoenix 1.8's `authToken` option, from the offered subprotocols
    (`Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<b64>`); None when absent
    or malformed. Like Phoenix, exactly one such entry is honoured. The client encodes
    with `btoa` (standard alphabet, padding removed); the URL-safe alphabet is accepted too."""
    entries = [p for p in _offered(protocols or ()) if p.startswith(AUTH_TOKEN_PREFIX)]
    if len(entries) != 1:
        return None
    encoded = entries[0][len(AUTH_TOKEN_PREFIX) :].translate(str.maketrans("-_", "+/"))
    encoded += "=" * (-len(encoded) % 4)
    try:
        token = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return token or None


def select_subprotocol(protocols: Iterable[str] | None) -> str | None:
    """The subprotocol to accept the upgrade with: `phoenix` when offered, else None.
    Never the token entry (it must not be echoed back in the response headers)."""
    return SUBPROTOCOL if SUBPROTOCOL in _offered(protocols or ()) else None


_SECRET_PARAM = re.compile(r"((?:^|[?&])(?:token|access_token|authToken)=)[^&#]*", re.IGNORECASE)


def redact(url_or_query: str) -> str:
    """A URL or query string with token parameters replaced, for logs."""
    return _SECRET_PARAM.sub(r"\1[REDACTED]", url_or_query)


# -- one socket's channels -----------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    """What `on_join` may return instead of a plain response: the join reply's
    `response` and pushes to send right after the reply (e.g. `event_data`)."""

    response: Any = field(default_factory=dict)
    pushes: list[tuple[str, Any]] = field(default_factory=list)


class NoReply:
    """Return `NO_REPLY` from `on_event` to send no `phx_reply` (as a Phoenix
    `{:noreply, socket}`); the client's push then times out."""


NO_REPLY = NoReply()

JoinHandler = Callable[[Topic, dict], Awaitable["Joined | dict | None"]]
EventHandler = Callable[[Topic, str, dict], Awaitable[Any]]
LeaveHandler = Callable[[Topic], Awaitable[None]]


@dataclass
class _Channel:
    topic: Topic
    join_ref: str | None
    joined: bool = False


class ChannelSession:
    """The joined topics of one socket and Phoenix's rules for them.

    - `on_join(topic, payload)`: authorize and subscribe; return a response (dict, None
      for `{}`) or `Joined(response, pushes)`; raise a `LootifyError` (e.g. `Forbidden`)
      to refuse: the reply is `{status: "error", response: {reason, error}}`.
    - `on_event(topic, event, payload)`: a client push on a joined topic; its return
      value is the `ok` reply's response (None for `{}`, `NO_REPLY` for none); a
      `LootifyError` becomes an error reply.
    - `on_leave(topic)`: unsubscribe (after phx_leave, a duplicate join, `close`).

    `receive(text)` returns the frames to send, in order. Joins and leaves are handled
    one at a time (a lock); client events may be handled concurrently (e.g. one task per
    frame) since they do not change the session. `push(topic, event, payload)` gives
    the frame for a server push, or None when the socket has not joined that topic.
    A push published while a join is still running is not delivered: read snapshots
    (`event_data`) after subscribing, at the end of `on_join`.
    """

    def __init__(
        self,
        on_join: JoinHandler,
        on_event: EventHandler,
        on_leave: LeaveHandler | None = None,
        *,
        max_topics: int = MAX_TOPICS,
    ) -> None:
        self._on_join = on_join
        self._on_event = on_event
        self._on_leave = on_leave
        self.max_topics = max_topics
        self._channels: dict[str, _Channel] = {}
        self._lock = asyncio.Lock()

    @property
    def joined(self) -> dict[str, str | None]:
        """Joined topic name -> its join_ref."""
        return {name: ch.join_ref for name, ch in self._channels.items() if ch.joined}

    async def receive(self, text: str | bytes) -> list[str]:
        """Handle one frame; `ProtocolError` when it is malformed."""
        return [encode(m) for m in await self.handle(decode(text))]

    async def handle(self, msg: Message) -> list[Message]:
        if msg.topic == PHOENIX_TOPIC and msg.event == HEARTBEAT:
            return [reply(msg, "ok", {})]
        if msg.event == JOIN:
            async with self._lock:
                return await self._join(msg)
        if msg.event == LEAVE:
            async with self._lock:
                return await self._leave(msg)
        channel = self._channels.get(msg.topic)
        if channel is None or not channel.joined:
            return [unmatched_reply(msg)]
        try:
            response = await self._on_event(channel.topic, msg.event, msg.payload)
        except LootifyError as exc:
            return [error_reply(msg, exc)]
        except Exception as exc:
            if dependency_failure(exc):  # as HTTP answers it: 503, retry
                log.warning("event %r on %s: dependency unavailable: %r", msg.event,
                            msg.topic, exc)
                return [error_reply(msg, Unavailable("a dependency is unavailable; retry"))]
            log.exception("event %r on %s failed", msg.event, msg.topic)
            return [error_reply(msg, InternalError("internal error"))]
        if response is NO_REPLY:
            return []
        return [reply(msg, "ok", {} if response is None else response)]

    async def _join(self, msg: Message) -> list[Message]:
        topic = parse_topic(msg.topic)
        if topic is None or topic.kind == PHOENIX_TOPIC:
            return [unmatched_reply(msg)]
        out: list[Message] = []
        old = self._channels.pop(msg.topic, None)
        if old is not None:
            # Phoenix closes the existing channel, then joins again.
            out.append(close_message(old.topic.name, old.join_ref))
            if old.joined:
                await self._leave_quietly(old.topic)
        if len(self._channels) >= self.max_topics:
            out.append(error_reply(msg, TooManyTopics(f"at most {self.max_topics} topics")))
            return out
        channel = _Channel(topic, msg.join_ref)
        self._channels[msg.topic] = channel
        try:
            result = await self._on_join(topic, msg.payload)
        except LootifyError as exc:
            self._forget(channel)
            out.append(error_reply(msg, exc))
            return out
        except Exception:
            log.exception("join of %s crashed", msg.topic)
            self._forget(channel)
            out.append(error_reply(msg, InternalError("join crashed"), reason="join crashed"))
            return out
        if self._channels.get(msg.topic) is not channel:  # dropped meanwhile (close/error)
            await self._leave_quietly(topic)
            out.append(error_reply(msg, InternalError("join crashed"), reason="join crashed"))
            return out
        channel.joined = True
        joined = result if isinstance(result, Joined) else Joined({} if result is None else result)
        out.append(reply(msg, "ok", joined.response))
        out.extend(push(msg.join_ref, msg.topic, ev, payload) for ev, payload in joined.pushes)
        return out

    async def _leave(self, msg: Message) -> list[Message]:
        channel = self._channels.get(msg.topic)
        # Never joined, or a leave from an older join of the topic (the client has
        # raced a duplicate join): ok, and the current channel stays.
        if channel is None or (msg.join_ref is not None and msg.join_ref != channel.join_ref):
            return [reply(msg, "ok", {})]
        self._forget(channel)
        if channel.joined:
            await self._leave_quietly(channel.topic)
        return [reply(msg, "ok", {}), close_message(msg.topic, channel.join_ref)]

    def _forget(self, channel: _Channel) -> None:
        if self._channels.get(channel.topic.name) is channel:
            del self._channels[channel.topic.name]

    async def _leave_quietly(self, topic: Topic) -> None:
        if self._on_leave is None:
            return
        try:
            await self._on_leave(topic)
        except Exception:
            log.exception("leave of %s failed", topic.name)

    def push(self, topic: str, event: str, payload: Any) -> str | None:
        """The frame for a server push on `topic`, or None when not joined."""
        channel = self._channels.get(topic)
        if channel is None or not channel.joined:
            return None
        return encode(push(channel.join_ref, topic, event, payload))

    def error(self, topic: str) -> str | None:
        """Drop `topic` after its subscription broke: the `phx_error` frame to send (the
        client rejoins), or None when not joined. `on_leave` is not called."""
        channel = self._channels.pop(topic, None)
        if channel is None:
            return None
        return encode(error_message(topic, channel.join_ref))

    async def close(self) -> None:
        """The socket is gone: `on_leave` for every joined topic."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            if channel.joined:
                await self._leave_quietly(channel.topic)
