-- A bet placed with an Idempotency-Key is idempotent in its market, not in the
-- gateway: its id comes from the key, and the market commits the key's outcome in the
-- same transaction as the bet. `request_hash` tells a replay of the same request from
-- another request with the same key.
alter table bets.bets add column request_hash text;

-- The refusals of keyed bets (odds changed, funds short, limits): a retry with the
-- same key gets the same refusal instead of a second try at another price.
create table bets.refused_bets (
    id uuid primary key,
    market_id uuid not null,
    user_id uuid not null,
    request_hash text not null,
    code text not null,
    message text not null,
    refused_at timestamptz not null default now()
);
create index refused_bets_market on bets.refused_bets (market_id);
