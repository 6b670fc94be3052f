"""Markets and bets in PostgreSQL: activation, and one commit cycle's writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from actors.runtime import (
    Fence,
    check_versioned_update,
    commit_checks,
    hold_epochs,
    retry_carefully_on_duplicate,
    shard_of,
)

from . import pricing
from .clock import to_datetime, to_epoch
from .raffle import Raffle
from .state import Bet, Market, Refusal, pricing_json
from .writes import (
    BetChanged,
    BetPlaced,
    BetRefused,
    MarketChanged,
    MarketSettled,
    StakeCommitted,
)

SETTLED_STATUSES = ("won", "lost", "void", "cancelled")


async def load_markets(conn: asyncpg.Connection, ids: list[str]) -> dict[str, Market]:
    """The markets of `ids` with all their bets; unknown ids get an empty market."""
    markets = {i: Market(i) for i in ids}
    for r in await conn.fetch(
        "select id::text, event_id::text, name, type, status, selections, pricing, "
        "min_stake, max_stake, max_payout, winner, version, settled_at, closes_at, in_play "
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
        m.model = pricing.FixedOddsModel.from_json(m.keys, p) if m.type == "fixed_odds" else None
        m.raffle = Raffle.from_json(p) if m.type == "raffle" else None
        m.min_stake, m.max_stake, m.max_payout = r["min_stake"], r["max_stake"], r["max_payout"]
        m.winner, m.version = r["winner"], r["version"]
        m.stored_version = m.version
        m.settled_at = to_epoch(r["settled_at"])
        m.closes_at, m.in_play = to_epoch(r["closes_at"]), r["in_play"]
        m.exposure = dict.fromkeys(m.keys, 0)
    for r in await conn.fetch(
        "select id::text, market_id::text, user_id::text, selection, amount, odds_x100, "
        "potential_payout, status, payout, stake, payout_state, placed_at, settled_at, "
        "request_hash from bets.bets where market_id = any($1::uuid[])",
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
            r["request_hash"],
        )
        m.bets[bet.id] = bet
        if bet.stake == "reserved":
            m.unstaked.add(bet.id)
        if bet.status in ("accepted", "won", "lost"):  # bets that stood keep their exposure
            m.add_exposure(bet, +1)
    for r in await conn.fetch(
        "select id::text, market_id::text, user_id::text, request_hash, code, message "
        "from bets.refused_bets where market_id = any($1::uuid[])",
        ids,
    ):
        m = markets[r["market_id"]]
        if m.refused is None:
            m.refused = {}
        m.refused[r["id"]] = Refusal(r["user_id"], r["request_hash"], r["code"], r["message"])
    for m in markets.values():
        if m.event_id is not None:
            m.reprice()
    return markets


async def stored_bets(
    conn: asyncpg.Connection, ids: list[str]
) -> dict[str, tuple[str, str, bool]]:
    """bet id -> (market id, user id, placed) of those of `ids` that are stored,
    placed (True) or refused (False)."""
    rows = await conn.fetch(
        "select id::text, market_id::text, user_id::text, true as placed from bets.bets "
        "where id = any($1::uuid[]) union all "
        "select id::text, market_id::text, user_id::text, false from bets.refused_bets "
        "where id = any($1::uuid[])",
        ids,
    )
    return {r["id"]: (r["market_id"], r["user_id"], r["placed"]) for r in rows}


async def existing_markets(conn: asyncpg.Connection, ids: list[str]) -> set[str]:
    """Those of `ids` that are markets."""
    rows = await conn.fetch("select id::text from bets.markets where id = any($1::uuid[])", ids)
    return {r["id"] for r in rows}


@dataclass
class Stored:
    """What one cycle wrote, for what follows its commit (publishing)."""

    markets: dict[str, Market] = field(default_factory=dict)
    # market id -> its published change ("status_changed" or "odds")
    changes: dict[str, str] = field(default_factory=dict)
    new_bets: list[Bet] = field(default_factory=list)
    bet_market: dict[str, str] = field(default_factory=dict)
    settled: list[Bet] = field(default_factory=list)


async def store_cycle(
    conn: asyncpg.Connection, writes: list[Any], shards: int, fence: Fence
) -> Stored:
    """Write a cycle's changes, only while `fence` holds: a cycle that takes bets (the
    common one by far) in one statement, any other in a transaction."""
    stored = Stored()
    markets = stored.markets
    updated: dict[str, Bet] = {}
    staked: list[str] = []
    refused: list[BetRefused] = []
    settles: list[MarketSettled] = []
    for write in writes:
        if isinstance(write, MarketChanged):
            markets[write.market.id] = write.market
            if write.change != "stakes":
                stored.changes[write.market.id] = write.change
        elif isinstance(write, BetPlaced):
            stored.new_bets.append(write.bet)
            stored.bet_market[write.bet.id] = write.market_id
        elif isinstance(write, BetChanged):
            updated[write.bet.id] = write.bet
        elif isinstance(write, StakeCommitted):
            staked.append(write.bet.id)
        elif isinstance(write, MarketSettled):
            settles.append(write)
        elif isinstance(write, BetRefused):
            refused.append(write)
    stored.settled = [b for s in settles for b in s.accepted] + [
        b for b in updated.values() if b.status in SETTLED_STATUSES
    ]
    if not (updated or settles) and all(m.stored_version >= 0 for m in markets.values()):
        await _commit_placements(conn, stored, refused, staked, fence)
        return stored
    async with conn.transaction():
        await hold_epochs(conn, fence)
        await _write_all(conn, stored, refused, staked, updated, settles, shards)
    return stored


async def _write_all(
    conn: asyncpg.Connection,
    stored: Stored,
    refused: list[BetRefused],
    staked: list[str],
    updated: dict[str, Bet],
    settles: list[MarketSettled],
    shards: int,
) -> None:
    markets = stored.markets
    for m in markets.values():
        if m.stored_version < 0:
            await _insert_market(conn, m, shards)
    if stored.new_bets:
        with retry_carefully_on_duplicate("a bet id was used on another market"):
            await _insert_bets(conn, stored.new_bets, stored.bet_market)
    if refused:
        with retry_carefully_on_duplicate("a refused bet's id was used on another market"):
            await _insert_refusals(conn, refused)
    if stored.new_bets or refused:
        with retry_carefully_on_duplicate("a bet id was used on another market"):
            await conn.execute(
                "select bets.expect_unused_bet_ids($1::uuid[], $2::uuid[])",
                [b.id for b in stored.new_bets],
                [r.bet_id for r in refused],
            )
    for settle in settles:
        await _settle_bets(conn, markets[settle.market_id], settle)
    if updated:
        await _update_bets(conn, list(updated.values()))
    staked = [bet_id for bet_id in staked if bet_id not in updated]
    if staked:  # the most common update by far: one column
        await conn.execute(
            "update bets.bets set stake = 'committed' where id = any($1::uuid[])", staked
        )
    await _update_markets(conn, [m for m in markets.values() if m.stored_version >= 0])


# A cycle that takes bets: the bets placed, the refusals kept for replays, the stakes
# recorded committed and the markets repriced (conditional on the version each
# activation loaded), with the fence, in one statement that is its own transaction.
_PLACEMENTS = """
with fence as (
    select runtime.hold_epochs($1, $2, $3, $4::int[], $5::bigint[]) as held
), placed as (
    insert into bets.bets (id, user_id, market_id, selection, amount, odds_x100,
                           potential_payout, status, payout, stake, payout_state, placed_at,
                           request_hash)
    select * from unnest($6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::bigint[],
                         $11::int[], $12::bigint[], $13::text[], $14::bigint[], $15::text[],
                         $16::text[], $17::timestamptz[], $18::text[])
), refused as (
    insert into bets.refused_bets (id, market_id, user_id, request_hash, code, message)
    select * from unnest($19::uuid[], $20::uuid[], $21::uuid[], $22::text[], $23::text[],
                         $24::text[])
), staked as (
    update bets.bets set stake = 'committed' where id = any($25::uuid[])
), repriced as (
    update bets.markets m
       set status = u.status, pricing = u.pricing, odds = u.odds, winner = u.winner,
           version = u.version, settled_at = u.settled_at, unstaked = u.unstaked
      from unnest($26::uuid[], $27::text[], $28::jsonb[], $29::jsonb[], $30::text[],
                  $31::bigint[], $32::timestamptz[], $33::bigint[], $34::int[])
           as u(id, status, pricing, odds, winner, version, settled_at, stored_version,
                unstaked)
     where m.id = u.id and m.version = u.stored_version
    returning 1
)
select (select held from fence),
       runtime.expect_rows((select count(*) from repriced), $35, 'market'),
       bets.expect_unused_bet_ids($6::uuid[], $19::uuid[])
"""


async def _commit_placements(
    conn: asyncpg.Connection,
    stored: Stored,
    refused: list[BetRefused],
    staked: list[str],
    fence: Fence,
) -> None:
    bets, where = stored.new_bets, stored.bet_market
    stamps = {t: to_datetime(t) for t in {b.placed_at for b in bets}}  # mostly one
    markets = list(stored.markets.values())
    with commit_checks(), retry_carefully_on_duplicate(
        "a bet id was used on another market", constraint="bets_pkey"
    ), retry_carefully_on_duplicate(
        "a refused bet's id was used on another market", constraint="refused_bets_pkey"
    ):
        await conn.execute(
            _PLACEMENTS,
            *fence.args(),
            [b.id for b in bets],
            [b.user_id for b in bets],
            [where[b.id] for b in bets],
            [b.selection for b in bets],
            [b.amount for b in bets],
            [b.odds_x100 for b in bets],
            [b.potential for b in bets],
            [b.status for b in bets],
            [b.payout for b in bets],
            [b.stake for b in bets],
            [b.payout_state for b in bets],
            [stamps[b.placed_at] for b in bets],
            [b.request_hash for b in bets],
            [r.bet_id for r in refused],
            [r.market_id for r in refused],
            [r.refusal.user_id for r in refused],
            [r.refusal.request_hash for r in refused],
            [r.refusal.code for r in refused],
            [r.refusal.message for r in refused],
            staked,
            *_market_columns(markets),
            len(markets),
        )


async def _insert_market(conn: asyncpg.Connection, m: Market, shards: int) -> None:
    await conn.execute(
        "insert into bets.markets (id, event_id, shard, name, type, status, selections, "
        "pricing, odds, min_stake, max_stake, max_payout, version, unstaked, closes_at, in_play) "
        "values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        to_datetime(m.closes_at),
        m.in_play,
    )


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
            "request_hash",
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
                b.request_hash,
            )
            for b in bets
        ],
    )


async def _insert_refusals(conn: asyncpg.Connection, refused: list[BetRefused]) -> None:
    await conn.copy_records_to_table(
        "refused_bets",
        schema_name="bets",
        columns=["id", "market_id", "user_id", "request_hash", "code", "message"],
        records=[
            (r.bet_id, r.market_id, r.refusal.user_id, r.refusal.request_hash, r.refusal.code,
             r.refusal.message)
            for r in refused
        ],
    )


async def _settle_bets(conn: asyncpg.Connection, m: Market, settle: MarketSettled) -> None:
    """One pass over the market's bets: the same arithmetic as the entity's `settle`."""
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
        settle.market_id,
        settle.winner,
        m.type,
        settle.pool,
        pricing.BASIS,
        m.takeout_bp,
        settle.winning,
        to_datetime(m.settled_at),
    )


async def _update_bets(conn: asyncpg.Connection, bets: list[Bet]) -> None:
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


async def _update_markets(conn: asyncpg.Connection, markets: list[Market]) -> None:
    if not markets:
        return
    status = await conn.execute(
        "update bets.markets m set status = u.status, pricing = u.pricing, "
        "odds = u.odds, winner = u.winner, version = u.version, "
        "settled_at = u.settled_at, unstaked = u.unstaked "
        "from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], "
        "$6::bigint[], $7::timestamptz[], $8::bigint[], $9::int[]) "
        "as u(id, status, pricing, odds, winner, version, settled_at, stored_version, "
        "unstaked) "
        "where m.id = u.id and m.version = u.stored_version",
        *_market_columns(markets),
    )
    check_versioned_update(status, len(markets), "market")


def _market_columns(markets: list[Market]) -> tuple[list[Any], ...]:
    """A versioned market update's arrays: id, status, pricing, odds, winner, version,
    settled_at, the version loaded, and the count of unstaked bets."""
    return (
        [m.id for m in markets],
        [m.status for m in markets],
        [json.dumps(pricing_json(m)) for m in markets],
        [json.dumps(m.odds) for m in markets],
        [m.winner for m in markets],
        [m.version for m in markets],
        [to_datetime(m.settled_at) for m in markets],
        [m.stored_version for m in markets],
        [len(m.unstaked) for m in markets],
    )
