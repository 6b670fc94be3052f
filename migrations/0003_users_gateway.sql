-- Users (accounts, revoked tokens, login lockout) and the gateway's shared state
-- (idempotency keys, rate-limit counters). Every gateway replica reads and writes
-- these tables, so a limit or a revocation holds whichever replica a request reaches.

create schema if not exists users;

-- Emails are stored lower-cased (the check enforces it), so the plain unique
-- constraint is case-insensitive without the citext extension.
create table users.users (
    id uuid primary key default gen_random_uuid(),
    email text not null unique check (email = lower(email) and char_length(email) <= 254),
    username text not null check (char_length(username) between 3 and 32),
    password_hash text not null,
    role text not null default 'player' check (role in ('player', 'operator', 'admin')),
    created_at timestamptz not null default now()
);

-- Logged-out tokens by JWT id, until the token would have expired anyway.
create table users.revoked_tokens (
    jti text primary key,
    expires_at timestamptz not null
);
create index revoked_tokens_expiry on users.revoked_tokens (expires_at);

-- Failed logins per email (existing or not, so the answer reveals nothing):
-- `failures` counts within the window that began at `window_start`; reaching the
-- threshold sets `locked_until`.
create table users.login_failures (
    email text primary key,
    failures int not null default 0,
    window_start timestamptz not null default now(),
    locked_until timestamptz
);

create schema if not exists gateway;

-- Stripe-style idempotency keys, per user. `in_progress` while the first request
-- runs (until `locked_until`, after which a crashed request's key can be taken over),
-- `done` with the stored answer afterwards.
create table gateway.idempotency_keys (
    user_id uuid not null,
    key text not null check (char_length(key) between 1 and 255),
    request_hash text not null,
    status text not null check (status in ('in_progress', 'done')),
    response_status int,
    response_body jsonb,
    created_at timestamptz not null default now(),
    locked_until timestamptz,
    expires_at timestamptz not null,
    primary key (user_id, key),
    check (status = 'in_progress' or response_status is not null)
);
create index idempotency_keys_expiry on gateway.idempotency_keys (expires_at);

-- Shared rate-limit state, one row per bucket (e.g. `login:ip:10.0.0.1`), kept as a
-- GCRA "theoretical arrival time": a request is allowed when
-- max(tat, now) + interval - now <= burst, and then moves tat to max(tat, now) + interval.
create table gateway.rate_limits (
    bucket text primary key,
    tat timestamptz not null
);
create index rate_limits_tat on gateway.rate_limits (tat);
