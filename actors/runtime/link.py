"""Direct links: a router's batches to a host over a TCP connection of its own.

A Ray actor call hands the call and its answer across several of Ray's threads in
both processes: on this 2-core machine about 40% of a host's CPU, and milliseconds of
every round under load. So a host also listens on a socket (`Listener`), and a
router that has reached it sends its batches there (`Link`): the same payload and
answer as `EntityHost.call`, framed. Erlang's distribution does the same: nodes talk
over connections of their own, beside whatever found them.

Ray stays the control plane. It finds the host (`EntityHost.endpoint`, which also
gives the link's secret), restarts it, and carries every call while no link is up. A
link that breaks fails its calls with `LinkDown`, which the router treats as a host
that went down: its retries, rerouting and call deadline hold as before.

Publishers hand events to subscribers the same way (`actors.pubsub`): there PubSub
gives out the subscriber's endpoint, and carries the events no link can.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# A call: the lengths of its payload and of its request ids (JSON), and its id; then
# both. An answer: the length of its body, the call's id, and whether the host served
# it (the body is `EntityHost.call`'s answer) or not (the body says why).
_CALL = struct.Struct("!IIQ")
_ANSWER = struct.Struct("!IQ?")
_SECRET_BYTES = 16
# The framing's version, in every endpoint: a router links only to a host that speaks
# its own (during a rolling upgrade, old and new processes talk through Ray).
PROTOCOL = 1
# A body larger than this is not a batch: the connection is dropped.
_MAX_BODY = 256 * 1024 * 1024
CONNECT_TIMEOUT_S = 2.0
# A peer that vanished without closing (its node cut off, powered off) is noticed
# within seconds, idle or not; a call in flight is bounded by the router's deadline.
_KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3),
              ("TCP_USER_TIMEOUT", 10_000))

Serve = Callable[[bytes, "list[str] | None"], Awaitable[bytes]]
Endpoint = tuple[str, int, bytes, int]  # address, port, secret, protocol


class LinkDown(ConnectionError):
    """The link broke or was closed: the call may or may not have taken effect."""


class LinkRefused(Exception):
    """The host could not serve the batch (e.g. it could not decode it)."""


class Listener:
    """The serving side (a host, or a PubSub subscriber): answers each framed batch with
    `serve(payload, request_ids)`, many at a time, on connections that first proved
    they know the secret."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.secret = secrets.token_bytes(_SECRET_BYTES)
        self.server: asyncio.Server | None = None
        self.endpoint: Endpoint | None = None
        self.served = 0  # batches answered over links
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, address: str) -> Endpoint:
        self.server = await asyncio.start_server(self._connection, address, 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = (address, port, self.secret, PROTOCOL)
        return self.endpoint

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task] = set()
        self._writers.add(writer)
        try:
            offered = await asyncio.wait_for(reader.readexactly(_SECRET_BYTES), CONNECT_TIMEOUT_S)
            if not hmac.compare_digest(offered, self.secret):
                return
            while True:
                size, ids_size, call_id = _CALL.unpack(await reader.readexactly(_CALL.size))
                if size + ids_size > _MAX_BODY:
                    return
                payload = await reader.readexactly(size)
                ids = await reader.readexactly(ids_size) if ids_size else b""
                task = asyncio.ensure_future(self._answer(writer, call_id, payload, ids))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the router went away or gave up: its calls fail over on its side
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, call_id: int, payload: bytes, ids: bytes
    ) -> None:
        self.served += 1
        try:
            answer, ok = await self.serve(payload, json.loads(ids) if ids else None), True
        except Exception as exc:  # answered as a refused batch, as a Ray call would be
            answer, ok = f"{type(exc).__name__}: {exc}"[:500].encode(), False
        if not writer.is_closing():
            writer.write(_ANSWER.pack(len(answer), call_id, ok) + answer)

    def close(self) -> None:
        """Stop listening, and close the links open now."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()


class LinkSlot:
    """Where a caller keeps its link to one peer: open, being opened, or neither."""

    __slots__ = ("link", "opening", "closed")

    def __init__(self) -> None:
        self.link: Link | None = None
        self.opening: asyncio.Future[None] | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.opening is not None:
            self.opening.cancel()
        if self.link is not None:
            self.link.close()


class Link:
    """The calling side (a router, or a publisher): one connection to one peer, any
    number of calls in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: dict[int, asyncio.Future[tuple[bool, bytes]]] = {}
        self.next_id = 0
        self.closed = False
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, endpoint: Endpoint) -> Link:
        address, port, secret, protocol = endpoint
        if protocol != PROTOCOL:
            raise LinkDown(f"the host speaks protocol {protocol}, not {PROTOCOL}")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port), CONNECT_TIMEOUT_S
        )
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in _KEEPALIVE:
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        writer.write(secret)
        return cls(reader, writer)

    async def call(self, payload: bytes, request_ids: list[str] | None = None) -> bytes:
        """The host's answer to one batch; `LinkDown` if the link breaks first. A call
        given up (cancelled) is forgotten; the host may still act on it."""
        if self.closed:
            raise LinkDown("the link is closed")
        self.next_id += 1
        call_id = self.next_id
        future = self.waiting[call_id] = asyncio.get_running_loop().create_future()
        ids = json.dumps(request_ids).encode() if request_ids else b""
        self.writer.write(_CALL.pack(len(payload), len(ids), call_id) + payload + ids)
        try:
            ok, answer = await future
        finally:
            self.waiting.pop(call_id, None)
        if not ok:
            raise LinkRefused(answer.decode(errors="replace"))
        return answer

    async def _read(self) -> None:
        try:
            while True:
                size, call_id, ok = _ANSWER.unpack(await self.reader.readexactly(_ANSWER.size))
                answer = await self.reader.readexactly(size)
                future = self.waiting.get(call_id)
                if future is not None and not future.done():
                    future.set_result((ok, answer))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("link closed: %r", exc)
        finally:
            self._shut()

    def close(self) -> None:
        self._shut()
        self._reading.cancel()

    def _shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(LinkDown("the link to the host broke"))
        self.waiting.clear()
