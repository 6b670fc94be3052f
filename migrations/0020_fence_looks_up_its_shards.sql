-- The fence's shard check scanned every directory row the host owns (256 for a host
-- of a 256-shard kind), joined each to the cycle's shards and locked the matches: its
-- cost grew with the host's shards, not with the cycle's. It now looks up the cycle's
-- shards by the primary key, and checks host and epoch on those rows only.
create or replace function runtime.hold_epochs(
    p_kind text, p_host int, p_incarnation bigint, p_shards int[], p_epochs bigint[]
) returns boolean language plpgsql as $$
declare
    current_incarnation bigint;
    held bigint;
begin
    select incarnation into current_incarnation from runtime.host_leases
     where kind = p_kind and host = p_host for share;
    if current_incarnation is distinct from p_incarnation then
        raise exception 'host % of % is no longer this incarnation', p_host, p_kind
            using errcode = 'LTF01';
    end if;
    with locked as (
        select d.shard from runtime.shard_directory d
          join unnest(p_shards, p_epochs) as u(shard, epoch) on d.shard = u.shard
         where d.kind = p_kind and d.shard = any(p_shards)
           and d.host = p_host and d.epoch = u.epoch
           for share of d)
    select count(*) into held from locked;
    if held <> cardinality(p_shards) then
        raise exception 'host % of % no longer owns every shard of the cycle', p_host, p_kind
            using errcode = 'LTF01';
    end if;
    return true;
end $$;
