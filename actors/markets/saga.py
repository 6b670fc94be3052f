"""The bet saga: placing a bet moves money across the market and the user's wallet,
and never creates or loses any.

1. `reserve_stakes` (as a batch arrives, before the mailbox): refuse what is plainly
   refused (market not open, limits, price) without touching money; reserve the
   stake of the rest in the wallets, all at once (two-phase, with a time-out);
2. the market's handler accepts at the current price, or refuses (the reservation
   is released); the accepted bet is written with `stake = reserved` in the cycle's
   commit;
3. `finish` (after the commit, before the answer): commit each reservation to the
   market's account, then record `stake = committed`.

A crash before 2 leaves a reservation that expires; a crash between 2 and 3 leaves
`stake = reserved`, which the host's recovery commits (or, if the reservation
already ended, voids the bet). Payouts and refunds go the same way: decided and
written first (`payout_state = owed`), credited after, finished on recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

from actors import wallets
from actors.errors import IdempotencyConflict, LootifyError, NotFound, ReservationResolved
from actors.runtime import Op, Router, connect_router, ignore_outcome
from actors.settings import service_dsn

from .messages import MoneyMoved, PlaceBet, Recover
from .settings import MarketSettings
from .state import Bet
from .store import stored_bets
from .writes import (
    BetChanged,
    BetPlaced,
    BetsToRecover,
    MarketSettled,
    StakeCommitted,
    StakeReleased,
)

# Bets unfinished for this long are recovery's; younger ones are the saga's own.
RECOVERY_AGE_S = 3.0
# How long the record of moved money may wait for a cycle (see `EntityHost.submit`).
RECORD_WITHIN_S = 0.05


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

    async def wallets(self) -> Router:
        """The wallet router of this host process (created on first use)."""
        if self._wallets is None:
            self._wallets = await connect_router(
                wallets.WalletKind,
                service_dsn(wallets.WalletKind.service),
                self.host.settings,
                wallets.WalletSettings(),
            )
        return self._wallets

    async def reserve_stakes(self, ops: list[Op]) -> None:
        """Before the mailbox: refuse what is plainly refused and reserve the stakes of
        the rest. It runs outside the cycles, so reservations for the next bets travel
        while the current cycle commits; the price is only provisional here (the
        cycle decides), and an entity not yet activated is checked in the cycle."""
        to_reserve: list[Op] = []
        # An activated market knows its own bets; a bet id used on another market is
        # caught by the bets' primary key (a careful cycle then refuses it). A market
        # still to be activated must not reserve again for a bet it already holds.
        cold: list[str] = []
        now = time.time()
        for op in ops:
            msg = op.message
            if not isinstance(msg, PlaceBet) or op.prepared is not None:
                continue
            entry = self.host.entities.get(op.entity_id)
            if entry is None:
                cold.append(msg.bet_id)
            else:
                m = entry.state
                if m.event_id is None or msg.bet_id in m.bets or msg.bet_id in (m.refused or ()):
                    continue  # the cycle answers: not found, or a replay
                try:
                    m.quote(msg, now)
                except LootifyError as exc:
                    op.prepared = exc
                    continue
            to_reserve.append(op)
        if not to_reserve:
            return
        known = {}
        if cold:
            async with self.host.pool.acquire() as conn:
                known = await stored_bets(conn, cold)
        if known:
            for op in to_reserve:
                market_id = known[op.message.bet_id][0] if op.message.bet_id in known else None
                if market_id == op.entity_id:
                    op.prepared = "known"  # a replay: the cycle answers the bet as it is
                elif market_id is not None:
                    op.prepared = IdempotencyConflict(
                        f"bet {op.message.bet_id} exists on another market"
                    )
            to_reserve = [op for op in to_reserve if op.prepared is None]
        router = await self.wallets()
        timeout = self.settings.reservation_timeout_s
        outcomes = await router.call_many(
            [
                (
                    op.message.user_id,
                    wallets.Reserve(
                        op.message.amount, stake_ref(op.message.bet_id), timeout, confirm_held=True
                    ),
                )
                for op in to_reserve
            ]
        )
        for op, (ok, result) in zip(to_reserve, outcomes, strict=True):
            if ok:
                op.prepared = "reserved"
            elif isinstance(result, ReservationResolved):
                op.prepared = refused_before(op.message.bet_id)
            else:
                op.prepared = result

    def finish(self, writes: list[Any]) -> Awaitable[None] | None:
        """The money moves a committed cycle calls for, or None when there are none."""
        stakes: dict[str, tuple[str, Bet]] = {}
        pays: dict[str, tuple[str, Bet]] = {}
        releases: list[tuple[str, str]] = []
        placing: dict[str, Op] = {}
        for write in writes:
            if isinstance(write, BetPlaced):
                stakes[write.bet.id] = (write.market_id, write.bet)
                placing[write.bet.id] = write.op
            elif isinstance(write, StakeReleased):
                releases.append((write.user_id, write.bet_id))
            elif isinstance(write, (BetChanged, StakeCommitted)):
                _collect(write.market_id, write.bet, stakes, pays)
            elif isinstance(write, BetsToRecover):
                for bet in write.bets:
                    _collect(write.market_id, bet, stakes, pays)
            elif isinstance(write, MarketSettled):
                for bet in write.accepted:
                    _collect(write.market_id, bet, stakes, pays)
        if not (stakes or pays or releases):
            return None
        return self._moving(stakes, pays, releases, placing)

    async def _moving(
        self,
        stakes: dict[str, tuple[str, Bet]],
        pays: dict[str, tuple[str, Bet]],
        releases: list[tuple[str, str]],
        placing: dict[str, Op],
    ) -> None:
        ids = (stakes.keys() | pays.keys()) - self.moving
        self.moving |= ids
        recorded: list[asyncio.Future[Any]] = []
        try:
            recorded = await self._move_money(stakes, pays, releases, placing)
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
        releases: list[tuple[str, str]],
        placing: dict[str, Op],
    ) -> list[asyncio.Future[Any]]:
        """Commit stakes, then credit what is owed, then record it in the markets (the
        futures of those records)."""
        router = await self.wallets()
        moved: dict[str, dict[str, list[str]]] = defaultdict(
            lambda: {"staked": [], "returned": [], "paid": []}
        )
        items = list(stakes.values())
        outcomes = await router.call_many(
            [
                (bet.user_id, wallets.Commit(stake_ref(bet.id), None, f"market:{mid}"))
                for mid, bet in items
            ]
            + [(uid, wallets.Release(stake_ref(bet_id))) for uid, bet_id in releases]
        )
        for (mid, bet), (ok, outcome) in zip(items, outcomes, strict=False):
            if ok:
                moved[mid]["staked"].append(bet.id)
            elif isinstance(outcome, (ReservationResolved, NotFound)):
                moved[mid]["returned"].append(bet.id)
                op = placing.get(bet.id)
                if op is not None:  # its reservation ended before the commit
                    op.error = refused_before(bet.id)
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


def stake_ref(bet_id: str) -> str:
    return f"bet:{bet_id}"
