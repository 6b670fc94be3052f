-- The entity runtime's directory and the wallets service.

create schema if not exists runtime;

-- Logical shard -> host index, per entity kind. Durable so that every process,
-- and every restart, routes an id to the same host; moving a shard is one update.
create table runtime.shard_directory (
    kind text not null,
    shard int not null,
    host int not null,
    primary key (kind, shard)
);

create schema if not exists wallets;

-- One row per user wallet, owned by exactly one activated entity.
-- `seq` counts the wallet's operations: the entity's writes are conditional on it
-- (an ETag), so a stale second activation can never overwrite the owner's state.
create table wallets.wallets (
    user_id uuid primary key,
    shard int not null,
    available bigint not null default 0 check (available >= 0),
    reserved bigint not null default 0 check (reserved >= 0),
    seq bigint not null default 0,
    updated_at timestamptz not null default now()
);

-- Every operation, keyed for idempotency: replaying (wallet, op_key) returns the
-- stored result. Reservation resolutions share the key `resolve/<reference>`, so a
-- reservation resolves at most once.
create table wallets.operations (
    id uuid not null,
    wallet_id uuid not null,
    op_key text not null,
    seq bigint not null,
    kind text not null,
    reference_id text not null,
    amount bigint not null,
    args text not null,
    available_after bigint not null,
    reserved_after bigint not null,
    created_at timestamptz not null default now(),
    primary key (wallet_id, op_key)
);

-- The double-entry journal: each operation's entries sum to zero; an account's
-- balance is the sum of its entries. Accounts: `user:<id>`, `escrow`, `house`,
-- `external`, `market:<id>`.
create table wallets.entries (
    wallet_id uuid not null,
    seq bigint not null,
    account text not null,
    amount bigint not null
);

-- Open reservations (two-phase debits), so expiry can be found without scanning history.
create table wallets.pending (
    wallet_id uuid not null,
    reference_id text not null,
    shard int not null,
    amount bigint not null check (amount > 0),
    expires_at timestamptz,
    primary key (wallet_id, reference_id)
);
create index pending_expiry on wallets.pending (expires_at) where expires_at is not null;
