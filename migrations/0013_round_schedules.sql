-- Recurring rounds on the wall clock (betting-mvp): a series' rounds lock daily at a
-- time of day in a named timezone, plus `lock_delay_s`; the result is asked for
-- `settle_delay_s` after the lock, of the operator or the series' oracle adapter, and
-- none `grace_s` after that voids the round. Series with a fixed period keep theirs.
alter table bets.round_series
    alter column period_s drop not null,
    alter column open_s drop not null,
    add column time_of_day time,
    add column timezone text,
    add column lock_delay_s int not null default 0 check (lock_delay_s >= 0),
    add column settle_delay_s int not null default 0 check (settle_delay_s >= 0),
    add column oracle text,
    add column created_at timestamptz not null default now(),
    add column stopped_at timestamptz,
    add constraint round_series_schedule check (
        (time_of_day is null) = (timezone is null)
        and (time_of_day is not null or (period_s is not null and open_s is not null))
    );
