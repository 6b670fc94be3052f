-- Replicas follow the deny-list as a feed (rows after the last `seq` they saw), so a
-- token check costs no query: one small read per replica per second instead.
alter table users.revoked_tokens add column seq bigint generated always as identity;
create index revoked_tokens_seq on users.revoked_tokens (seq);
