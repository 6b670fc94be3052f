-- Raffles (rifa1122): markets of numbered tickets, settled by a lottery's draw.
alter table bets.markets drop constraint markets_type_check;
alter table bets.markets add constraint markets_type_check
    check (type in ('fixed_odds', 'pool', 'raffle'));

-- Lotteries' draws, posted by an operator or fetched by an oracle adapter. A raffle
-- naming a lottery is settled by that lottery's first draw at or after it closed.
create table bets.lottery_draws (
    lottery text not null,
    drawn_at timestamptz not null,
    draw text not null check (draw ~ '^[0-9]{4,}$'),
    posted_at timestamptz not null default now(),
    primary key (lottery, drawn_at)
);

-- What each market host's housekeeping looks for: closed raffles waiting for a draw.
create index raffles_waiting on bets.markets (shard) where type = 'raffle' and status = 'closed';
