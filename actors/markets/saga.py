"""The bet saga: placing a bet moves money across the market and the user's wallet,
and never creates or loses any.

1. `take_stakes` (as a batch arrives, before the mailbox): refuse what is plainly
   refused (market not open, limits, price) without touching money; debit the stake
   of the rest from the players' accounts to the market's, all at once (`Stake`:
   one wallet commit). The stake is open until the market closes it;
2. the market's handler accepts at the current price and the cycle's commit records
   the bet: the player is answered. Or it refuses: the refusal is recorded first, so
   that bet id can never be placed, and the stake is returned before the answer;
3. the market closes the stakes of the bets it recorded, many at once, a few times a
   second (the wallets' `close_stakes`).

Two commits a bet, and compensation only when the bet is not recorded. A stake a
market never recorded (its host died, its commit failed, nobody retried) stays open:
past `open_stake_timeout_s` recovery records its bet id as refused and returns it.
Payouts and refunds go the same way as ever: decided and written first
(`payout_state = owed`), credited after, finished on recovery. Bets of older releases,
placed with a reservation (`stake = reserved`), are finished by recovery as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

from ray.exceptions import RayError

from actors import wallets
from actors.errors import IdempotencyConflict, LootifyError, NotFound, ReservationResolved
from actors.runtime import Op, Router, connect_router, ignore_outcome
from actors.settings import service_dsn

from .messages import MoneyMoved, PlaceBet, Recover, ReturnStakes
from .settings import MarketSettings
from .state import Bet
from .store import existing_markets, stored_bets
from .writes import (
    BetChanged,
    BetPlaced,
    BetsToRecover,
    MarketSettled,
    StakeCommitted,
    StakeKept,
    StakeReturned,
)

log = logging.getLogger(__name__)

# Bets unfinished for this long are recovery's; younger ones are the saga's own.
RECOVERY_AGE_S = 3.0
# How long the record of moved money may wait for a cycle (see `EntityHost.submit`).
RECORD_WITHIN_S = 0.05
# How often the stakes this host is done with are closed in the wallets.
CLOSE_EVERY_S = 0.2
# How often recovery looks for stakes left open, and how many it takes at once.
OPEN_STAKES_EVERY_S = 5.0
OPEN_STAKES_BATCH = 500


class BetSaga:
    """The money side of one market host's bets: stakes reserved and committed,
    payouts and refunds credited, and what a crash left half-way finished."""

    def __init__(self, host: Any, settings: MarketSettings) -> None:
        self.host = host
        self.settings = settings
        self._wallets: Router | None = None
        # Bets whose money this process is moving now: recovery leaves them alone, or
        # a slow settlement would be sent again every tick while its first run goes on.
        self.moving: set[str] = set()
        # Stakes this host is done with, still open in the wallets, as (user id,
        # reference id): closed together every CLOSE_EVERY_S.
        self.done_stakes: list[tuple[str, str]] = []
        self._closing: asyncio.TimerHandle | None = None
        self._closer: asyncio.Future[None] | None = None
        self._open_stakes_seen = 0.0

    async def wallets(self) -> Router:
        """The wallet router of this host process (created on first use)."""
        if self._wallets is None:
            self._wallets = await connect_router(
                wallets.WalletKind,
                service_dsn(wallets.WalletKind.service),
                self.host.settings,
                wallets.WalletSettings(),
                direct=True,
            )
        return self._wallets

    async def take_stakes(self, ops: list[Op]) -> None:
        """Before the mailbox: refuse what is plainly refused and take the stakes of the
        rest. It runs outside the cycles, so the next bets' stakes travel while the
        current cycle commits; the price is only provisional here (the cycle decides),
        and an entity not yet activated is checked in the cycle."""
        to_stake: list[Op] = []
        # An activated market knows its own bets; a bet id used on another market is
        # caught by the bets' primary key (a careful cycle then refuses it). A market
        # still to be activated is looked up: a stake is taken neither for a market that
        # does not exist (a 404 moves no money) nor for a bet it already holds.
        cold: list[str] = []
        cold_markets: set[str] = set()
        now = time.time()
        for op in ops:
            msg = op.message
            if not isinstance(msg, PlaceBet) or op.prepared is not None:
                continue
            entry = self.host.entities.get(op.entity_id)
            if entry is None:
                cold.append(msg.bet_id)
                cold_markets.add(op.entity_id)
            else:
                m = entry.state
                if m.event_id is None or msg.bet_id in m.bets or msg.bet_id in (m.refused or ()):
                    continue  # the cycle answers: not found, or a replay
                try:
                    m.quote(msg, now)
                except LootifyError as exc:
                    op.prepared = exc
                    continue
            to_stake.append(op)
        if not to_stake:
            return
        if cold:
            async with self.host.pool.acquire() as conn:
                known = await stored_bets(conn, cold)
                missing = cold_markets - await existing_markets(conn, list(cold_markets))
            for op in to_stake:
                market_id = known[op.message.bet_id][0] if op.message.bet_id in known else None
                if op.entity_id in missing:
                    op.prepared = "no market"  # the cycle answers not found
                elif market_id == op.entity_id:
                    op.prepared = "known"  # a replay: the cycle answers the bet as it is
                elif market_id is not None:
                    op.prepared = IdempotencyConflict(
                        f"bet {op.message.bet_id} exists on another market"
                    )
            to_stake = [op for op in to_stake if op.prepared is None]
        router = await self.wallets()
        # A keyed bet's id is its Idempotency-Key's id (`wallets.messages`).
        stakes = [
            (op.message.user_id,
             wallets.Stake(op.message.amount, stake_ref(op.message.bet_id), op.entity_id,
                           None if op.message.request_hash is None else op.message.bet_id))
            for op in to_stake
        ]
        outcomes = await router.call_many(stakes)
        for op, (ok, result) in zip(to_stake, outcomes, strict=True):
            op.prepared = "staked" if ok else result

    def _stake_done(self, user_id: str, bet_id: str) -> None:
        self.done_stakes.append((user_id, stake_ref(bet_id)))
        self._close_later()

    def _close_later(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().call_later(CLOSE_EVERY_S, self._close)

    def _close(self) -> None:
        self._closing = None
        done, self.done_stakes = self.done_stakes, []
        self._closer = asyncio.ensure_future(self._close_stakes(done))

    async def _close_stakes(self, done: list[tuple[str, str]]) -> None:
        """Close in the wallets the stakes this host is done with, all in one call; on
        a failure they go with the next ones (and recovery finds any left open)."""
        try:
            router = await self.wallets()
            ok, result = await asyncio.wait_for(
                random.choice(router.handles).query.remote("close_stakes", {"stakes": done}),
                self.host.settings.call_deadline_s,
            )
        except (RayError, TimeoutError, LootifyError) as exc:
            ok, result = False, exc
        if not ok:
            log.warning("closing %d stakes failed: %r", len(done), result)
            self.done_stakes[:0] = done
            self._close_later()

    def finish(self, writes: list[Any]) -> Awaitable[None] | None:
        """The money moves a committed cycle calls for, or None when there are none."""
        stakes: dict[str, tuple[str, Bet]] = {}
        pays: dict[str, tuple[str, Bet]] = {}
        returns: list[StakeReturned] = []
        for write in writes:
            if isinstance(write, BetPlaced):
                self._stake_done(write.bet.user_id, write.bet.id)
            elif isinstance(write, StakeKept):
                self._stake_done(write.user_id, write.bet_id)
            elif isinstance(write, StakeReturned):
                returns.append(write)
            elif isinstance(write, (BetChanged, StakeCommitted)):
                _collect(write.market_id, write.bet, stakes, pays)
            elif isinstance(write, BetsToRecover):
                for bet in write.bets:
                    _collect(write.market_id, bet, stakes, pays)
            elif isinstance(write, MarketSettled):
                for bet in write.accepted:
                    _collect(write.market_id, bet, stakes, pays)
        if not (stakes or pays or returns):
            return None
        return self._moving(stakes, pays, returns)

    async def _moving(
        self,
        stakes: dict[str, tuple[str, Bet]],
        pays: dict[str, tuple[str, Bet]],
        returns: list[StakeReturned],
    ) -> None:
        ids = (stakes.keys() | pays.keys()) - self.moving
        self.moving |= ids
        recorded: list[asyncio.Future[Any]] = []
        try:
            recorded = await self._move_money(stakes, pays, returns)
        finally:
            # Moving ends when the markets have recorded what moved (or failed to).
            if recorded:
                asyncio.gather(*recorded, return_exceptions=True).add_done_callback(
                    lambda _: self.moving.difference_update(ids)
                )
            else:
                self.moving -= ids

    async def _move_money(
        self,
        stakes: dict[str, tuple[str, Bet]],
        pays: dict[str, tuple[str, Bet]],
        returns: list[StakeReturned],
    ) -> list[asyncio.Future[Any]]:
        """Return the stakes of refused bets and commit reserved ones, then credit what
        is owed, then record it in the markets (the futures of those records)."""
        router = await self.wallets()
        if returns:
            returned = await router.call_many([
                (r.user_id,
                 wallets.Credit(r.amount, return_ref(r.bet_id), f"market:{r.market_id}",
                                "bet_refund"))
                for r in returns
            ])
            for r, (ok, _) in zip(returns, returned, strict=True):
                if ok:  # else the stake stays open, and recovery returns it again
                    self._stake_done(r.user_id, r.bet_id)
        moved: dict[str, dict[str, list[str]]] = defaultdict(
            lambda: {"staked": [], "returned": [], "paid": []}
        )
        items = list(stakes.values())
        outcomes = await router.call_many(
            [
                (bet.user_id, wallets.Commit(stake_ref(bet.id), None, f"market:{mid}"))
                for mid, bet in items
            ]
        )
        for (mid, bet), (ok, outcome) in zip(items, outcomes, strict=True):
            if ok:
                moved[mid]["staked"].append(bet.id)
            elif isinstance(outcome, (ReservationResolved, NotFound)):
                moved[mid]["returned"].append(bet.id)
        returned = {b for m in moved.values() for b in m["returned"]}
        owed = [
            (mid, bet)
            for mid, bet in pays.values()
            if bet.id not in returned and (bet.stake == "committed" or bet.id in stakes)
        ]
        credits = await router.call_many(
            [
                (
                    bet.user_id,
                    wallets.Credit(
                        bet.payout,
                        f"pay:{bet.id}",
                        f"market:{mid}",
                        "payout" if bet.status == "won" else "bet_refund",
                    ),
                )
                for mid, bet in owed
            ]
        )
        for (mid, bet), (ok, _) in zip(owed, credits, strict=True):
            if ok:
                moved[mid]["paid"].append(bet.id)
        recorded = []
        for mid, ids in moved.items():
            future = self.host.submit(
                mid,
                MoneyMoved(tuple(ids["staked"]), tuple(ids["returned"]), tuple(ids["paid"])),
                within=RECORD_WITHIN_S,
            )
            future.add_done_callback(ignore_outcome)
            recorded.append(future)
        return recorded

    async def recover(self) -> None:
        """Finish the money of bets a crash left half-way, in the markets this host owns."""
        owned = list(self.host.owned)
        async with self.host.pool.acquire() as conn:
            owing = await conn.fetch(
                "select distinct b.market_id::text as id from bets.bets b "
                "join bets.markets m on m.id = b.market_id "
                "where b.payout_state = 'owed' and m.shard = any($1::int[]) "
                "and coalesce(b.settled_at, b.placed_at) < now() - make_interval(secs => $2) "
                "limit 100",
                owned,
                RECOVERY_AGE_S,
            )
            staking = await conn.fetch(
                "select id::text from bets.markets where unstaked > 0 and shard = any($1::int[]) "
                "limit 100",
                owned,
            )
        recover = {r["id"]: Recover() for r in owing}
        for r in staking:
            recover.setdefault(r["id"], Recover(stakes_only=True))
        for market_id, message in recover.items():
            self.host.submit(market_id, message).add_done_callback(ignore_outcome)
        await self._return_open_stakes()

    async def _return_open_stakes(self) -> None:
        """Stakes of this host's markets left open past their time-out go to their
        markets, which keep those of bets they have and return the rest."""
        now = time.monotonic()
        if now - self._open_stakes_seen < OPEN_STAKES_EVERY_S:
            return
        self._open_stakes_seen = now
        router = await self.wallets()
        ok, found = await asyncio.wait_for(
            random.choice(router.handles).query.remote(
                "open_stakes",
                {"shards": sorted(self.host.owned),
                 "older_than_s": self.settings.open_stake_timeout_s, "limit": OPEN_STAKES_BATCH},
            ),
            self.host.settings.call_deadline_s,
        )
        if not ok:
            raise found
        per_market: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for user_id, ref, market_id, amount in found:
            per_market[market_id].append((ref.removeprefix(STAKE_PREFIX), user_id, amount))
        for market_id, stakes in per_market.items():
            self.host.submit(market_id, ReturnStakes(tuple(stakes))).add_done_callback(
                ignore_outcome
            )


def _collect(
    market_id: str,
    bet: Bet,
    stakes: dict[str, tuple[str, Bet]],
    pays: dict[str, tuple[str, Bet]],
) -> None:
    if bet.stake == "reserved":
        stakes[bet.id] = (market_id, bet)
    if bet.payout_state == "owed":
        pays[bet.id] = (market_id, bet)


def refused_before(bet_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"bet {bet_id} was placed before and its stake is no longer held; use a new bet id"
    )


STAKE_PREFIX = "bet:"


def stake_ref(bet_id: str) -> str:
    return STAKE_PREFIX + bet_id


def return_ref(bet_id: str) -> str:
    """The reference of a refused bet's stake given back: once per bet id."""
    return f"bet-return:{bet_id}"
