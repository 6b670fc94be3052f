-- `bets.expect_unused_bet_ids` runs in every cycle that takes bets, almost always with
-- no refused ids. PL/pgSQL keeps a generic plan per session, made from the table's
-- size when it was first planned: on a new deployment `bets.bets` is empty, a
-- sequential scan is cheapest, and every later cycle scanned the whole, growing
-- table for an empty list until an analyze replanned it (a market's commit grew from
-- 4 to 18 ms within a minute of a benchmark). So an empty list skips its lookup, and
-- each lookup is planned for the ids it is given.
create or replace function bets.expect_unused_bet_ids(p_placed uuid[], p_refused uuid[])
returns boolean language plpgsql
set plan_cache_mode = force_custom_plan as $$
begin
    if cardinality(p_placed) > 0 then
        if exists (select 1 from bets.refused_bets where id = any(p_placed)) then
            raise exception 'a bet id placed here was refused on a market'
                using errcode = 'unique_violation', constraint = 'refused_bets_pkey';
        end if;
    end if;
    if cardinality(p_refused) > 0 then
        if exists (select 1 from bets.bets where id = any(p_refused)) then
            raise exception 'a bet id refused here was placed on a market'
                using errcode = 'unique_violation', constraint = 'bets_pkey';
        end if;
    end if;
    return true;
end $$;
