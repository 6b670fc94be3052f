"""The Phoenix socket at `/socket/websocket`: authentication, channels, fan-out.

- The token comes from `?token=` or Phoenix 1.8's `authToken` subprotocol; a missing,
  bad, expired or revoked one closes the socket before accepting (HTTP 403).
- `user:{id}`: only its owner; pushes `balance`, `bet_placed`, `bet_settled`;
  handles `place_bet`, `cancel_bet`, `get_balance`.
- `event:{id}`: anyone; `event_data` right after the join reply, then
  `odds_updated` and `status_changed`.
- `Hub` holds, per topic, the sockets of this replica that joined it, and one
  `Subscriber` callback per topic: a PubSub event is formatted once and then
  queued to each socket. A socket whose queue overflows (a client that does not
  read) is closed; a malformed frame closes only its own socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from actors.errors import Forbidden, InvalidInput, LootifyError, NotFound, Unavailable
from actors.pubsub import Subscriber

from . import phoenix, tokens, views
from .metrics import Metrics
from .schemas import BetIn, CancelIn

if TYPE_CHECKING:
    from .context import Context

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

IDLE_S = float(os.environ.get("LOOTIFY_WS_IDLE_S", 60.0))  # Phoenix's default socket timeout
QUEUE_MAX = int(os.environ.get("LOOTIFY_WS_QUEUE_MAX", 1000))
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_OVERLOAD = 1013


class Hub:
    def __init__(self, subscriber: Subscriber, metrics: Metrics) -> None:
        self.subscriber = subscriber
        self.metrics = metrics
        self.sockets: dict[str, set[Socket]] = {}

    async def join(self, topic: str, sock: Socket) -> None:
        self.sockets.setdefault(topic, set()).add(sock)
        try:
            await self.subscriber.subscribe(topic, self._deliver)
        except BaseException as exc:
            self.leave(topic, sock)
            if isinstance(exc, Exception) and not isinstance(exc, LootifyError):
                log.warning("subscribing to %s failed: %r", topic, exc)
                raise Unavailable("live updates are unavailable; rejoin later") from exc
            raise

    def leave(self, topic: str, sock: Socket) -> None:
        socks = self.sockets.get(topic)
        if socks is None:
            return
        socks.discard(sock)
        if not socks:
            del self.sockets[topic]
            self.subscriber.unsubscribe(topic, self._deliver)

    def _deliver(self, topic: str, event: str, payload: Any) -> None:
        socks = self.sockets.get(topic)
        if not socks or event.startswith("_"):
            return
        body = views.push(event, payload)
        for sock in list(socks):
            sock.push(topic, event, body)
        self.metrics.pushes.labels(event).inc(len(socks))


async def token_of(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    return phoenix.token_from_subprotocols(ws.scope.get("subprotocols") or ())


async def serve_socket(ws: WebSocket, ctx: Context) -> None:
    """The whole life of one connection."""
    m = ctx.metrics
    vsn = ws.query_params.get("vsn")
    if vsn is not None and not vsn.startswith("2."):
        m.ws_refused.labels("vsn").inc()
        await ws.close(code=CLOSE_POLICY)
        return
    try:
        claims = await tokens.verify(ctx.db(), await token_of(ws))
    except LootifyError:
        m.ws_refused.labels("token").inc()
        await ws.close(code=CLOSE_POLICY)  # before accept: the client sees HTTP 403
        return
    except Exception as exc:  # the database is down: refuse rather than guess
        log.warning("socket refused, token check failed: %s", type(exc).__name__)
        m.ws_refused.labels("unavailable").inc()
        await ws.close(code=CLOSE_OVERLOAD)
        return
    await ws.accept(subprotocol=phoenix.select_subprotocol(ws.scope.get("subprotocols")))
    m.ws_connections.inc()
    sock = Socket(ws, ctx, str(uuid.UUID(claims.user_id)))
    try:
        await sock.run()
    finally:
        m.ws_connections.dec()
        await sock.session.close()


class Socket:
    def __init__(self, ws: WebSocket, ctx: Context, user_id: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.user_id = user_id
        self.out: asyncio.Queue[str | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.session = phoenix.ChannelSession(self.on_join, self.on_event, self.on_leave)
        self.close_code: int | None = None

    # -- frames --------------------------------------------------------------------------

    def push(self, topic: str, event: str, payload: Any) -> None:
        frame = self.session.push(topic, event, payload)
        if frame is not None:
            self._send(frame)

    def _send(self, frame: str) -> None:
        if self.close_code is not None:
            return
        try:
            self.out.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("closing a socket that does not read (%d frames queued)", QUEUE_MAX)
            self._close(CLOSE_OVERLOAD)

    def _close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            while not self.out.empty():
                self.out.get_nowait()
            self.out.put_nowait(None)

    async def run(self) -> None:
        writer = asyncio.ensure_future(self._write())
        try:
            await self._read()
        finally:
            if not writer.done():
                self._close(self.close_code or 1000)
                try:
                    await asyncio.wait_for(writer, timeout=2.0)
                except (TimeoutError, Exception):
                    writer.cancel()

    async def _read(self) -> None:
        metrics = self.ctx.metrics
        while self.close_code is None:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=IDLE_S)
            except TimeoutError:
                self._close(1000)  # no heartbeat: the client is gone
                return
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            data = text if text is not None else message.get("bytes")
            if data is None:
                continue
            metrics.ws_frames.labels("in").inc()
            try:
                frames = await self.session.receive(data)
            except phoenix.ProtocolError as exc:
                too_big = "longer than" in exc.message
                self._close(CLOSE_TOO_BIG if too_big else CLOSE_INVALID)
                return
            for frame in frames:
                self._send(frame)

    async def _write(self) -> None:
        metrics = self.ctx.metrics
        try:
            while True:
                frame = await self.out.get()
                if frame is None:
                    break
                await self.ws.send_text(frame)
                metrics.ws_frames.labels("out").inc()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close_code = self.close_code or 1006
            return
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=self.close_code or 1000)
            except (RuntimeError, OSError):
                pass

    # -- channels ------------------------------------------------------------------------

    async def on_join(self, topic: phoenix.Topic, payload: dict) -> Any:
        ctx = self.ctx
        if topic.kind == "user":
            if topic.id != self.user_id:
                raise Forbidden("a user topic may be joined only by its owner")
            await ctx.hub.join(topic.name, self)
            ctx.metrics.ws_joins.labels("user").inc()
            return {}
        await ctx.hub.join(topic.name, self)  # subscribe first, then read the snapshot
        try:
            event = await ctx.catalog.fetch(topic.id)
        except BaseException:
            ctx.hub.leave(topic.name, self)
            raise
        if event is None:
            ctx.hub.leave(topic.name, self)
            raise NotFound("no such event")
        ctx.metrics.ws_joins.labels("event").inc()
        return phoenix.Joined({}, [("event_data", views.event(event))])

    async def on_leave(self, topic: phoenix.Topic) -> None:
        self.ctx.hub.leave(topic.name, self)
        self.ctx.metrics.ws_joins.labels(topic.kind).dec()

    async def on_event(self, topic: phoenix.Topic, event: str, payload: dict) -> Any:
        from .api_betting import cancel_bet, place_bet

        if topic.kind != "user":
            raise InvalidInput(f"no client events on {topic.kind} topics")
        if event == "get_balance":
            return views.balance(await (await self.ctx.aio()).wallet(self.user_id).balance())
        if event == "place_bet":
            body = _model(BetIn, payload)
            bet = await place_bet(self.ctx, self.user_id, body, channel="ws")
            return {"bet": views.bet(bet)}
        if event == "cancel_bet":
            body = _model(CancelIn, payload)
            return {"bet": views.bet(await cancel_bet(self.ctx, self.user_id, body.bet_id))}
        raise InvalidInput(f"unknown event {event!r}")


def _model(model: type, payload: dict) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}") from None
