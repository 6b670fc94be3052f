"""The chaos run's clients and its record of what was acknowledged.

Every request goes through `Api.request`, which classifies its answer: acknowledged
(2xx), a clear error (4xx, or 503, with `{"error": {"code"}}`: counted by code), or a
finding (a 5xx other than 503, an answer without an error code, a code in
`NEVER_CLEAR`, no answer within `HANG_S`, or a connection cut). A request carrying an
Idempotency-Key is retried with the same key while it meets 503s, cut connections or
`idempotency_in_progress` (`RETRY_FOR_S`): the retry learns the first attempt's
outcome, so what was acknowledged is known exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

# Codes that are findings however they come: this client never sends a key again with
# another body, so a conflict on a retry means it cannot learn the first outcome.
NEVER_CLEAR = ("internal_error", "idempotency_conflict")
HANG_S = 20.0  # far beyond the gateway's own deadline (4.5 s, then 503)
RETRY_FOR_S = 30.0


@dataclass
class Tally:
    """Operations by kind: attempted, acknowledged, failed with a clear error (by code),
    and findings (by what was seen)."""

    attempted: Counter = field(default_factory=Counter)
    acked: Counter = field(default_factory=Counter)
    clear: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    findings: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    retries: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def finding(self, kind: str, what: str, detail: str) -> None:
        self.findings[kind][what] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}: {detail[:200]}")


@dataclass
class Acked:
    """What acknowledged answers claimed, for the audit to find in PostgreSQL."""

    users: set[str] = field(default_factory=set)
    # reference id -> (user, amount in minor units)
    deposits: dict[str, tuple[str, int]] = field(default_factory=dict)
    withdrawals: dict[str, tuple[str, int]] = field(default_factory=dict)
    # bet id -> (user, market, amount)
    bets: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    settled: dict[str, str] = field(default_factory=dict)  # market -> winner
    voided: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    status: int | None  # None: no answer (hang or cut connection)
    body: Any = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def answered(self) -> bool:
        """Answered with something a client can act on (2xx, or a 4xx with a code)."""
        return self.ok or (self.status is not None and 400 <= self.status < 500
                           and self.code is not None)


def minor(amount: str) -> int:
    whole, _, cents = amount.partition(".")
    return int(whole) * 100 + int((cents + "00")[:2])


def error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


class Api:
    """HTTP to the gateway, counted in `tally` under each request's kind."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=HANG_S,
                                      limits=httpx.Limits(max_connections=64))
        self.tally = tally

    async def close(self) -> None:
        await self.http.aclose()

    async def once(self, method: str, path: str, *, token: str | None = None,
                   key: str | None = None, body: Any = None,
                   timeout: float = HANG_S) -> tuple[Outcome, str | None]:
        """One attempt: its outcome and, when it is a finding, what was seen."""
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if key:
            headers["Idempotency-Key"] = key
        try:
            r = await self.http.request(method, path, json=body, headers=headers,
                                        timeout=timeout)
        except httpx.TimeoutException:
            return Outcome(None), "hang"
        except httpx.TransportError as exc:
            return Outcome(None), f"cut:{type(exc).__name__}"
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        outcome = Outcome(r.status_code, payload, error_code(payload))
        if outcome.code in NEVER_CLEAR:
            return outcome, outcome.code
        if outcome.ok or (outcome.code and (r.status_code < 500 or r.status_code == 503)):
            return outcome, None
        return outcome, f"http_{r.status_code}" + ("" if outcome.code else "_without_code")

    async def request(self, kind: str, method: str, path: str, *, token: str | None = None,
                      key: str | None = None, body: Any = None, retry: bool = False) -> Outcome:
        """An operation, retried (with the same key) through 503s and cut connections
        when `retry`; counted once, by its last attempt."""
        self.tally.attempted[kind] += 1
        until = time.monotonic() + RETRY_FOR_S
        pause = 0.25
        while True:
            outcome, seen = await self.once(method, path, token=token, key=key, body=body)
            # 409 idempotency_in_progress: an earlier attempt with this key still runs.
            again = (outcome.status == 503 or (seen or "").startswith("cut:")
                     or outcome.code == "idempotency_in_progress")
            if not (retry and again and time.monotonic() + pause < until):
                break
            self.tally.retries[kind] += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        if outcome.ok:
            self.tally.acked[kind] += 1
        elif seen is None:
            self.tally.clear[kind][outcome.code or "?"] += 1
        else:
            self.tally.finding(kind, seen, f"{method} {path} key {key} -> {outcome.status} "
                               f"{outcome.body!r}")
        return outcome


class Phx:
    """A Phoenix V2 socket: replies matched by ref, server pushes kept by event."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ref = 0
        self.replies: dict[str, asyncio.Future] = {}
        self.pushes: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, token: str) -> Phx:
        ws_url = url.replace("http://", "ws://") + f"/socket/websocket?vsn=2.0.0&token={token}"
        try:
            ws = await asyncio.wait_for(connect(ws_url, open_timeout=HANG_S), HANG_S)
        except WebSocketException as exc:  # refused upgrade (a 503, say): as if cut
            raise ConnectionError(repr(exc)) from exc
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                _join_ref, ref, topic, event, payload = json.loads(raw)
                if event == "phx_reply" and ref in self.replies:
                    future = self.replies.pop(ref)
                    if not future.done():
                        future.set_result(payload)
                elif ref is None:
                    self.pushes.put_nowait((topic, event, payload))
        except (WebSocketException, OSError):
            pass
        finally:
            for future in self.replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("socket closed"))

    async def push(self, topic: str, event: str, payload: dict, timeout: float = HANG_S) -> dict:
        """The reply's payload (`{status, response}`); ConnectionError when the socket
        closes first, TimeoutError when nothing comes within `timeout`."""
        self.ref += 1
        ref = str(self.ref)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.replies[ref] = future
        join_ref = "1" if event != "phx_join" else ref
        try:
            await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        except (WebSocketException, OSError) as exc:
            self.replies.pop(ref, None)
            raise ConnectionError(str(exc)) from exc
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        self.reader.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (TimeoutError, WebSocketException, OSError):
            pass
