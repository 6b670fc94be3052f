-- Money in and out through a payment provider (LOOTIFY_PAYMENTS=provider).
-- The money itself moves in the wallets (a deposit credits with the reference id
-- `provider:<payment id>`; a withdrawal is a reservation `withdrawal:<id>` committed to
-- `external` when paid out, released when the payout failed); these tables keep what
-- the provider was asked and told, so replicas agree and a restart resumes.

create table gateway.deposits (
    id uuid primary key,
    user_id uuid not null,
    amount bigint not null check (amount > 0),
    provider_payment_id text unique,
    status text not null default 'pending' check (status in ('pending', 'credited', 'failed')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index deposits_by_user on gateway.deposits (user_id, created_at desc);

-- The withdrawal queue: `requested` until its funds are reserved, `pending` until an
-- operator (or the automatic threshold) approves it, `approved` until a replica asks
-- the provider for the payout, `paying` until the provider's webhook says `paid` or
-- `failed`.
create table gateway.withdrawals (
    id uuid primary key,
    user_id uuid not null,
    amount bigint not null check (amount > 0),
    status text not null default 'requested'
        check (status in ('requested', 'pending', 'approved', 'paying', 'paid', 'failed')),
    approved_by text,
    provider_payout_id text unique,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index withdrawals_by_user on gateway.withdrawals (user_id, created_at desc);
create index withdrawals_queue on gateway.withdrawals (status, created_at)
    where status in ('pending', 'approved', 'paying');

-- The provider's event ids already acted on: a replayed webhook is answered without
-- acting again.
create table gateway.webhook_events (
    event_id text primary key,
    type text not null,
    received_at timestamptz not null default now()
);
