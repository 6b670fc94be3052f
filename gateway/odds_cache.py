"""The replica's read cache of events and markets (the seed's ETS odds cache).

Filled from `aio.list_events()`, kept current by PubSub's `event:*` events
(`odds_updated`, `status_changed`; anything else about an event, or a market it does
not know yet, makes it fetch that event again), and reloaded in full periodically and
whenever the PubSub subscription had to be rebuilt. `GET /api/events` is served from
a pre-rendered JSON body: no actor call, no formatting on the hot path.

A replica that changes a market puts the answer here at once (read-your-writes);
other replicas follow within a PubSub round trip.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.errors import LootifyError, NotFound

from . import views

# Under "ray.serve", so Serve writes it to the replica's log file.
log = logging.getLogger("ray.serve").getChild(__name__)

CHANGED = "_changed"  # internal event: "fetch this event again"


class OddsCache:
    def __init__(self, aio: Callable[[], Awaitable[Any]], reload_s: float) -> None:
        self._aio = aio
        self.reload_s = reload_s
        self.events: dict[str, dict] = {}
        self.market_event: dict[str, str] = {}
        self.loaded = False
        self._rendered: bytes | None = None
        self._during_reload: list[tuple[str, str, dict]] | None = None
        self._reload_task: asyncio.Task | None = None
        self._fetches: dict[str, asyncio.Task] = {}
        self._periodic: asyncio.Task | None = None

    # -- loading -----------------------------------------------------------------------

    def start(self) -> None:
        if self._periodic is None:
            self._periodic = asyncio.ensure_future(self._reload_forever())

    def stop(self) -> None:
        for task in (self._periodic, self._reload_task, *self._fetches.values()):
            if task is not None:
                task.cancel()

    async def _reload_forever(self) -> None:
        retry = 0.5
        while True:
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("odds cache reload failed: %s", exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, self.reload_s)
                continue
            retry = 0.5
            await asyncio.sleep(self.reload_s)

    def schedule_reload(self) -> None:
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.ensure_future(self._quiet(self.reload()))

    async def ensure_loaded(self) -> None:
        if not self.loaded:
            await self.reload()

    async def reload(self) -> None:
        """Replace the cache with a fresh listing; updates that arrive while it loads
        are applied again on top of it."""
        if self._during_reload is not None:  # one at a time: wait for the running one
            while self._during_reload is not None:
                await asyncio.sleep(0.01)
            return
        self._during_reload = []
        try:
            listing = await (await self._aio()).list_events()
            during, self._during_reload = self._during_reload, None
        except BaseException:
            self._during_reload = None
            raise
        self.events = {}
        self.market_event = {}
        for event in listing:
            self._put_event(event)
        for topic, name, payload in during:
            self._apply(topic, name, payload)
        self.loaded = True
        self._rendered = None

    async def _quiet(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("odds cache refresh failed: %s", exc)

    # -- reads ---------------------------------------------------------------------------

    def get(self, event_id: str) -> dict | None:
        return self.events.get(event_id)

    def event_of_market(self, market_id: str) -> str | None:
        return self.market_event.get(market_id)

    def market(self, market_id: str) -> dict | None:
        event = self.events.get(self.market_event.get(market_id, ""))
        if event is None:
            return None
        return next((m for m in event.get("markets") or () if str(m["id"]) == market_id), None)

    async def fetch(self, event_id: str) -> dict | None:
        """The event from the cache, else from its owner (and cached); None if unknown."""
        event = self.events.get(event_id)
        if event is not None:
            return event
        try:
            event = await (await self._aio()).get_event(event_id)
        except NotFound:
            return None
        self._put_event(event)
        return event

    def rendered(self) -> bytes:
        """`{"events": [...]}` as JSON, rendered once per change."""
        if self._rendered is None:
            events = sorted(self.events.values(), key=lambda e: (str(e.get("starts_at")),
                                                                 str(e["id"])))
            body = {"events": [views.event(e) for e in events]}
            self._rendered = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return self._rendered

    # -- writes ----------------------------------------------------------------------------

    def put_event(self, event: dict) -> None:
        self._put_event(event)

    def _put_event(self, event: dict) -> None:
        event_id = str(event["id"])
        old = self.events.get(event_id)
        if old is not None:
            for m in old.get("markets") or ():
                self.market_event.pop(str(m["id"]), None)
        event = dict(event)
        event["markets"] = [dict(m) for m in event.get("markets") or ()]
        self.events[event_id] = event
        for m in event["markets"]:
            self.market_event[str(m["id"])] = event_id
        self._rendered = None

    def put_market(self, market: dict) -> None:
        event_id = str(market["event_id"])
        event = self.events.get(event_id)
        if event is None:
            self._refetch(event_id)
            return
        markets = event["markets"]
        for i, m in enumerate(markets):
            if str(m["id"]) == str(market["id"]):
                if _older(market, m):
                    return
                markets[i] = dict(market)
                break
        else:
            markets.append(dict(market))
        self.market_event[str(market["id"])] = event_id
        self._rendered = None

    def on_event(self, topic: str, name: str, payload: dict) -> None:
        """The `event:*` subscription's callback."""
        if self._during_reload is not None:
            self._during_reload.append((topic, name, payload))
        self._apply(topic, name, payload)

    def _apply(self, topic: str, name: str, payload: dict) -> None:
        event_id = topic.partition(":")[2]
        event = self.events.get(event_id)
        if event is None or name not in ("odds_updated", "status_changed", "sales_updated"):
            self._refetch(event_id)
            return
        market_id = payload.get("market_id")
        if market_id is None:  # the event's own status
            if name == "status_changed":
                event["status"] = payload["status"]
                self._rendered = None
            return
        market = next((m for m in event["markets"] if str(m["id"]) == str(market_id)), None)
        if market is None:
            self._refetch(event_id)
            return
        if _older(payload, market):
            return
        if name == "status_changed" and market.get("type") == "raffle":
            self._refetch(event_id)  # settling tells who won, or that the house kept the sales
            return
        if name == "sales_updated":
            market["sold"] = payload["sold"]
        elif name == "odds_updated":
            new = payload.get("odds") or {}
            market["selections"] = [
                {**s, "odds": new[s["key"]]} if s["key"] in new else s
                for s in market.get("selections") or ()
            ]
        else:
            market["status"] = payload["status"]
        if "version" in payload:
            market["version"] = payload["version"]
        self._rendered = None

    def _refetch(self, event_id: str) -> None:
        if not event_id or event_id in self._fetches:
            return

        async def fetch() -> None:
            try:
                event = await (await self._aio()).get_event(event_id)
                self._put_event(event)
            except NotFound:
                if self.events.pop(event_id, None) is not None:
                    self._rendered = None
            except (LootifyError, Exception) as exc:
                log.warning("fetching event %s failed: %s", event_id, exc)
            finally:
                self._fetches.pop(event_id, None)

        self._fetches[event_id] = asyncio.ensure_future(fetch())


def _older(new: dict, current: dict) -> bool:
    """True when both carry a version and `new`'s is behind."""
    v_new, v_cur = new.get("version"), current.get("version")
    return v_new is not None and v_cur is not None and v_new < v_cur
