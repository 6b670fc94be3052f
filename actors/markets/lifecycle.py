"""Events and markets that change status by themselves, driven by due times stored in
PostgreSQL and found by each market host's housekeeping (about once a second).

- A market past its `closes_at` is sent `CloseDue`; its entity closes it in a commit
  cycle like any other change, so the close is durable and published as the
  market's `status_changed`. Only the host owning the market's shard sends it; a
  host that was down at the due time sends it on its first tick back.
- An event goes `live` at `starts_at`, and `finished` once it has markets and every
  one is settled or void. Events are rows, not entities: the conditional update
  itself decides, so when several hosts sweep at once, one of them wins each change
  and publishes it (`status_changed` on `event:<id>`, without `market_id`).
- A closed raffle that names a lottery is sent `Settle` with the lottery's draw once
  it is posted, or voided when its grace period passes without one.
- An operator cancels an event (`cancel_event`); the client then voids its markets.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.errors import InvalidTransition, NotFound
from actors.pubsub import get_publisher
from actors.runtime import ignore_outcome

from .messages import CloseDue, Settle, Transition

log = logging.getLogger(__name__)
DB_TIMEOUT_S = 5.0

_DUE_MARKETS = (
    "select id::text from bets.markets where status in ('open', 'suspended') "
    "and closes_at <= now() and shard = any($1::int[])"
)
# A raffle naming a lottery waits for that lottery's first draw at or after it closed,
# and is void (stakes back) when none came within its grace period.
_WAITING_RAFFLES = (
    "select m.id::text, d.draw from bets.markets m "
    "left join lateral (select draw from bets.lottery_draws d "
    "  where d.lottery = m.pricing->>'lottery' "
    "  and d.drawn_at >= coalesce(m.closes_at, m.created_at) "
    "  order by d.drawn_at limit 1) d on true "
    "where m.type = 'raffle' and m.status = 'closed' and m.shard = any($1::int[]) "
    "and m.pricing->>'lottery' is not null and (d.draw is not null "
    "  or coalesce(m.closes_at, m.created_at) "
    "     + make_interval(secs => (m.pricing->>'result_grace_s')::int) <= now())"
)
_STARTED = (
    "update bets.events set status = 'live' where status = 'scheduled' "
    "and starts_at <= now() returning id::text"
)
# An event carrying an active series of rounds is not finished between two rounds.
_FINISHED = (
    "update bets.events e set status = 'finished' where status = 'live' "
    "and exists (select 1 from bets.markets m where m.event_id = e.id) "
    "and not exists (select 1 from bets.round_series s where s.event_id = e.id and s.active) "
    "and not exists (select 1 from bets.markets m where m.event_id = e.id "
    "  and m.status not in ('settled', 'void')) returning id::text"
)


class Lifecycle:
    def __init__(self, host: Any) -> None:
        self.host = host
        # Markets sent a message by housekeeping and not yet answered: one message
        # each, however many ticks pass while it waits in the mailbox.
        self.sent: set[str] = set()

    async def tick(self) -> None:
        host = self.host
        async with host.pool.acquire(timeout=DB_TIMEOUT_S) as conn:
            owned = list(host.owned)
            due = await conn.fetch(_DUE_MARKETS, owned, timeout=DB_TIMEOUT_S)
            raffles = await conn.fetch(_WAITING_RAFFLES, owned, timeout=DB_TIMEOUT_S)
            async with conn.transaction():
                started = await conn.fetch(_STARTED, timeout=DB_TIMEOUT_S)
                finished = await conn.fetch(_FINISHED, timeout=DB_TIMEOUT_S)
        for row in due:
            self._send(row["id"], CloseDue())
        for row in raffles:
            draw = row["draw"]
            self._send(row["id"], Transition("void") if draw is None else Settle(draw))
        for row in started:
            self._publish(row["id"], "live")
        for row in finished:
            self._publish(row["id"], "finished")

    def _send(self, market_id: str, message: Any) -> None:
        if market_id in self.sent:
            return
        self.sent.add(market_id)
        future = self.host.submit(market_id, message)
        future.add_done_callback(ignore_outcome)
        future.add_done_callback(lambda _: self.sent.discard(market_id))

    async def cancel_event(self, event_id: str) -> dict[str, Any]:
        """The event's status becomes `cancelled` (its markets are voided by the caller);
        cancelling a cancelled event again changes nothing."""
        async with self.host.pool.acquire(timeout=DB_TIMEOUT_S) as conn, conn.transaction():
            status = await conn.fetchval(
                "select status from bets.events where id = $1 for update",
                event_id,
                timeout=DB_TIMEOUT_S,
            )
            if status is None:
                raise NotFound(f"no event {event_id}")
            if status == "finished":
                raise InvalidTransition("the event is finished; it cannot be cancelled")
            if status != "cancelled":
                await conn.execute(
                    "update bets.events set status = 'cancelled' where id = $1",
                    event_id,
                    timeout=DB_TIMEOUT_S,
                )
        if status != "cancelled":
            self._publish(event_id, "cancelled")
        return {"id": event_id, "status": "cancelled"}

    def _publish(self, event_id: str, status: str) -> None:
        log.info("event %s is %s", event_id, status)
        get_publisher(self.host.settings.namespace).publish(
            f"event:{event_id}", "status_changed", {"status": status}
        )
