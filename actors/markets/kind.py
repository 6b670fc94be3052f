"""The odds entity: one per market, owning its status, odds, liabilities or pools,
limits and bets. Its messages are handled here; `store` keeps it in PostgreSQL,
`events` tells subscribers, and `saga` moves the money of its bets."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from functools import partial
from typing import Any

import asyncpg

from actors.errors import (
    AlreadySettled,
    Conflict,
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientFunds,
    InvalidInput,
    InvalidTransition,
    LootifyError,
    MarketNotOpen,
    NotFound,
    OddsChanged,
    PayoutTooHigh,
    StakeTooHigh,
    StakeTooLow,
    TicketTaken,
)
from actors.pubsub import get_publisher
from actors.runtime import Cycle, EntityKind, Fence, Op, register_kind

from . import pricing, queries
from .events import publish_cycle
from .lifecycle import Lifecycle
from .messages import (
    TRANSITIONS,
    BetRecord,
    CancelBet,
    CloseDue,
    CreateMarket,
    GetMarket,
    MoneyMoved,
    PlaceBet,
    Recover,
    ReturnStakes,
    SetOdds,
    Settle,
    Transition,
)
from .raffle import Raffle
from .saga import RECOVERY_AGE_S, BetSaga, refused_before
from .settings import MarketSettings
from .state import Bet, Market, Refusal
from .store import load_markets, store_cycle, stored_bets
from .writes import (
    BetChanged,
    BetPlaced,
    BetRefused,
    BetsToRecover,
    MarketChanged,
    MarketSettled,
    StakeCommitted,
    StakeKept,
    StakeReturned,
)

# The refusals a keyed bet's replay gets again, by code; any other failure (a
# conflict, a host down) is not its outcome, and a retry runs it again.
REPLAYED_REFUSALS: dict[str, type[LootifyError]] = {
    cls.code: cls
    for cls in (
        InsufficientFunds,
        MarketNotOpen,
        OddsChanged,
        StakeTooLow,
        StakeTooHigh,
        PayoutTooHigh,
        InvalidInput,
        TicketTaken,
    )
}


def _replayed(m: Market, bet: Bet, msg: PlaceBet) -> BetRecord:
    """A bet id placed before: its first answer for the same request, else a conflict."""
    if msg.request_hash is not None and bet.request_hash is not None:
        same = (bet.user_id, bet.request_hash) == (msg.user_id, msg.request_hash)
    else:
        same = (bet.user_id, bet.selection, bet.amount) == (msg.user_id, msg.selection, msg.amount)
    if not same:
        raise IdempotencyConflict(f"bet {msg.bet_id} exists with other arguments")
    if bet.stake == "returned":  # its stake was gone before the commit: it was refused
        raise refused_before(bet.id)
    return bet.first_answer(m.id) if msg.request_hash is not None else bet.record(m.id)


# Refusals kept for a bet id whose stake was taken besides: those above, a market that
# does not exist, and a stake recovery returned (its bet never recorded).
_KEPT_REFUSALS = {**REPLAYED_REFUSALS, NotFound.code: NotFound,
                  IdempotencyConflict.code: IdempotencyConflict}
NEVER_PLACED = "this bet was not placed and its stake was returned; use a new key"


def _return_stake(m: Market, msg: PlaceBet, cycle: Cycle) -> None:
    cycle.writes.append(StakeReturned(m.id, msg.user_id, msg.bet_id, msg.amount))


def _replayed_refusal(refusal: Refusal, msg: PlaceBet) -> LootifyError:
    if refusal.user_id != msg.user_id or msg.request_hash not in (None, refusal.request_hash):
        return IdempotencyConflict(f"bet {msg.bet_id} was refused for another request")
    return _KEPT_REFUSALS.get(refusal.code, Conflict)(refusal.message)


@register_kind
class MarketKind(EntityKind[Market]):
    name = "markets"
    service = "bets"
    settings_type = MarketSettings
    settings: MarketSettings

    def __init__(self, host: Any, settings: MarketSettings | None = None) -> None:
        super().__init__(host, settings)
        self.saga = BetSaga(host, self.settings)
        # In a careful cycle: the cycle's bet ids stored already (see `prepare`).
        self.stored_bets: dict[str, tuple[str, str, bool]] = {}
        # The cycle's clock: the bets a cycle takes share their time of placing.
        self.now = time.time()
        # Keyed bets admitted and not yet answered: bet id -> request hash.
        self.placing: dict[str, str] = {}
        self.lifecycle = Lifecycle(host)

    async def load(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, Market]:
        return await load_markets(conn, ids)

    async def admit(self, ops: list[Op]) -> None:
        """A keyed bet whose first request is still running is refused before it
        reserves anything; the rest go to the saga."""
        for op in ops:
            msg = op.message
            if not isinstance(msg, PlaceBet) or msg.request_hash is None:
                continue
            running = self.placing.get(msg.bet_id)
            if running is None:
                self.placing[msg.bet_id] = msg.request_hash
                op.future.add_done_callback(partial(self._answered, msg.bet_id))
            elif running == msg.request_hash:
                op.prepared = IdempotencyInProgress(
                    "a request with this Idempotency-Key is still running"
                )
            else:
                op.prepared = IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request"
                )
        await self.saga.take_stakes(ops)

    def _answered(self, bet_id: str, _: object) -> None:
        self.placing.pop(bet_id, None)

    async def prepare(self, conn: asyncpg.Connection, ops: list[Op]) -> None:
        """In a careful cycle (a bet id of the last one was stored already), look up
        which of the cycle's bet ids are stored, and where."""
        careful = self.take_careful()
        self.stored_bets = {}
        self.now = time.time()
        if careful:
            ids = [op.message.bet_id for op in ops if isinstance(op.message, PlaceBet)]
            ids += [s[0] for op in ops if isinstance(op.message, ReturnStakes)
                    for s in op.message.stakes]
            self.stored_bets = await stored_bets(conn, ids)

    def read(self, m: Market, msg: Any) -> Any:
        return m.view() if isinstance(msg, GetMarket) and m.event_id is not None else None

    def apply(self, m: Market, msg: Any, cycle: Cycle, op: Op) -> Any:
        if isinstance(msg, CreateMarket):
            return self._create(m, msg, cycle)
        if isinstance(msg, ReturnStakes):
            return self._return_open(m, msg, cycle)
        if m.event_id is None:
            missing = NotFound(f"no market {m.id}")
            if isinstance(msg, PlaceBet) and op.prepared == "staked":
                self._refuse_staked(m, msg, missing, cycle)
            raise missing
        if isinstance(msg, GetMarket):
            return m.view()
        if isinstance(msg, PlaceBet):
            return self._place(m, msg, cycle, op)
        if isinstance(msg, CancelBet):
            return self._cancel(m, msg, cycle)
        if isinstance(msg, Transition):
            return self._transition(m, msg.action, cycle)
        if isinstance(msg, CloseDue):
            return self._close_due(m, cycle)
        if isinstance(msg, SetOdds):
            return self._set_odds(m, msg, cycle)
        if isinstance(msg, Settle):
            return self._settle(m, msg.winner, cycle)
        if isinstance(msg, MoneyMoved):
            return self._money_moved(m, msg, cycle)
        if isinstance(msg, Recover):
            return self._recover(m, msg.stakes_only, cycle)
        raise InvalidInput(f"unknown market message {type(msg).__name__}")

    def _create(self, m: Market, msg: CreateMarket, cycle: Cycle) -> dict:
        if m.event_id is not None:
            # A router sends again what a dead host never answered: the same creation,
            # committed before the host died, is answered as it was (the chaos run saw
            # an operator told 409 for a market that had been created).
            same = (m.event_id, m.name, m.type, m.keys, m.names) == (
                msg.event_id, msg.name, msg.type,
                [s[0] for s in msg.selections], [s[1] for s in msg.selections])
            if same:
                return m.view()
            raise Conflict(f"market {m.id} exists")
        m.event_id, m.name, m.type, m.status = msg.event_id, msg.name, msg.type, "open"
        m.keys = [s[0] for s in msg.selections]
        m.names = [s[1] for s in msg.selections]
        m.takeout_bp = msg.takeout_bp
        m.min_stake, m.max_stake, m.max_payout = msg.min_stake, msg.max_stake, msg.max_payout
        m.closes_at, m.in_play = msg.closes_at, msg.in_play
        m.raffle = None if msg.raffle is None else Raffle(msg.raffle)
        m.exposure = dict.fromkeys(m.keys, 0)
        if m.type == "fixed_odds":
            m.model = pricing.FixedOddsModel.from_odds(
                {k: o for k, _, o in msg.selections if o is not None}, overround=msg.overround
            )
        m.reprice()
        self._touch(m, cycle, "status_changed")
        return m.view()

    def _place(self, m: Market, msg: PlaceBet, cycle: Cycle, op: Op) -> BetRecord:
        if isinstance(op.prepared, (IdempotencyInProgress, IdempotencyConflict)):
            raise op.prepared
        # A stake taken for a bet that stands (a replay) is that bet's own: the wallet
        # answers a stake's reference id once. Any other stake taken here goes back, and
        # only once that bet id can never be placed: its refusal, here or elsewhere, is
        # stored first.
        staked = op.prepared == "staked"
        existing = m.bets.get(msg.bet_id)
        if existing is not None:
            if staked and existing.user_id != msg.user_id:
                _return_stake(m, msg, cycle)
            return _replayed(m, existing, msg)
        refusal = m.refused.get(msg.bet_id) if m.refused else None
        if refusal is not None:
            if staked:
                _return_stake(m, msg, cycle)
            raise _replayed_refusal(refusal, msg)
        if msg.bet_id in self.stored_bets:
            if staked:
                _return_stake(m, msg, cycle)
            raise IdempotencyConflict(f"bet {msg.bet_id} exists on another market")
        try:
            if isinstance(op.prepared, BaseException):
                raise op.prepared
            if not staked:  # not prepared: the market did not exist then
                raise Conflict("the bet was not prepared; retry")
            price = m.quote(msg, self.now)
        except LootifyError as exc:
            if staked:
                self._refuse_staked(m, msg, exc, cycle)
            elif msg.request_hash is not None and type(exc) in REPLAYED_REFUSALS.values():
                self._keep_refusal(
                    m, msg.bet_id, Refusal(msg.user_id, msg.request_hash, exc.code, exc.message),
                    cycle,
                )
            raise
        # Fixed odds always have a price; a pool bet's payout is decided at settlement.
        potential = None
        if m.raffle is not None:
            potential = m.raffle.terms.prize
        elif m.type != "pool" and price is not None:
            potential = pricing.fixed_payout(msg.amount, price)
        bet = Bet(
            msg.bet_id,
            msg.user_id,
            msg.selection,
            msg.amount,
            price,
            potential,
            stake="committed",
            placed_at=self.now,
            request_hash=msg.request_hash,
        )
        m.bets[bet.id] = bet
        m.add_exposure(bet, +1)
        m.reprice()
        cycle.writes.append(BetPlaced(m.id, bet, op))
        self._touch(m, cycle, "odds")
        return bet.record(m.id)

    def _keep_refusal(self, m: Market, bet_id: str, refusal: Refusal, cycle: Cycle) -> None:
        if m.refused is None:
            m.refused = {}
        m.refused[bet_id] = refusal
        cycle.writes.append(BetRefused(m.id, bet_id, refusal))

    def _refuse_staked(self, m: Market, msg: PlaceBet, exc: LootifyError, cycle: Cycle) -> None:
        """A bet refused after its stake was taken: refused for good, stake returned."""
        refusal = Refusal(msg.user_id, msg.request_hash or "", exc.code, exc.message)
        self._keep_refusal(m, msg.bet_id, refusal, cycle)
        _return_stake(m, msg, cycle)

    def _return_open(self, m: Market, msg: ReturnStakes, cycle: Cycle) -> int:
        """Stakes left open past their time-out: a bet this market has keeps its stake;
        any other bet id is refused for good (a retry of it is answered a conflict),
        and its stake returned. Returns how many go back."""
        returned = 0
        for bet_id, user_id, amount in msg.stakes:
            bet = m.bets.get(bet_id)
            if bet is not None and bet.user_id == user_id:
                cycle.writes.append(StakeKept(user_id, bet_id))
                continue
            used = bet is not None or (m.refused and bet_id in m.refused)
            if not used and bet_id not in self.stored_bets:
                self._keep_refusal(m, bet_id, Refusal(user_id, "", IdempotencyConflict.code,
                                                      NEVER_PLACED), cycle)
            cycle.writes.append(StakeReturned(m.id, user_id, bet_id, amount))
            returned += 1
        return returned

    def _cancel(self, m: Market, msg: CancelBet, cycle: Cycle) -> BetRecord:
        bet = m.bets.get(msg.bet_id)
        if bet is None or bet.user_id != msg.user_id:
            raise NotFound(f"no bet {msg.bet_id}")
        if bet.status == "cancelled":
            return bet.record(m.id)
        if m.status != "open":
            raise MarketNotOpen("bets can be cancelled only while the market is open")
        if bet.status != "accepted":
            raise InvalidTransition(f"the bet is {bet.status}")
        m.add_exposure(bet, -1)
        bet.status, bet.payout, bet.payout_state = "cancelled", bet.amount, "owed"
        bet.settled_at = time.time()
        m.reprice()
        cycle.writes.append(BetChanged(m.id, bet))
        self._touch(m, cycle, "odds")
        return bet.record(m.id)

    def _transition(self, m: Market, action: str, cycle: Cycle) -> dict:
        if action not in TRANSITIONS:
            raise InvalidInput(f"unknown action {action!r}")
        sources, target = TRANSITIONS[action]
        if m.status not in sources:
            raise InvalidTransition(f"cannot {action} a market that is {m.status}")
        m.status = target
        if target == "void":
            now = time.time()
            for bet in m.bets.values():
                if bet.status == "accepted":
                    m.add_exposure(bet, -1)
                    bet.status, bet.payout, bet.payout_state = "void", bet.amount, "owed"
                    bet.settled_at = now
                    cycle.writes.append(BetChanged(m.id, bet))
            m.settled_at = now
            m.reprice()
        self._touch(m, cycle, "status_changed")
        return m.view()

    def _close_due(self, m: Market, cycle: Cycle) -> dict:
        """Housekeeping found the market past its closes_at; a suspended one closes too."""
        if m.status in ("open", "suspended") and m.closes_at is not None:
            if self.now >= m.closes_at:
                m.status = "closed"
                self._touch(m, cycle, "status_changed")
        return m.view()

    def _set_odds(self, m: Market, msg: SetOdds, cycle: Cycle) -> dict:
        if m.type != "fixed_odds":
            raise InvalidTransition(f"a {m.type} market has no odds to set")
        if m.status in ("settled", "void"):
            raise InvalidTransition(f"the market is {m.status}")
        new = dict(m.odds)
        for key, odds in msg.odds:
            if key not in new:
                raise InvalidInput(f"unknown selection {key!r}", field="odds")
            new[key] = odds
        m.model = pricing.FixedOddsModel.from_odds(
            {k: v for k, v in new.items() if v is not None},
            liability=dict(m.exposure),
            depth=m.model.depth if m.model else pricing.DEFAULT_DEPTH,
        )
        m.reprice()
        self._touch(m, cycle, "odds")
        return m.view()

    def _settle(self, m: Market, winner: str, cycle: Cycle) -> dict:
        if m.status == "settled":
            raise AlreadySettled(f"the market was settled ({m.winner} won)")
        if m.status != "closed":
            raise InvalidTransition(f"cannot settle a market that is {m.status}; close it first")
        if m.raffle is not None:  # `winner` is the lottery's draw
            winner = m.raffle.winning_number(winner)
        elif winner not in m.exposure:
            raise InvalidInput(f"unknown selection {winner!r}", field="winner")
        accepted = [b for b in m.bets.values() if b.status == "accepted"]
        now = time.time()
        pool = winning = 0
        if m.type == "pool":
            pool = sum(b.amount for b in accepted)
            winning = sum(b.amount for b in accepted if b.selection == winner)
            if winning == 0:  # nobody to pay: the round is void, stakes back
                return self._transition(m, "void", cycle)
        for bet in accepted:
            if bet.selection == winner:
                bet.status = "won"
                bet.payout = (
                    pricing.pool_payout(bet.amount, pool, winning, m.takeout_bp)
                    if m.type == "pool"
                    else bet.potential or 0
                )
                bet.payout_state = "owed" if bet.payout else "none"
            else:
                bet.status = "lost"
            bet.settled_at = now
        m.status, m.winner, m.settled_at = "settled", winner, now
        cycle.writes.append(
            MarketSettled(
                m.id,
                winner,
                accepted,
                pool if m.type == "pool" else 0,
                winning if m.type == "pool" else 1,
            )
        )
        self._touch(m, cycle, "status_changed")
        return m.view()

    def _recover(self, m: Market, stakes_only: bool, cycle: Cycle) -> int:
        """Resend the money moves that a crash or a failed call left half-way: those of
        bets unfinished for `RECOVERY_AGE_S` and not moving now."""
        due = time.time() - RECOVERY_AGE_S
        unfinished = [b for b in map(m.bets.__getitem__, m.unstaked) if b.placed_at < due]
        if not stakes_only:
            unfinished += [
                b
                for b in m.bets.values()
                if b.payout_state == "owed"
                and b.stake != "reserved"
                and (b.settled_at or b.placed_at) < due
            ]
        unfinished = [b for b in unfinished if b.id not in self.saga.moving]
        cycle.writes.append(BetsToRecover(m.id, unfinished))
        if stakes_only and not m.unstaked:  # the stored count ran high: set it right
            self._touch(m, cycle, "stakes")
        return len(unfinished)

    def _money_moved(self, m: Market, msg: MoneyMoved, cycle: Cycle) -> None:
        for bet_id in msg.staked:
            bet = m.bets[bet_id]
            if bet.stake == "reserved":
                bet.stake = "committed"
                m.unstaked.discard(bet_id)
                cycle.writes.append(StakeCommitted(m.id, bet))
        for bet_id in msg.returned:
            bet = m.bets[bet_id]
            if bet.stake == "reserved":  # the reservation ended first: the bet never stood
                m.unstaked.discard(bet_id)
                if bet.status in ("accepted", "won", "lost"):
                    m.add_exposure(bet, -1)
                    m.reprice()
                bet.stake, bet.status, bet.payout, bet.payout_state = "returned", "void", 0, "none"
                cycle.writes.append(BetChanged(m.id, bet))
                self._touch(m, cycle, "odds")
        for bet_id in msg.paid:
            bet = m.bets[bet_id]
            if bet.payout_state == "owed":
                bet.payout_state = "paid"
                cycle.writes.append(BetChanged(m.id, bet))

    def _touch(self, m: Market, cycle: Cycle, change: str) -> None:
        m.version += 1
        cycle.writes.append(MarketChanged(m, change))

    async def commit(self, conn: asyncpg.Connection, cycle: Cycle, fence: Fence) -> None:
        stored = await store_cycle(conn, cycle.writes, self.host.settings.shards, fence)

        def remember() -> None:
            for m in stored.markets.values():
                m.stored_version = m.version
            publish_cycle(get_publisher(self.host.settings.namespace), stored)

        cycle.after_commit.append(remember)

    def finish(self, cycle: Cycle) -> Awaitable[None] | None:
        return self.saga.finish(cycle.writes)

    async def tick(self) -> None:
        try:
            await self.saga.recover()
        finally:  # a failed recovery must not keep markets from closing on time
            await self.lifecycle.tick()

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        """Reads (and catalog writes) that need no entity: `actors.markets.queries`."""
        if name == "cancel_event":
            return await self.lifecycle.cancel_event(**args)
        handler = queries.HANDLERS.get(name)
        if handler is None:
            return await super().query(name, args)
        async with self.host.pool.acquire() as conn:
            return await handler(conn, **args)
