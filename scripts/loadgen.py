"""A standalone load generator for `make bench` (run it as its own process).

Modes (all print one JSON object on stdout; a summary goes to stderr):

  http    closed-loop `POST /api/bets` over `--concurrency` HTTP/1.1 keep-alive
          connections for `--duration` seconds after `--warmup`; every bet carries
          its own `Idempotency-Key`, as a client of a money API sends;
          -> {bets_per_s, p50, p95, p99, max, ok, errors: {status or code: n}, ...}
  ws      `--concurrency` Phoenix sockets, each joined to `user:{id}`, each pushing
          `place_bet` and waiting for its `phx_reply` before the next (the contract's
          `place_bet` payload has no key or reference: the server names each bet);
          -> the same figures, latency = push to reply.
  fanout  `--sockets` Phoenix sockets joined to `event:{event_id}`; the generator then
          changes the odds of `--market` `--changes` times with
          `PUT /api/markets/{id}/odds` (operator token) and every socket records when
          its `odds_updated` arrives.
          -> per change, the time from sending the PUT to its arrival at the last
             socket (the 1,000th of 1,000): p50/p95/p99/max; and the distribution
             over every delivery; missing deliveries.

The workload (users, markets, tokens) comes from `--config FILE` (JSON):

    {"base_url": "http://127.0.0.1:8000",
     "auth": "bearer" | "x-user",          # Authorization: Bearer <token> or X-User: <id>
     "users": [{"id": "...", "token": "..."}, ...],
     "markets": ["<id>", ...],             # markets[0] is the hot one
     "selections": ["home", "away"],
     "event_id": "...", "fanout_market": "...", "operator_token": "..."}

`--distribution hot` puts 95% of bets on markets[0] and the rest uniformly on the
others; `spread` is uniform over all of them. Each worker (connection or socket)
bets for its own slice of the users, so two in-flight bets rarely share a wallet:
what is measured is contention on markets, as a real crowd makes it.

The HTTP client is a minimal HTTP/1.1 one on asyncio protocols (uvloop when present):
httpx costs several times more CPU per request, which on 2 cores would measure the
generator. `--client httpx` runs the same workload with httpx to compare. The
generator's own CPU time is reported (`loadgen_cpu`, the fraction of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summarize(lat_ms: list[float]) -> dict[str, float]:
    ordered = sorted(lat_ms)
    return {
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2) if ordered else 0.0,
    }


def marker(what: str) -> None:
    """`#window-start` / `#window-end` on stdout: bench_http.py samples every process's
    CPU at these moments."""
    print(f"#window-{what}", flush=True)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the workload ---------------------------------------------------------------------------


class Picker:
    """Which market a bet goes to."""

    def __init__(self, markets: list[str], distribution: str, hot_share: float,
                 rng: random.Random) -> None:
        if not markets:
            raise SystemExit("no markets in the config")
        self.markets = markets
        self.hot = distribution == "hot" and len(markets) > 1
        self.hot_share = hot_share
        self.rng = rng

    def market(self) -> str:
        r = self.rng
        if self.hot:
            if r.random() < self.hot_share:
                return self.markets[0]
            return self.markets[1 + r.randrange(len(self.markets) - 1)]
        return self.markets[r.randrange(len(self.markets))]


def bet_body(market: str, selection: str, amount: str) -> bytes:
    return (b'{"market_id":"' + market.encode() + b'","selection":"' + selection.encode()
            + b'","amount":"' + amount.encode() + b'","accept_odds":"any"}')


class Window:
    """Counts only what starts after the warm-up and ends before the deadline."""

    def __init__(self, warmup: float, duration: float) -> None:
        now = time.perf_counter()
        self.start = now + warmup
        self.end = self.start + duration
        self.lat: list[float] = []
        self.status: Counter[str] = Counter()
        self.ok = 0
        self.cpu: float | None = None
        self._cpu_task = asyncio.ensure_future(self._measure_cpu())

    async def _measure_cpu(self) -> None:
        """The generator's own CPU during the measured window, in cores."""
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))
        marker("start")
        c0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(max(0.0, self.end - time.perf_counter()))
        self.cpu = round((cpu_seconds() - c0) / (time.perf_counter() - t0), 3)
        marker("end")

    def record(self, t0: float, t1: float, ok: bool, label: str) -> None:
        if t0 >= self.start and t1 <= self.end:
            self.lat.append((t1 - t0) * 1000)
            if ok:
                self.ok += 1
            else:
                self.status[label] += 1

    def result(self, duration: float) -> dict[str, Any]:
        return {
            "bets_per_s": round(self.ok / duration, 1),
            "ok": self.ok,
            **summarize(self.lat),
            "errors": dict(self.status),
            "loadgen_cpu_window": self.cpu,
            "loadgen_cpu_us_per_bet": round(self.cpu * 1e6 * duration / self.ok)
            if self.cpu and self.ok else None,
        }


# -- a small HTTP/1.1 client ----------------------------------------------------------------


class HttpClosed(ConnectionError):
    pass


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; Content-Length or chunked."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # until connected
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpClosed("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17: j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4: total])
        elif b"transfer-encoding: chunked" in head:
            pos, parts = end + 4, []
            while True:
                k = buf.find(b"\r\n", pos)
                if k < 0:
                    return
                size = int(bytes(buf[pos:k]).split(b";")[0], 16)
                if len(buf) < k + 2 + size + 2:
                    return
                parts.append(bytes(buf[k + 2: k + 2 + size]))
                pos = k + 2 + size + 2
                if size == 0:
                    break
            total, body = pos, b"".join(parts)
        else:  # no body (204, 304) or read-until-close, which we do not use
            total, body = end + 4, b""
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body, b"\r\nconnection: close" in head))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.closed:
            raise HttpClosed("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        if self.buf:
            self._parse()
        status, body, close = await self.waiter
        if close:
            self.transport.close()
            self.closed = True
        return status, body

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request_bytes(method: str, path: str, host: str, headers: dict[str, str],
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def auth_headers(cfg: dict, user: dict) -> dict[str, str]:
    if cfg.get("auth", "bearer") == "x-user":
        return {"X-User": user["id"]}
    return {"Authorization": f"Bearer {user['token']}"}


def error_label(status: int, body: bytes) -> str:
    try:
        return f"{status}:{json.loads(body)['error']['code']}"
    except Exception:
        return str(status)


async def run_http(cfg: dict, args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(cfg["base_url"])
    host, port = url.hostname, url.port or 80
    hostport = f"{host}:{port}"
    users = cfg["users"]
    conc = args.concurrency
    window = Window(args.warmup, args.duration)
    conn_errors: Counter[str] = Counter()
    run_id = os.urandom(8).hex().encode()  # keys are unique across runs as well

    async def worker(w: int) -> None:
        rng = random.Random(args.seed * 7919 + w)
        picker = Picker(cfg["markets"], args.distribution, args.hot_share, rng)
        mine = users[w::conc] or users
        heads = [request_bytes("POST", args.path, hostport, auth_headers(cfg, u))
                 for u in mine]
        # request_bytes put the empty body's headers last: rebuild them per bet
        heads = [h[: h.rfind(b"Content-Length:")] for h in heads]
        sels = [s.encode() for s in cfg.get("selections", ["home", "away"])]
        key_prefix = b"Idempotency-Key: %s-%d-" % (run_id, w)
        conn: HttpConnection | None = None
        n = w
        while time.perf_counter() < window.end:
            if conn is None or conn.closed:
                try:
                    conn = await HttpConnection.open(host, port)
                except OSError as exc:
                    conn_errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
            n += 1
            body = bet_body(picker.market(), sels[rng.randrange(len(sels))].decode(),
                            args.amount)
            data = (heads[n % len(heads)] + key_prefix + b"%d\r\nContent-Length: %d\r\n\r\n"
                    % (n, len(body)) + body)
            t0 = time.perf_counter()
            try:
                status, answer = await conn.request(data)
            except (OSError, HttpClosed) as exc:
                window.record(t0, time.perf_counter(), False, f"conn:{type(exc).__name__}")
                conn = None
                continue
            t1 = time.perf_counter()
            ok = status == 201
            window.record(t0, t1, ok, "" if ok else error_label(status, answer))
        if conn is not None:
            conn.close()

    if args.client == "httpx":
        return await run_http_httpx(cfg, args, window)
    await asyncio.gather(*(worker(w) for w in range(conc)))
    out = window.result(args.duration)
    if conn_errors:
        out["connect_errors"] = dict(conn_errors)
    return out


async def run_http_httpx(cfg: dict, args: argparse.Namespace, window: Window) -> dict:
    import httpx

    users = cfg["users"]
    conc = args.concurrency
    run_id = os.urandom(8).hex()
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=cfg["base_url"], limits=limits, timeout=30,
                                 trust_env=False) as client:

        async def worker(w: int) -> None:
            rng = random.Random(args.seed * 7919 + w)
            picker = Picker(cfg["markets"], args.distribution, args.hot_share, rng)
            mine = users[w::conc] or users
            sels = cfg.get("selections", ["home", "away"])
            n = w
            while time.perf_counter() < window.end:
                n += 1
                body = bet_body(picker.market(), sels[rng.randrange(len(sels))], args.amount)
                t0 = time.perf_counter()
                try:
                    r = await client.post(args.path, content=body, headers={
                        **auth_headers(cfg, mine[n % len(mine)]),
                        "Idempotency-Key": f"{run_id}-{w}-{n}",
                        "Content-Type": "application/json"})
                except httpx.HTTPError as exc:
                    window.record(t0, time.perf_counter(), False, f"conn:{type(exc).__name__}")
                    continue
                ok = r.status_code == 201
                window.record(t0, time.perf_counter(), ok,
                              "" if ok else error_label(r.status_code, r.content))

        await asyncio.gather(*(worker(w) for w in range(conc)))
    return window.result(args.duration)


# -- Phoenix sockets ------------------------------------------------------------------------


def ws_url(base_url: str, token: str) -> str:
    u = urlsplit(base_url)
    scheme = "wss" if u.scheme == "https" else "ws"
    return f"{scheme}://{u.netloc}/socket/websocket?token={token}&vsn=2.0.0"


class WsClosed(ConnectionError):
    pass


class WsConnection(asyncio.Protocol):
    """A minimal RFC 6455 client: the upgrade, masked text frames out, text frames in
    (fragmented or not), ping -> pong, close. Each text message goes to `on_text`.
    About a tenth of the `websockets` package's CPU per frame, which matters when the
    generator shares 2 cores with the server."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # until connected
        self.buf = bytearray()
        self.handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.closed = False
        self.closed_future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.on_text = None
        self.fragments: list[bytes] = []
        mask = os.urandom(4)
        self.mask = mask
        self.mask_int = int.from_bytes(mask * 64, "big")  # covers 256-byte payloads

    @classmethod
    async def open(cls, host: str, port: int, path: str, timeout: float = 60) -> WsConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        proto.transport.write((
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        try:
            await asyncio.wait_for(proto.handshake, timeout)
        except BaseException:
            proto.transport.close()
            raise
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshake.done():
            self.handshake.set_exception(WsClosed("closed during the upgrade"))
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            status = int(head[9:12])
            if status != 101:
                self.handshake.set_exception(WsClosed(f"upgrade refused: HTTP {status}"))
                self.transport.close()
                return
            self.upgraded = True
            self.handshake.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if b1 & 0x80:  # a server must not mask; tolerate it anyway
                pos += 4
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos: pos + n])
            if b1 & 0x80:
                payload = bytes(c ^ buf[pos - 4 + i % 4] for i, c in enumerate(payload))
            del buf[: pos + n]
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                self.fragments.append(payload)
                if b0 & 0x80:
                    text = b"".join(self.fragments).decode()
                    self.fragments = []
                    if self.on_text is not None:
                        self.on_text(text)
            elif opcode == 9:
                self._write(0x8A, payload)
            elif opcode == 8:
                if not self.closed:
                    self._write(0x88, payload[:2])
                    self.transport.close()
                    self.closed = True
                return

    def _write(self, head: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes((head, 0x80 | n))
        elif n < 65536:
            header = bytes((head, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((head, 0x80 | 127)) + n.to_bytes(8, "big")
        if n <= 256:
            masked = (int.from_bytes(payload, "big")
                      ^ (self.mask_int >> (8 * (256 - n)))).to_bytes(n, "big")
        else:
            m = self.mask
            masked = bytes(c ^ m[i % 4] for i, c in enumerate(payload))
        self.transport.write(header + self.mask + masked)

    def send_text(self, text: str) -> None:
        if self.closed:
            raise WsClosed("socket closed")
        self._write(0x81, text.encode())

    async def close(self) -> None:
        if not self.closed:
            self._write(0x88, (1000).to_bytes(2, "big"))
            self.closed = True
            try:
                await asyncio.wait_for(asyncio.shield(self.closed_future), 2)
            except TimeoutError:
                pass
        self.transport.close()


class PhoenixSocket:
    """One Phoenix V2 socket: replies resolve futures by ref; other frames go to
    `on_push`. A heartbeat every 25 s (the server drops a socket silent for 60 s)."""

    def __init__(self, conn: Any, raw: bool) -> None:
        self.conn = conn
        self.raw = raw
        self.ref = 0
        self.pending: dict[str, asyncio.Future] = {}
        self.on_push = None
        self.user: dict = {}
        if raw:
            conn.on_text = self._on_text
            self.reader = asyncio.ensure_future(self._watch_raw())
        else:
            self.reader = asyncio.ensure_future(self._read_websockets())
        self.beat = asyncio.ensure_future(self._heartbeat())

    @classmethod
    async def open(cls, base_url: str, token: str, client: str,
                   compression: bool = False) -> PhoenixSocket:
        if client == "raw":
            u = urlsplit(base_url)
            conn = await WsConnection.open(u.hostname or "127.0.0.1", u.port or 80,
                                           f"/socket/websocket?token={token}&vsn=2.0.0")
            return cls(conn, True)
        from websockets.asyncio.client import connect

        ws = await connect(ws_url(base_url, token), compression="deflate" if compression
                           else None, proxy=None, ping_interval=None, open_timeout=60,
                           max_queue=None)
        return cls(ws, False)

    def _on_text(self, text: str) -> None:
        if '"phx_reply"' in text:
            frame = json.loads(text)
            fut = self.pending.pop(frame[1], None)
            if fut is not None and not fut.done():
                fut.set_result(frame[4])
        elif self.on_push is not None:
            self.on_push(text)

    def _fail_pending(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))

    async def _watch_raw(self) -> None:
        try:
            await self.conn.closed_future
        finally:
            self._fail_pending()

    async def _read_websockets(self) -> None:
        try:
            async for text in self.conn:
                self._on_text(text)
        except Exception:
            pass
        finally:
            self._fail_pending()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(25)
            try:
                await self.call("phoenix", "heartbeat", {}, join_ref=None)
            except Exception:
                return

    def frame(self, topic: str, event: str, payload: Any,
              join_ref: str | None) -> tuple[asyncio.Future, str]:
        self.ref += 1
        ref = str(self.ref)
        fut = asyncio.get_running_loop().create_future()
        self.pending[ref] = fut
        return fut, _dumps([join_ref, ref, topic, event, payload])

    async def send(self, text: str) -> None:
        if self.raw:
            self.conn.send_text(text)
        else:
            await self.conn.send(text)

    async def call(self, topic: str, event: str, payload: Any,
                   join_ref: str | None = "1") -> dict:
        fut, text = self.frame(topic, event, payload, join_ref)
        await self.send(text)
        return await fut

    async def close(self) -> None:
        self.beat.cancel()
        try:
            await asyncio.wait_for(self.conn.close(), 5)
        except Exception:
            pass
        self.reader.cancel()


async def open_many(cfg: dict, n: int, topic_of, args: argparse.Namespace, parallel: int = 32,
                    on_push_of=None) -> tuple[list[PhoenixSocket], Counter]:
    users = cfg["users"]
    socks: list[PhoenixSocket | None] = [None] * n
    failures: Counter[str] = Counter()
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        user = users[i % len(users)]
        async with sem:
            for attempt in range(3):
                try:
                    s = await PhoenixSocket.open(cfg["base_url"], user["token"],
                                                 args.ws_client, args.ws_compression)
                except Exception as exc:
                    failures[f"connect:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                s.user = user
                if on_push_of is not None:
                    s.on_push = on_push_of(i)
                try:
                    reply = await asyncio.wait_for(s.call(topic_of(user), "phx_join", {}), 60)
                except Exception as exc:
                    failures[f"join:{type(exc).__name__}"] += 1
                    await s.close()
                    return
                if reply.get("status") != "ok":
                    failures[f"join:{reply.get('response', {}).get('reason')}"] += 1
                    await s.close()
                    return
                socks[i] = s
                return

    await asyncio.gather(*(one(i) for i in range(n)))
    return [s for s in socks if s is not None], failures


async def run_ws(cfg: dict, args: argparse.Namespace) -> dict[str, Any]:
    conc = args.concurrency
    t_open = time.perf_counter()
    socks, failures = await open_many(cfg, conc, lambda u: f"user:{u['id']}", args)
    opened_s = time.perf_counter() - t_open
    window = Window(args.warmup, args.duration)
    sels = cfg.get("selections", ["home", "away"])

    async def worker(w: int, s: PhoenixSocket) -> None:
        rng = random.Random(args.seed * 104729 + w)
        picker = Picker(cfg["markets"], args.distribution, args.hot_share, rng)
        topic = f"user:{s.user['id']}"
        # The frame by hand: json.dumps per bet is a fair part of the generator's CPU.
        head = '["1","%d","' + topic + '","place_bet",{"market_id":"'
        tail = '","amount":"' + args.amount + '","accept_odds":"any"}]'
        loop = asyncio.get_running_loop()
        while time.perf_counter() < window.end:
            s.ref += 1
            ref = s.ref
            fut = s.pending[str(ref)] = loop.create_future()
            text = (head % ref + picker.market() + '","selection":"'
                    + sels[rng.randrange(len(sels))] + tail)
            t0 = time.perf_counter()
            try:
                await s.send(text)
                reply = await fut  # failed by the reader if the socket closes
            except Exception as exc:
                window.record(t0, time.perf_counter(), False, f"conn:{type(exc).__name__}")
                return
            t1 = time.perf_counter()
            ok = reply.get("status") == "ok"
            label = "" if ok else f"error:{(reply.get('response') or {}).get('reason')}"
            window.record(t0, t1, ok, label)

    await asyncio.gather(*(worker(w, s) for w, s in enumerate(socks)))
    out = window.result(args.duration)
    out.update(sockets=len(socks), open_s=round(opened_s, 2))
    if failures:
        out["open_failures"] = dict(failures)
    await asyncio.gather(*(s.close() for s in socks))
    return out


async def run_fanout(cfg: dict, args: argparse.Namespace) -> dict[str, Any]:
    market = cfg["fanout_market"]
    event_id = cfg["event_id"]
    n = args.sockets
    arrivals: list[dict[str, float]] = [{} for _ in range(n)]
    needle = '"odds_updated"'
    mkey = f'"{market}"'
    sel_key = f'"{args.fanout_selection}":'

    def on_push_of(i: int):
        got = arrivals[i]

        def on_push(text: str) -> None:
            # One socket's frame is handled after the ones before it in this loop: keep
            # this cheap (no JSON parse) so the 1,000th socket is not late by our doing.
            t = time.perf_counter()
            if needle in text and mkey in text:
                i = text.find(sel_key, text.find('"odds"'))
                if i < 0:
                    return
                i = text.find('"', i + len(sel_key)) + 1  # `"home":"2.10"` or `"home": "2.10"`
                price = text[i: text.find('"', i)]
                if price not in got:
                    got[price] = t
        return on_push

    t_open = time.perf_counter()
    socks, failures = await open_many(cfg, n, lambda u: f"event:{event_id}",
                                      args, parallel=args.open_parallel,
                                      on_push_of=on_push_of)
    opened_s = time.perf_counter() - t_open
    url = urlsplit(cfg["base_url"])
    host, port = url.hostname, url.port or 80
    conn = await HttpConnection.open(host, port)
    headers = {"Authorization": f"Bearer {cfg['operator_token']}"}
    put_ms, per_change, first, deliveries = [], [], [], []
    missing = 0
    put_errors: Counter[str] = Counter()
    await asyncio.sleep(1.0)  # let the subscriptions settle everywhere
    marker("start")
    c0, w0 = cpu_seconds(), time.perf_counter()
    for k in range(args.changes):
        price = f"{1.50 + 0.01 * (k % 300):.2f}" if k % 2 == 0 else \
            f"{4.50 + 0.01 * (k % 300):.2f}"
        body = json.dumps({"odds": {args.fanout_selection: price}}).encode()
        data = request_bytes("PUT", f"/api/markets/{market}/odds", f"{host}:{port}", headers,
                             body)
        for got in arrivals:
            got.pop(price, None)
        t0 = time.perf_counter()
        status, answer = await conn.request(data)
        put_ms.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            put_errors[error_label(status, answer)] += 1
            continue
        deadline = t0 + args.fanout_timeout
        while time.perf_counter() < deadline:
            if sum(1 for got in arrivals if price in got) >= len(socks):
                break
            await asyncio.sleep(0.005)
        times = [(got[price] - t0) * 1000 for got in arrivals if price in got]
        missing += len(socks) - len(times)
        deliveries += times
        if times:
            first.append(min(times))
        per_change.append(max(times) if len(times) >= len(socks) and times
                          else args.fanout_timeout * 1000)
        await asyncio.sleep(args.interval)
    cpu = round((cpu_seconds() - c0) / (time.perf_counter() - w0), 3)
    marker("end")
    conn.close()
    await asyncio.gather(*(s.close() for s in socks))
    worst = summarize(per_change)
    every = summarize(deliveries)
    out = {
        "sockets": len(socks), "open_s": round(opened_s, 2), "changes": args.changes,
        "last_socket_p50": worst["p50"], "last_socket_p95": worst["p95"],
        "last_socket_p99": worst["p99"], "last_socket_max": worst["max"],
        "delivery_p50": every["p50"], "delivery_p95": every["p95"],
        "delivery_p99": every["p99"], "delivered": len(deliveries), "missing": missing,
        # The first socket's arrival: the pipeline (PUT, owner, PubSub, replica) without
        # the replica's sending to the other sockets.
        "first_socket_p50": summarize(first)["p50"], "first_socket_p99": summarize(first)["p99"],
        "put_p50": summarize(put_ms)["p50"], "loadgen_cpu_window": cpu,
    }
    if failures:
        out["open_failures"] = dict(failures)
    if put_errors:
        out["put_errors"] = dict(put_errors)
    return out


# -- main -----------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("http", "ws", "fanout"))
    p.add_argument("--config", required=True, help="JSON workload file (see above)")
    p.add_argument("--distribution", choices=("hot", "spread"), default="spread")
    p.add_argument("--hot-share", type=float, default=0.95)
    p.add_argument("--concurrency", type=int, default=64,
                   help="connections (http) or sockets (ws), one bet in flight each")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    p.add_argument("--amount", default="1.00")
    p.add_argument("--path", default="/api/bets",
                   help="http: where the bets go (bench_http.py points it at an empty "
                        "endpoint to measure the ingress alone)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--sockets", type=int, default=1000, help="fanout: subscribers")
    p.add_argument("--changes", type=int, default=50, help="fanout: odds changes")
    p.add_argument("--interval", type=float, default=0.2, help="fanout: pause between")
    p.add_argument("--fanout-timeout", type=float, default=5.0)
    p.add_argument("--fanout-selection", default="home")
    p.add_argument("--open-parallel", type=int, default=32, help="sockets opened at once")
    p.add_argument("--ws-client", choices=("raw", "websockets"), default="raw",
                   help="raw: the minimal client here; websockets: the package (slower)")
    p.add_argument("--ws-compression", action="store_true",
                   help="with --ws-client websockets: offer permessage-deflate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-uvloop", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with open(args.config) as fh:
        cfg = json.load(fh)
    run = {"http": run_http, "ws": run_ws, "fanout": run_fanout}[args.mode]
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    if uvloop is not None and not args.no_uvloop:
        out = uvloop.run(run(cfg, args))
    else:
        out = asyncio.run(run(cfg, args))
    wall = time.perf_counter() - wall0
    out = {"mode": args.mode, **({"distribution": args.distribution}
                                 if args.mode != "fanout" else {}),
           "concurrency": args.concurrency if args.mode != "fanout" else None,
           **out, "loadgen_cpu": round((cpu_seconds() - cpu0) / wall, 2),
           "loadgen_client": args.client if args.mode == "http" else args.ws_client,
           "uvloop": uvloop is not None and not args.no_uvloop}
    print(json.dumps(out), flush=True)
    brief = {k: v for k, v in out.items() if k in (
        "mode", "distribution", "bets_per_s", "p50", "p99", "errors", "last_socket_p99",
        "delivery_p99", "missing", "loadgen_cpu")}
    print(f"loadgen: {brief}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
