-- The checks of a commit as functions, so that a kind can write a whole cycle, checks
-- included, in one statement: one round trip to PostgreSQL instead of one per table
-- and per check. On this 2-core machine every round trip of a commit waits for the
-- server process to be scheduled, so a cycle of nine statements took ~6 ms under load.

-- The fence: this process is still the host's incarnation, and the host still owns
-- each shard in the epoch it holds. The lease is locked before the directory rows,
-- and all stay locked `for share` until the commit, so a move waits for a commit in
-- flight and a commit after a move is refused (SQLSTATE LTF01).
create function runtime.hold_epochs(
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
          join unnest(p_shards, p_epochs) as u(shard, epoch)
            on d.shard = u.shard and d.epoch = u.epoch
         where d.kind = p_kind and d.host = p_host
           for share of d)
    select count(*) into held from locked;
    if held <> cardinality(p_shards) then
        raise exception 'host % of % no longer owns every shard of the cycle', p_host, p_kind
            using errcode = 'LTF01';
    end if;
    return true;
end $$;

-- A versioned write that matched fewer rows than it wrote: another activation wrote
-- them since this one loaded them (SQLSTATE LTS01, the statement is undone).
create function runtime.expect_rows(p_written bigint, p_expected bigint, p_what text)
returns boolean language plpgsql as $$
begin
    if p_written <> p_expected then
        raise exception 'a % changed under this activation', p_what using errcode = 'LTS01';
    end if;
    return true;
end $$;
