"""The chaos run's load: a sustained mix of what players and an operator do, over HTTP
and the Phoenix socket, each operation with a key of its own and every acknowledged
answer recorded (`chaos_client.Acked`) for the audit.

Players register, deposit, withdraw, bet and cancel bets over HTTP; others bet and
cancel over their socket (`place_bet` with an `idempotency_key`, `cancel_bet`); the
operator moves odds, and keeps `OPEN_MARKETS` markets open by settling or voiding the
oldest and creating new ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from chaos_client import HANG_S, NEVER_CLEAR, RETRY_FOR_S, Acked, Api, Phx, Tally, minor

OPEN_MARKETS = 6
MARKET_LIFE_S = 15.0
PASSWORD = "chaos horse battery staple"


@dataclass
class Player:
    id: str
    token: str
    bets: list[tuple[str, str]] = field(default_factory=list)  # (bet id, market id)


@dataclass
class Market:
    id: str
    odds: dict[str, str]
    opened: float


def key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def money(rng: random.Random, low: int, high: int) -> str:
    cents = rng.randint(low, high)
    return f"{cents // 100}.{cents % 100:02d}"


@dataclass
class World:
    api: Api
    url: str
    acked: Acked = field(default_factory=Acked)
    players: list[Player] = field(default_factory=list)
    markets: dict[str, Market] = field(default_factory=dict)
    operator: str = ""
    event: str = ""
    event_markets: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=lambda: random.Random(14))

    @property
    def tally(self) -> Tally:
        return self.api.tally

    # -- set-up --------------------------------------------------------------------

    async def make_operator(self, dsn: str) -> None:
        from gateway.auth import users

        email = f"op-{uuid.uuid4().hex[:8]}@example.com"
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            await users.create_user(pool, email, "operator", PASSWORD, "operator")
        finally:
            await pool.close()
        r = await self.api.request("login", "POST", "/api/auth/login",
                                   body={"email": email, "password": PASSWORD})
        if not r.ok:
            raise RuntimeError(f"the operator could not log in: {r.body}")
        self.operator = r.body["token"]

    async def register(self, funds: str = "100.00") -> Player | None:
        email = f"p-{uuid.uuid4().hex[:12]}@example.com"
        r = await self.api.request("register", "POST", "/api/auth/register",
                                   body={"email": email, "username": "chaos",
                                         "password": PASSWORD})
        if not r.ok:
            return None
        player = Player(r.body["user"]["id"], r.body["token"])
        self.acked.users.add(player.id)
        await self.deposit(player, funds)
        return player

    # -- money ---------------------------------------------------------------------

    async def deposit(self, player: Player, amount: str, kind: str = "deposit") -> bool:
        k = key("cd")
        r = await self.api.request(kind, "POST", "/api/wallet/deposit", token=player.token,
                                   key=k, body={"amount": amount}, retry=True)
        if r.ok:
            self.acked.deposits[f"http:deposit:{k}"] = (player.id, minor(amount))
        return r.ok

    async def withdraw(self, player: Player) -> None:
        k = key("cw")
        amount = money(self.rng, 100, 2_000)
        r = await self.api.request("withdraw", "POST", "/api/wallet/withdraw",
                                   token=player.token, key=k, body={"amount": amount},
                                   retry=True)
        if r.ok:
            self.acked.withdrawals[f"http:withdraw:{k}"] = (player.id, minor(amount))

    # -- bets ----------------------------------------------------------------------

    def bet_body(self, market: Market) -> dict[str, Any]:
        selection = self.rng.choice(sorted(market.odds))
        body: dict[str, Any] = {"market_id": market.id, "selection": selection,
                                "amount": money(self.rng, 100, 500)}
        if self.rng.random() < 0.2:  # at the price last seen: may meet odds_changed
            body.update(odds=market.odds[selection], accept_odds="exact")
        else:
            body["accept_odds"] = "any"
        return body

    def record_bet(self, player: Player, bet: dict) -> None:
        self.acked.bets[bet["id"]] = (player.id, bet["market_id"], minor(bet["amount"]))
        player.bets.append((bet["id"], bet["market_id"]))

    async def bet(self, player: Player, market: Market, kind: str = "bet") -> bool:
        r = await self.api.request(kind, "POST", "/api/bets", token=player.token,
                                   key=key("cb"), body=self.bet_body(market), retry=True)
        if r.ok:
            self.record_bet(player, r.body["bet"])
        return r.answered

    def cancellable(self, player: Player) -> str | None:
        open_bets = [b for b, m in player.bets
                     if m in self.markets and b not in self.acked.cancelled]
        return self.rng.choice(open_bets) if open_bets else None

    async def cancel(self, player: Player) -> None:
        bet = self.cancellable(player)
        if bet is None:
            return
        r = await self.api.request("cancel", "DELETE", f"/api/bets/{bet}",
                                   token=player.token, retry=True)
        if r.ok:
            self.acked.cancelled.add(bet)

    # -- the operator --------------------------------------------------------------

    async def new_market(self) -> None:
        if not self.event or self.event_markets >= 3:
            starts = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
            r = await self.api.request("create_event", "POST", "/api/events",
                                       token=self.operator,
                                       body={"name": "Chaos x Order", "category": "football",
                                             "starts_at": starts})
            if not r.ok:
                return
            self.event, self.event_markets = r.body["event"]["id"], 0
        odds = {"home": money(self.rng, 150, 300), "away": money(self.rng, 150, 300)}
        r = await self.api.request(
            "create_market", "POST", f"/api/events/{self.event}/markets", token=self.operator,
            body={"name": "Winner", "type": "fixed_odds",
                  "selections": [{"key": k, "name": k.title(), "odds": v}
                                 for k, v in odds.items()]})
        if r.ok:
            self.event_markets += 1
            market_id = r.body["market"]["id"]
            self.markets[market_id] = Market(market_id, odds, asyncio.get_running_loop().time())

    async def move_odds(self) -> None:
        if not self.markets:
            return
        market = self.rng.choice(list(self.markets.values()))
        selection = self.rng.choice(sorted(market.odds))
        price = money(self.rng, 150, 300)
        r = await self.api.request("odds", "PUT", f"/api/markets/{market.id}/odds",
                                   token=self.operator, body={"odds": {selection: price}},
                                   retry=True)
        if r.ok:
            market.odds[selection] = price

    async def retire(self, market: Market, settle: bool) -> None:
        """Settle (closing it first) or void the market."""
        self.markets.pop(market.id, None)
        path = f"/api/markets/{market.id}"
        if not settle:
            r = await self.api.request("void", "POST", path + "/void", token=self.operator,
                                       retry=True)
            if r.ok:
                self.acked.voided.add(market.id)
            return
        await self.api.request("close", "POST", path + "/close", token=self.operator,
                               retry=True)
        winner = self.rng.choice(sorted(market.odds))
        r = await self.api.request("settle", "POST", path + "/settle", token=self.operator,
                                   body={"winner": winner}, retry=True)
        if r.ok:
            self.acked.settled[market.id] = winner

    # -- the workers ---------------------------------------------------------------

    async def operator_loop(self) -> None:
        loop = asyncio.get_running_loop()
        settle = True
        while not self.stop.is_set():
            oldest = min(self.markets.values(), key=lambda m: m.opened, default=None)
            if oldest is not None and loop.time() - oldest.opened > MARKET_LIFE_S:
                await self.retire(oldest, settle)
                settle = not settle
            while len(self.markets) < OPEN_MARKETS and not self.stop.is_set():
                before = len(self.markets)
                await self.new_market()
                if len(self.markets) == before:
                    break
            await self.move_odds()
            await self.pause(1.0)

    async def registrar(self) -> None:
        while not self.stop.is_set():
            player = await self.register()
            if player is not None:
                self.players.append(player)
            await self.pause(2.0)

    async def http_player(self) -> None:
        ops = [(self.bet_any, 50), (self.deposit_any, 20), (self.withdraw_any, 10),
               (self.cancel_any, 15)]
        while not self.stop.is_set():
            op = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
            if self.players:
                await op(self.rng.choice(self.players))
            await self.pause(0.05)

    async def bet_any(self, player: Player) -> None:
        if self.markets:
            await self.bet(player, self.rng.choice(list(self.markets.values())))

    async def deposit_any(self, player: Player) -> None:
        await self.deposit(player, money(self.rng, 100, 5_000))

    async def withdraw_any(self, player: Player) -> None:
        await self.withdraw(player)

    async def cancel_any(self, player: Player) -> None:
        await self.cancel(player)

    async def pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def ws_player(self) -> None:
        """One player betting and cancelling over a socket of its own, reconnecting
        when the socket is cut (a pushed bet is resent with its key)."""
        player = await self.register("500.00")
        while player is None and not self.stop.is_set():
            await self.pause(1.0)
            player = await self.register("500.00")
        socket: Phx | None = None
        while player is not None and not self.stop.is_set():
            if not self.markets:
                await self.pause(0.5)
                continue
            cancel = self.cancellable(player) if self.rng.random() < 0.15 else None
            if cancel is not None:
                kind, event, payload = "ws_cancel", "cancel_bet", {"bet_id": cancel}
            else:
                body = self.bet_body(self.rng.choice(list(self.markets.values())))
                kind, event = "ws_bet", "place_bet"
                payload = {**body, "idempotency_key": key("wb")}
            socket, reply = await self.ws_op(socket, player, kind, event, payload)
            if reply is not None and reply.get("status") == "ok":
                bet = reply["response"]["bet"]
                if event == "place_bet":
                    self.record_bet(player, bet)
                else:
                    self.acked.cancelled.add(bet["id"])
            await self.pause(0.05)
        if socket is not None:
            await socket.close()

    async def ws_op(self, socket: Phx | None, player: Player, kind: str, event: str,
                    payload: dict) -> tuple[Phx | None, dict | None]:
        self.tally.attempted[kind] += 1
        until = asyncio.get_running_loop().time() + RETRY_FOR_S
        seen = "cut"
        while asyncio.get_running_loop().time() < until:
            try:
                if socket is None:
                    socket = await Phx.open(self.url, player.token)
                    joined = await socket.push(f"user:{player.id}", "phx_join", {})
                    if joined.get("status") != "ok":
                        raise ConnectionError(f"join refused: {joined}")
                reply = await socket.push(f"user:{player.id}", event, payload, timeout=HANG_S)
            except (ConnectionError, OSError, TimeoutError) as exc:
                if socket is not None:
                    await socket.close()
                socket = None
                if isinstance(exc, TimeoutError):  # no answer in HANG_S: a finding, final
                    self.tally.finding(kind, "hang", f"{event} {payload}")
                    return None, None
                seen = "cut"
                if self.stop.is_set():
                    break
                self.tally.retries[kind] += 1
                await self.pause(0.5)
                continue
            if reply.get("status") == "ok":
                self.tally.acked[kind] += 1
                return socket, reply
            code = reply.get("response", {}).get("reason")
            if code in ("unavailable", "idempotency_in_progress"):
                seen = code
                self.tally.retries[kind] += 1
                await self.pause(0.5)
                continue
            if isinstance(code, str) and code not in NEVER_CLEAR:
                self.tally.clear[kind][code] += 1
            else:
                self.tally.finding(kind, str(code or "reply_without_code"), repr(reply))
            return socket, reply
        if seen != "cut" or self.stop.is_set():  # a code to the last, or our own stop
            self.tally.clear[kind][seen if seen != "cut" else "stopped"] += 1
        else:
            self.tally.finding(kind, seen, f"{event} {payload}")
        return socket, None
