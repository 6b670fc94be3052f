-- A bet id is one key of one user: placed on one market or refused by one, never
-- both. Each table's primary key guards only itself, so a key refused on one market
-- could still place a bet on another. The market's one-statement commit calls this
-- check, which raises the duplicate the other table's key would have raised; the
-- market then reruns the cycle carefully and answers idempotency_conflict.
create function bets.expect_unused_bet_ids(p_placed uuid[], p_refused uuid[])
returns boolean language plpgsql as $$
begin
    if exists (select 1 from bets.refused_bets where id = any(p_placed)) then
        raise exception 'a bet id placed here was refused on a market'
            using errcode = 'unique_violation', constraint = 'refused_bets_pkey';
    end if;
    if exists (select 1 from bets.bets where id = any(p_refused)) then
        raise exception 'a bet id refused here was placed on a market'
            using errcode = 'unique_violation', constraint = 'bets_pkey';
    end if;
    return true;
end $$;
