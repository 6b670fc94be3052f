"""The Phoenix socket at `/socket/websocket`: authentication, channels, client events.

- The token comes from `?token=` or Phoenix 1.8's `authToken` subprotocol; a missing,
  bad, expired or revoked one closes the socket before accepting (HTTP 403).
- `user:{id}`: only its owner; pushes `balance`, `bet_placed`, `bet_settled`;
  handles `place_bet`, `cancel_bet`, `get_balance`.
- `event:{id}`: anyone; `event_data` right after the join reply, then
  `odds_updated` and `status_changed`.
- Pushes come through the replica's `Hub` (`realtime.hub`). A socket whose queue
  overflows (a client that does not read) is closed; a malformed frame closes only
  its own socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from actors.errors import InvalidInput, LootifyError, NotFound

from .. import idempotency, services, views
from ..auth import tokens
from ..context import Context
from ..errors import Forbidden
from ..schemas import BetIn, CancelIn
from . import phoenix
from .hub import Hub

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_OVERLOAD = 1013
# "Service restart": the client reconnects (phoenix.js does on any close it did not ask
# for), to another replica or once the cluster is back.
CLOSE_RESTART = 1012


async def token_of(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    return phoenix.token_from_subprotocols(ws.scope.get("subprotocols") or ())


async def serve_socket(ws: WebSocket, ctx: Context, hub: Hub) -> None:
    """The whole life of one connection."""
    m = ctx.metrics
    if ctx.draining:
        m.ws_refused.labels("draining").inc()
        await ws.close(code=CLOSE_RESTART)
        return
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
    sock = Socket(ws, ctx, hub, str(uuid.UUID(claims.user_id)))
    hub.connected.add(sock)
    try:
        await sock.run()
    finally:
        hub.connected.discard(sock)
        m.ws_connections.dec()
        await sock.session.close()


class Socket:
    def __init__(self, ws: WebSocket, ctx: Context, hub: Hub, user_id: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.hub = hub
        self.user_id = user_id
        self.out: asyncio.Queue[str | None] = asyncio.Queue(maxsize=ctx.settings.ws_queue_max)
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
            log.warning("closing a socket that does not read (%d frames queued)",
                        self.out.maxsize)
            self._close(CLOSE_OVERLOAD)

    def close(self, code: int) -> None:
        """Close the socket with `code` once what is queued for it is dropped."""
        self._close(code)

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
        idle_s = self.ctx.settings.ws_idle_s
        while self.close_code is None:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=idle_s)
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
            await self.hub.join(topic.name, self)
            ctx.metrics.ws_joins.labels("user").inc()
            return {}
        assert topic.id is not None, "event topics carry an id"
        await self.hub.join(topic.name, self)  # subscribe first, then read the snapshot
        try:
            event = await ctx.odds_cache.fetch(topic.id)
        except BaseException:
            self.hub.leave(topic.name, self)
            raise
        if event is None:
            self.hub.leave(topic.name, self)
            raise NotFound("no such event")
        ctx.metrics.ws_joins.labels("event").inc()
        return phoenix.Joined({}, [("event_data", views.event(event))])

    async def on_leave(self, topic: phoenix.Topic) -> None:
        self.hub.leave(topic.name, self)
        self.ctx.metrics.ws_joins.labels(topic.kind).dec()

    async def on_event(self, topic: phoenix.Topic, event: str, payload: dict) -> Any:
        ctx = self.ctx
        if topic.kind != "user":
            raise InvalidInput(f"no client events on {topic.kind} topics")
        if event == "get_balance":
            return views.balance(await services.balance(ctx, self.user_id), ctx.settings.currency)
        if event == "place_bet":
            # An optional `idempotency_key` makes a resent push one bet, as the HTTP
            # header does.
            key = payload.get("idempotency_key")
            fingerprint = None
            if key is not None:
                fingerprint = idempotency.request_hash("PUSH", event, json.dumps(payload))
            bet = await services.place_bet(
                ctx, self.user_id, _model(BetIn, payload), idempotency_key=key,
                request_hash=fingerprint, channel="ws",
            )
            return {"bet": views.bet(bet)}
        if event == "cancel_bet":
            body = _model(CancelIn, payload)
            return {"bet": views.bet(await services.cancel_bet(ctx, self.user_id, body.bet_id))}
        raise InvalidInput(f"unknown event {event!r}")


def _model(model: type[BaseModel], payload: dict) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first: Mapping[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}") from None
