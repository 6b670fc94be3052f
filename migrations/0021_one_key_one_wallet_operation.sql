-- An Idempotency-Key is one request of its user, whatever the endpoint (the contract:
-- "keys are per user"). Bets keep their keys in the market and deposits and
-- withdrawals in the gateway's table, and neither looked in the other; both move the
-- user's money through the wallet, which now stores the key's id with the operation
-- and takes one operation per key id (its careful cycle refuses another).
alter table wallets.operations add column key_id uuid;
create unique index operations_key_id on wallets.operations (wallet_id, key_id)
    where key_id is not null;
