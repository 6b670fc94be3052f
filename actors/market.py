"""The odds entity: one per market, owning its status, odds, liabilities or pools,
limits and bets.

Placing a bet is a saga across the market and the user's wallet that never
creates or loses money:

1. `admit` (as a batch arrives, before the mailbox): refuse what is plainly
   refused (market not open, limits, price) without touching money; reserve the
   stake of the rest in the wallets, all at once (two-phase, with a time-out);
2. `apply`: accept at the current price, or refuse (the reservation is released);
   the accepted bet is written with `stake = reserved` in the round's commit;
3. `finish` (after the commit, before the answer): commit each reservation to the
   market's account, then record `stake = committed`.

A crash before 2 leaves a reservation that expires; a crash between 2 and 3 leaves
`stake = reserved`, which the host's recovery commits (or, if the reservation
already ended, voids the bet). Payouts and refunds go the same way: decided and
written first (`payout_state = owed`), credited after, finished on recovery.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

import asyncpg

from . import pricing
from . import wallet as w
from .book import (
    TRANSITIONS,
    Bet,
    BetRecord,
    CancelBet,
    CreateMarket,
    GetMarket,
    Market,
    MoneyMoved,
    PlaceBet,
    Recover,
    SetOdds,
    Settle,
    Transition,
    pricing_json,
    to_datetime,
    to_epoch,
)
from .errors import (
    AlreadySettled,
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    LootifyError,
    MarketNotOpen,
    NotFound,
    OddsChanged,
    PayoutTooHigh,
    ReservationResolved,
    StakeTooHigh,
    StakeTooLow,
)
from .runtime import EntityKind, Op, RetryRound, Round, check_versioned_update, shard_of

RECOVERY_AGE_S = 3.0
# How long the record of moved money may wait for a round (see `EntityHost.submit`).
RECORD_WITHIN_S = 0.05


class MarketKind(EntityKind[Market]):
    name = "markets"

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self._wallets: Any = None
        # Bets whose money this process is moving now: recovery leaves them alone, or
        # a slow settlement would be sent again every tick while its first run goes on.
        self.moving: set[str] = set()
        # In a careful round: the round's bet ids stored already (see `prepare`).
        self.stored_bets: dict[str, tuple[str, str]] = {}
        # The round's clock: the bets a round takes share their time of placing.
        self.now = time.time()

    async def wallets(self) -> Any:
        """The wallet router of this host process (created on first use)."""
        if self._wallets is None:
            from .client import AsyncLootify

            client = await AsyncLootify.create(kinds=("wallets",), settings=self.host.settings)
            self._wallets = client.routers["wallets"]
        return self._wallets

    # -- activation ----------------------------------------------------------

    async def load(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, Market]:
        markets = {i: Market(i) for i in ids}
        for r in await conn.fetch(
            "select id::text, event_id::text, name, type, status, selections, pricing, "
            "min_stake, max_stake, max_payout, winner, version, settled_at "
            "from bets.markets where id = any($1::uuid[])",
            ids,
        ):
            m = markets[r["id"]]
            m.event_id, m.name, m.type, m.status = r["event_id"], r["name"], r["type"], r["status"]
            selections = json.loads(r["selections"])
            m.keys = [s["key"] for s in selections]
            m.names = [s["name"] for s in selections]
            p = json.loads(r["pricing"])
            m.takeout_bp = p.get("takeout_bp", 0)
            m.model = (
                pricing.FixedOddsModel.from_json(m.keys, p) if m.type == "fixed_odds" else None
            )
            m.min_stake, m.max_stake, m.max_payout = r["min_stake"], r["max_stake"], r["max_payout"]
            m.winner, m.version = r["winner"], r["version"]
            m.stored_version = m.version
            m.settled_at = to_epoch(r["settled_at"])
            m.exposure = dict.fromkeys(m.keys, 0)
        for r in await conn.fetch(
            "select id::text, market_id::text, user_id::text, selection, amount, odds_x100, "
            "potential_payout, status, payout, stake, payout_state, placed_at, settled_at "
            "from bets.bets where market_id = any($1::uuid[])",
            ids,
        ):
            m = markets[r["market_id"]]
            bet = Bet(
                r["id"],
                r["user_id"],
                r["selection"],
                r["amount"],
                r["odds_x100"],
                r["potential_payout"],
                r["status"],
                r["payout"],
                r["stake"],
                r["payout_state"],
                to_epoch(r["placed_at"]),
                to_epoch(r["settled_at"]),
            )
            m.bets[bet.id] = bet
            if bet.stake == "reserved":
                m.unstaked.add(bet.id)
            if bet.status in ("accepted", "won", "lost"):  # bets that stood keep their exposure
                m.add_exposure(bet, +1)
        for m in markets.values():
            if m.event_id is not None:
                m.reprice()
        return markets

    # -- the saga's first step -----------------------------------------------------

    async def admit(self, ops: list[Op]) -> None:
        """Before the mailbox: refuse what is plainly refused and reserve the stakes of
        the rest. It runs outside the rounds, so reservations for the next bets travel
        while the current round commits; the price is only provisional here (the
        round decides), and an entity not yet activated is checked in the round."""
        to_reserve: list[Op] = []
        # An activated market knows its own bets; a bet id used on another market is
        # caught by the bets' primary key (a careful round then refuses it). A market
        # still to be activated must not reserve again for a bet it already holds.
        cold: list[str] = []
        for op in ops:
            msg = op.message
            if not isinstance(msg, PlaceBet):
                continue
            entry = self.host.entities.get(op.entity_id)
            if entry is None:
                cold.append(msg.bet_id)
            else:
                m = entry.state
                if m.event_id is None or msg.bet_id in m.bets:
                    continue  # the round answers: not found, or a replay
                try:
                    self._check_bet(m, msg)
                except LootifyError as exc:
                    op.prepared = exc
                    continue
            to_reserve.append(op)
        if not to_reserve:
            return
        known = {}
        if cold:
            async with self.host.pool.acquire() as conn:
                known = await _stored_bets(conn, cold)
        if known:
            for op in to_reserve:
                market_id, _ = known.get(op.message.bet_id, (None, None))
                if market_id == op.entity_id:
                    op.prepared = "known"  # a replay: the round answers the bet as it is
                elif market_id is not None:
                    op.prepared = IdempotencyConflict(
                        f"bet {op.message.bet_id} exists on another market"
                    )
            to_reserve = [op for op in to_reserve if op.prepared is None]
        router = await self.wallets()
        timeout = self.host.settings.reservation_timeout_s
        outcomes = await router.call_many(
            [
                (
                    op.message.user_id,
                    w.Reserve(
                        op.message.amount, _stake_ref(op.message.bet_id), timeout, confirm_held=True
                    ),
                )
                for op in to_reserve
            ]
        )
        for op, (ok, result) in zip(to_reserve, outcomes, strict=True):
            if ok:
                op.prepared = "reserved"
            elif isinstance(result, ReservationResolved):
                op.prepared = _refused_before(op.message.bet_id)
            else:
                op.prepared = result

    async def prepare(self, conn: asyncpg.Connection, ops: list[Op]) -> None:
        """In a careful round (a bet id of the last one was stored already), look up
        which of the round's bet ids are stored, and where."""
        careful, self.careful = self.careful, False
        self.stored_bets = {}
        self.now = time.time()
        if careful:
            ids = [op.message.bet_id for op in ops if isinstance(op.message, PlaceBet)]
            self.stored_bets = await _stored_bets(conn, ids)

    def _check_bet(self, m: Market, msg: PlaceBet) -> int | None:
        """The price the bet would be accepted at now, or the reason it is refused."""
        if m.status != "open":
            raise MarketNotOpen(f"the market is {m.status}", status=m.status)
        if msg.selection not in m.odds:
            raise InvalidInput(f"unknown selection {msg.selection!r}", field="selection")
        if msg.amount < m.min_stake:
            raise StakeTooLow(f"the minimum stake is {m.min_stake}", min_stake=m.min_stake)
        if msg.amount > m.max_stake:
            raise StakeTooHigh(f"the maximum stake is {m.max_stake}", max_stake=m.max_stake)
        current = m.odds[msg.selection]
        if m.type == "pool":
            return current
        assert current is not None
        if msg.odds_x100 is not None and msg.accept != "any":
            if msg.accept == "exact" and current != msg.odds_x100:
                raise OddsChanged("the price moved", odds=current)
            if msg.accept == "higher" and current < msg.odds_x100:
                raise OddsChanged("the price moved below yours", odds=current)
        if m.max_payout is not None and pricing.fixed_payout(msg.amount, current) > m.max_payout:
            raise PayoutTooHigh(f"the maximum payout is {m.max_payout}", max_payout=m.max_payout)
        return current

    # -- messages ------------------------------------------------------------

    def apply(self, m: Market, msg: Any, round_: Round, op: Op) -> Any:
        if isinstance(msg, CreateMarket):
            return self._create(m, msg, round_)
        if m.event_id is None:
            if isinstance(msg, PlaceBet) and op.prepared == "reserved":
                round_.writes.append(("release", m.id, msg.user_id, msg.bet_id))
            raise NotFound(f"no market {m.id}")
        if isinstance(msg, GetMarket):
            return m.view()
        if isinstance(msg, PlaceBet):
            return self._place(m, msg, round_, op)
        if isinstance(msg, CancelBet):
            return self._cancel(m, msg, round_)
        if isinstance(msg, Transition):
            return self._transition(m, msg.action, round_)
        if isinstance(msg, SetOdds):
            return self._set_odds(m, msg, round_)
        if isinstance(msg, Settle):
            return self._settle(m, msg.winner, round_)
        if isinstance(msg, MoneyMoved):
            return self._money_moved(m, msg, round_)
        if isinstance(msg, Recover):
            return self._recover(m, msg.stakes_only, round_)
        raise InvalidInput(f"unknown market message {type(msg).__name__}")

    def _create(self, m: Market, msg: CreateMarket, round_: Round) -> dict:
        if m.event_id is not None:
            raise Conflict(f"market {m.id} exists")
        m.event_id, m.name, m.type, m.status = msg.event_id, msg.name, msg.type, "open"
        m.keys = [s[0] for s in msg.selections]
        m.names = [s[1] for s in msg.selections]
        m.takeout_bp = msg.takeout_bp
        m.min_stake, m.max_stake, m.max_payout = msg.min_stake, msg.max_stake, msg.max_payout
        m.exposure = dict.fromkeys(m.keys, 0)
        if m.type == "fixed_odds":
            m.model = pricing.FixedOddsModel.from_odds(
                {k: o for k, _, o in msg.selections}, overround=msg.overround
            )
        m.reprice()
        self._touch(m, round_, "status_changed")
        return m.view()

    def _place(self, m: Market, msg: PlaceBet, round_: Round, op: Op) -> BetRecord:
        existing = m.bets.get(msg.bet_id)
        if existing is not None:
            same = (existing.user_id, existing.selection, existing.amount) == (
                msg.user_id,
                msg.selection,
                msg.amount,
            )
            if not same:
                raise IdempotencyConflict(f"bet {msg.bet_id} exists with other arguments")
            return existing.record(m.id)
        if isinstance(op.prepared, BaseException):
            raise op.prepared
        if op.prepared != "reserved":  # not prepared: the market did not exist then
            raise Conflict("the bet was not prepared; retry")
        elsewhere = self.stored_bets.get(msg.bet_id)
        if elsewhere is not None:
            if elsewhere[1] != msg.user_id:  # the reservation is this message's own
                round_.writes.append(("release", m.id, msg.user_id, msg.bet_id))
            raise IdempotencyConflict(f"bet {msg.bet_id} exists on another market")
        try:
            price = self._check_bet(m, msg)
        except LootifyError:
            round_.writes.append(("release", m.id, msg.user_id, msg.bet_id))
            raise
        potential = None if m.type == "pool" else pricing.fixed_payout(msg.amount, price)
        bet = Bet(
            msg.bet_id, msg.user_id, msg.selection, msg.amount, price, potential, placed_at=self.now
        )
        m.bets[bet.id] = bet
        m.unstaked.add(bet.id)
        m.add_exposure(bet, +1)
        m.reprice()
        round_.writes.append(("bet_new", m.id, bet, op))
        self._touch(m, round_, "odds")
        return bet.record(m.id)

    def _cancel(self, m: Market, msg: CancelBet, round_: Round) -> BetRecord:
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
        round_.writes.append(("bet_update", m.id, bet))
        self._touch(m, round_, "odds")
        return bet.record(m.id)

    def _transition(self, m: Market, action: str, round_: Round) -> dict:
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
                    round_.writes.append(("bet_update", m.id, bet))
            m.settled_at = now
            m.reprice()
        self._touch(m, round_, "status_changed")
        return m.view()

    def _set_odds(self, m: Market, msg: SetOdds, round_: Round) -> dict:
        if m.type != "fixed_odds":
            raise InvalidTransition("pool odds follow the pools; they cannot be set")
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
        self._touch(m, round_, "odds")
        return m.view()

    def _settle(self, m: Market, winner: str, round_: Round) -> dict:
        if m.status == "settled":
            raise AlreadySettled(f"the market was settled ({m.winner} won)")
        if m.status != "closed":
            raise InvalidTransition(f"cannot settle a market that is {m.status}; close it first")
        if winner not in m.exposure:
            raise InvalidInput(f"unknown selection {winner!r}", field="winner")
        accepted = [b for b in m.bets.values() if b.status == "accepted"]
        now = time.time()
        pool = winning = 0
        if m.type == "pool":
            pool = sum(b.amount for b in accepted)
            winning = sum(b.amount for b in accepted if b.selection == winner)
            if winning == 0:  # nobody to pay: the round is void, stakes back
                return self._transition(m, "void", round_)
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
        round_.writes.append(
            (
                "settle",
                m.id,
                winner,
                accepted,
                pool if m.type == "pool" else 0,
                winning if m.type == "pool" else 1,
            )
        )
        self._touch(m, round_, "status_changed")
        return m.view()

    def _recover(self, m: Market, stakes_only: bool, round_: Round) -> int:
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
        unfinished = [b for b in unfinished if b.id not in self.moving]
        round_.writes.append(("recover", m.id, unfinished))
        if stakes_only and not m.unstaked:  # the stored count ran high: set it right
            self._touch(m, round_, "stakes")
        return len(unfinished)

    def _money_moved(self, m: Market, msg: MoneyMoved, round_: Round) -> None:
        for bet_id in msg.staked:
            bet = m.bets[bet_id]
            if bet.stake == "reserved":
                bet.stake = "committed"
                m.unstaked.discard(bet_id)
                round_.writes.append(("bet_staked", m.id, bet))
        for bet_id in msg.returned:
            bet = m.bets[bet_id]
            if bet.stake == "reserved":  # the reservation ended first: the bet never stood
                m.unstaked.discard(bet_id)
                if bet.status in ("accepted", "won", "lost"):
                    m.add_exposure(bet, -1)
                    m.reprice()
                bet.stake, bet.status, bet.payout, bet.payout_state = "returned", "void", 0, "none"
                round_.writes.append(("bet_update", m.id, bet))
                self._touch(m, round_, "odds")
        for bet_id in msg.paid:
            bet = m.bets[bet_id]
            if bet.payout_state == "owed":
                bet.payout_state = "paid"
                round_.writes.append(("bet_update", m.id, bet))

    def _touch(self, m: Market, round_: Round, change: str) -> None:
        m.version += 1
        round_.writes.append(("market", m.id, m, change))

    # -- persistence -----------------------------------------------------------

    async def persist(self, conn: asyncpg.Connection, round_: Round) -> None:
        markets: dict[str, Market] = {}
        new_bets: list[Bet] = []
        bet_market: dict[str, str] = {}
        updated: dict[str, Bet] = {}
        staked: list[str] = []
        settles = []
        for write in round_.writes:
            tag = write[0]
            if tag == "market":
                markets[write[1]] = write[2]
            elif tag == "bet_new":
                new_bets.append(write[2])
                bet_market[write[2].id] = write[1]
            elif tag == "bet_update":
                updated[write[2].id] = write[2]
            elif tag == "bet_staked":
                staked.append(write[2].id)
            elif tag == "settle":
                settles.append(write)
        shards = self.host.settings.shards
        fresh = [m for m in markets.values() if m.stored_version < 0]
        for m in fresh:
            await conn.execute(
                "insert into bets.markets (id, event_id, shard, name, type, status, selections, "
                "pricing, odds, min_stake, max_stake, max_payout, version, unstaked) "
                "values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                m.id,
                m.event_id,
                shard_of(m.id, shards),
                m.name,
                m.type,
                m.status,
                json.dumps([{"key": k, "name": n} for k, n in zip(m.keys, m.names, strict=True)]),
                json.dumps(pricing_json(m)),
                json.dumps(m.odds),
                m.min_stake,
                m.max_stake,
                m.max_payout,
                m.version,
                len(m.unstaked),
            )
        if new_bets:
            try:
                await self._insert_bets(conn, new_bets, bet_market)
            except asyncpg.UniqueViolationError as exc:
                raise RetryRound("a bet id was used on another market") from exc
        for _, market_id, winner, _accepted, pool, winning in settles:
            m = markets[market_id]
            # One pass over the market's bets: the same arithmetic as `_settle`.
            await conn.execute(
                "update bets.bets b set status = case when s.won then 'won' else 'lost' end, "
                "payout = s.payout, payout_state = case when s.payout > 0 then 'owed' "
                "else 'none' end, settled_at = $8 "
                "from (select id, selection = $2 as won, case when selection <> $2 then 0 "
                "  when $3::text = 'pool' then div("
                "    amount::numeric * $4::bigint * ($5::int - $6::int), $7::numeric * $5::int) "
                "  else potential_payout end as payout "
                "  from bets.bets where market_id = $1 and status = 'accepted') s "
                "where b.id = s.id",
                market_id,
                winner,
                m.type,
                pool,
                pricing.BASIS,
                m.takeout_bp,
                winning,
                to_datetime(m.settled_at),
            )
        if updated:
            bets = list(updated.values())
            await conn.execute(
                "update bets.bets b set status = u.status, payout = u.payout, stake = u.stake, "
                "payout_state = u.payout_state, settled_at = u.settled_at "
                "from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
                "$6::timestamptz[]) as u(id, status, payout, stake, payout_state, settled_at) "
                "where b.id = u.id",
                [b.id for b in bets],
                [b.status for b in bets],
                [b.payout for b in bets],
                [b.stake for b in bets],
                [b.payout_state for b in bets],
                [to_datetime(b.settled_at) for b in bets],
            )
        staked = [bet_id for bet_id in staked if bet_id not in updated]
        if staked:  # the most common update by far: one column
            await conn.execute(
                "update bets.bets set stake = 'committed' where id = any($1::uuid[])", staked
            )
        stored = [m for m in markets.values() if m.stored_version >= 0]
        if stored:
            status = await conn.execute(
                "update bets.markets m set status = u.status, pricing = u.pricing, "
                "odds = u.odds, winner = u.winner, version = u.version, "
                "settled_at = u.settled_at, unstaked = u.unstaked "
                "from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], "
                "$6::bigint[], $7::timestamptz[], $8::bigint[], $9::int[]) "
                "as u(id, status, pricing, odds, winner, version, settled_at, stored_version, "
                "unstaked) "
                "where m.id = u.id and m.version = u.stored_version",
                [m.id for m in stored],
                [m.status for m in stored],
                [json.dumps(pricing_json(m)) for m in stored],
                [json.dumps(m.odds) for m in stored],
                [m.winner for m in stored],
                [m.version for m in stored],
                [to_datetime(m.settled_at) for m in stored],
                [m.stored_version for m in stored],
                [len(m.unstaked) for m in stored],
            )
            check_versioned_update(status, len(stored), "market")

        # A market rewritten only for its count of unstaked bets has no news.
        changes = {
            write[1]: write[3]
            for write in round_.writes
            if write[0] == "market" and write[3] != "stakes"
        }
        settled = [b for s in settles for b in s[3]] + [
            b for b in updated.values() if b.status in ("won", "lost", "void", "cancelled")
        ]

        def remember() -> None:
            for m in markets.values():
                m.stored_version = m.version
            self._publish(markets, changes, new_bets, bet_market, settled)

        round_.after_commit.append(remember)

    @staticmethod
    async def _insert_bets(
        conn: asyncpg.Connection, bets: list[Bet], bet_market: dict[str, str]
    ) -> None:
        stamps = {t: to_datetime(t) for t in {b.placed_at for b in bets}}  # mostly one
        await conn.copy_records_to_table(
            "bets",
            schema_name="bets",
            columns=[
                "id",
                "user_id",
                "market_id",
                "selection",
                "amount",
                "odds_x100",
                "potential_payout",
                "status",
                "payout",
                "stake",
                "payout_state",
                "placed_at",
            ],
            records=[
                (
                    b.id,
                    b.user_id,
                    bet_market[b.id],
                    b.selection,
                    b.amount,
                    b.odds_x100,
                    b.potential,
                    b.status,
                    b.payout,
                    b.stake,
                    b.payout_state,
                    stamps[b.placed_at],
                )
                for b in bets
            ],
        )

    def _publish(
        self, markets: dict, changes: dict, new_bets: list, bet_market: dict, settled: list
    ) -> None:
        """Tell subscribers (via PubSub) what the round changed; odds are coalesced, so a
        burst of bets gives at most one update per market per flush."""
        publish = self.host.publisher.publish
        wants = self.host.publisher.wants
        for market_id, m in markets.items():
            change = changes.get(market_id)
            topic = f"event:{m.event_id}"
            if change is None or not wants(topic):
                continue
            if change == "status_changed":
                publish(
                    topic,
                    "status_changed",
                    {"market_id": m.id, "status": m.status, "version": m.version},
                )
            publish(
                topic,
                "odds_updated",
                {"market_id": m.id, "odds": m.odds_view(), "version": m.version},
                coalesce=True,
            )
        for bet in new_bets:
            topic = f"user:{bet.user_id}"
            if wants(topic):
                publish(topic, "bet_placed", bet.view(bet_market[bet.id]))
        seen = set()
        for bet in settled:
            topic = f"user:{bet.user_id}"
            if bet.id not in seen and wants(topic):
                seen.add(bet.id)
                market_id = next(mid for mid, m in markets.items() if bet.id in m.bets)
                publish(topic, "bet_settled", bet.view(market_id))

    # -- the saga's last step ----------------------------------------------------

    def finish(self, round_: Round) -> Any:
        stakes: dict[str, tuple[str, Bet]] = {}
        pays: dict[str, tuple[str, Bet]] = {}
        releases: list[tuple[str, str]] = []
        placing: dict[str, Op] = {}
        for write in round_.writes:
            tag = write[0]
            if tag == "bet_new":
                stakes[write[2].id] = (write[1], write[2])
                placing[write[2].id] = write[3]
            elif tag == "release":
                releases.append((write[2], write[3]))
            elif tag in ("bet_update", "bet_staked", "recover"):
                for bet in write[2] if tag == "recover" else [write[2]]:
                    self._collect(write[1], bet, stakes, pays)
            elif tag == "settle":
                for bet in write[3]:
                    self._collect(write[1], bet, stakes, pays)
        if not (stakes or pays or releases):
            return None
        return self._moving(stakes, pays, releases, placing)

    async def _moving(
        self, stakes: dict, pays: dict, releases: list, placing: dict[str, Op]
    ) -> None:
        ids = (stakes.keys() | pays.keys()) - self.moving
        self.moving |= ids
        recorded: list[asyncio.Future] = []
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

    @staticmethod
    def _collect(market_id: str, bet: Bet, stakes: dict, pays: dict) -> None:
        if bet.stake == "reserved":
            stakes[bet.id] = (market_id, bet)
        if bet.payout_state == "owed":
            pays[bet.id] = (market_id, bet)

    async def _move_money(
        self, stakes: dict, pays: dict, releases: list, placing: dict[str, Op] | None = None
    ) -> list[asyncio.Future]:
        """Commit stakes, then credit what is owed, then record it in the markets (the
        futures of those records)."""
        router = await self.wallets()
        moved: dict[str, dict[str, list[str]]] = defaultdict(
            lambda: {"staked": [], "returned": [], "paid": []}
        )
        items = list(stakes.values())
        outcomes = await router.call_many(
            [
                (bet.user_id, w.Commit(_stake_ref(bet.id), None, f"market:{mid}"))
                for mid, bet in items
            ]
            + [(uid, w.Release(_stake_ref(bet_id))) for uid, bet_id in releases]
        )
        for (mid, bet), (ok, outcome) in zip(items, outcomes, strict=False):
            if ok:
                moved[mid]["staked"].append(bet.id)
            elif isinstance(outcome, (ReservationResolved, NotFound)):
                moved[mid]["returned"].append(bet.id)
                op = (placing or {}).get(bet.id)
                if op is not None:  # its reservation ended before the commit
                    op.error = _refused_before(bet.id)
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
                    w.Credit(
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
            future.add_done_callback(w._ignore_outcome)
            recorded.append(future)
        return recorded

    async def tick(self) -> None:
        """Recovery: finish the money of bets a crash left half-way."""
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
            self.host.submit(market_id, message).add_done_callback(w._ignore_outcome)

    # -- reads that need no entity ---------------------------------------------------

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        from . import catalog

        handler = getattr(catalog, name, None)
        if handler is None or name.startswith("_"):
            return await super().query(name, args)
        async with self.host.pool.acquire() as conn:
            return await handler(conn, **args)


async def _stored_bets(conn: asyncpg.Connection, ids: list[str]) -> dict[str, tuple[str, str]]:
    """bet id -> (market id, user id) of those of `ids` that are stored."""
    rows = await conn.fetch(
        "select id::text, market_id::text, user_id::text from bets.bets where id = any($1::uuid[])",
        ids,
    )
    return {r["id"]: (r["market_id"], r["user_id"]) for r in rows}


def _refused_before(bet_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"bet {bet_id} was placed before and its stake is no longer held; use a new bet id"
    )


def _stake_ref(bet_id: str) -> str:
    return f"bet:{bet_id}"
