-- Marking a bet's stake committed is the one update every bet gets, and a market's row
-- is rewritten in every round that takes its bets. PostgreSQL makes an update
-- heap-only (no new index entries, far less work) only if no index mentions a changed
-- column, not even in a predicate, and the row's page has room for the new version.
-- A round's bets share pages and are marked committed in one statement, so half of
-- each page is kept free (at 70%, fewer than half of the updates were heap-only).
alter table bets.bets set (fillfactor = 50);
alter table bets.markets set (fillfactor = 50);

-- Unstaked bets are found another way: each market row carries how many of its bets
-- were unstaked when it was last written. The count may run high (marking stakes
-- committed does not rewrite the market row); recovery sets it right when it finds
-- nothing left to do. Not indexed: an index on it would stop the heap-only updates,
-- and a host's recovery tick reads the markets of its shards in one scan.
drop index bets.bets_unfinished;
create index bets_owed on bets.bets (market_id) where payout_state = 'owed';

alter table bets.markets add column unstaked int not null default 0 check (unstaked >= 0);
update bets.markets m
   set unstaked = (select count(*) from bets.bets b
                    where b.market_id = m.id and b.stake = 'reserved');
