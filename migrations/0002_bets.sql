-- The bets service: events, markets (each owned by one odds entity) and bets.

create schema if not exists bets;

create table bets.events (
    id uuid primary key,
    name text not null,
    category text not null,
    starts_at timestamptz not null,
    status text not null default 'scheduled'
        check (status in ('scheduled', 'live', 'finished', 'cancelled')),
    created_at timestamptz not null default now()
);

-- The odds entity's durable state. `version` is its ETag: the owner's writes are
-- conditional on it, so a stale activation cannot overwrite a newer state.
create table bets.markets (
    id uuid primary key,
    event_id uuid not null references bets.events (id),
    shard int not null,
    name text not null,
    type text not null check (type in ('fixed_odds', 'pool')),
    status text not null default 'open'
        check (status in ('open', 'suspended', 'closed', 'settled', 'void')),
    selections jsonb not null,   -- [{key, name}] in display order
    pricing jsonb not null,      -- odds model (fixed odds) or takeout (pool)
    odds jsonb not null,         -- the current price per selection, in hundredths
    min_stake bigint not null,
    max_stake bigint not null,
    max_payout bigint,
    winner text,
    version bigint not null default 0,
    created_at timestamptz not null default now(),
    settled_at timestamptz
);
create index markets_event on bets.markets (event_id);

-- A bet's cash, tracked in two steps so a crash between any two of them is finished
-- on recovery by the market's host:
--   stake:  reserved (held in the wallet) -> committed (moved to the market's
--           account) | returned (the reservation ended first: the bet is void)
--   payout: none -> owed (payout or refund decided) -> paid (credited to the wallet)
create table bets.bets (
    id uuid primary key,
    user_id uuid not null,
    market_id uuid not null,
    selection text not null,
    amount bigint not null check (amount > 0),
    odds_x100 int,
    potential_payout bigint,
    status text not null check (status in ('accepted', 'cancelled', 'won', 'lost', 'void')),
    payout bigint not null default 0,
    stake text not null check (stake in ('reserved', 'committed', 'returned')),
    payout_state text not null default 'none' check (payout_state in ('none', 'owed', 'paid')),
    placed_at timestamptz not null default now(),
    settled_at timestamptz
);
create index bets_market on bets.bets (market_id);
create index bets_user on bets.bets (user_id, placed_at desc);
create index bets_unfinished on bets.bets (market_id)
    where stake = 'reserved' or payout_state = 'owed';

-- Recurring parimutuel rounds (the betting MVP's daily UP/DOWN rounds), run by the
-- scheduler actor: a series opens a pool market every `period_s`, locks it after
-- `open_s`, and settles it from the result source, or voids it after `grace_s`.
create table bets.round_series (
    id uuid primary key,
    event_id uuid not null references bets.events (id),
    name text not null,
    selections jsonb not null,
    takeout text not null,
    starts_at timestamptz not null,
    period_s int not null check (period_s > 0),
    open_s int not null check (open_s > 0),
    grace_s int not null check (grace_s >= 0),
    active boolean not null default true
);

create table bets.rounds (
    series_id uuid not null references bets.round_series (id),
    round_no int not null,
    market_id uuid not null unique,
    locks_at timestamptz not null,
    status text not null default 'open' check (status in ('open', 'locked', 'settled', 'void')),
    primary key (series_id, round_no)
);

-- What an operator posts as a round's result (the default result source).
create table bets.round_results (
    series_id uuid not null,
    round_no int not null,
    winner text not null,
    posted_at timestamptz not null default now(),
    primary key (series_id, round_no)
);
