-- Markets close by themselves at `closes_at` (their event's start unless in play),
-- and events go live and finish by themselves. The due times live here, not in a
-- host's memory, so a host that was down when one fell due acts on it once back.

alter table bets.markets
    add column closes_at timestamptz,
    add column in_play boolean not null default false;

-- What each market host's housekeeping looks for every second: open markets past due.
create index markets_closing on bets.markets (closes_at)
    where status in ('open', 'suspended') and closes_at is not null;

create index events_scheduled on bets.events (starts_at) where status = 'scheduled';
create index events_live on bets.events (id) where status = 'live';
