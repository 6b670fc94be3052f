-- A bet's stake is debited at once, from the player's account straight to its market's
-- (the wallet's `Stake`), and the market then records the bet: two commits a bet, not
-- a reservation, the bet and the reservation's commit. Between the wallet's commit and
-- the market's the stake is open. The market tells the wallet which stakes it recorded
-- (`CloseStakes`, riding with its next stakes); one left open past its time-out was
-- never recorded (the market host died, its commit failed and nobody retried), and the
-- market's recovery records that bet id as refused and returns the stake.
create table wallets.open_stakes (
    wallet_id uuid not null,
    reference_id text not null,
    market_id uuid not null,
    market_shard int not null,  -- each market host's recovery reads its own shards'
    amount bigint not null check (amount > 0),
    created_at timestamptz not null default now(),
    primary key (wallet_id, reference_id)
);
create index open_stakes_by_shard on wallets.open_stakes (market_shard, created_at);
