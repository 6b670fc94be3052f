-- Shards move between hosts (issue 13). Every assignment carries an epoch, bumped each
-- time its shard changes hands; a host commits a cycle only while the epochs it holds
-- for the cycle's shards are still the directory's (checked inside the commit's own
-- transaction, under `for share`, so a move waits for a commit in flight and a commit
-- after a move is refused). Numbered 0008: 0007 is taken on main by other work.
alter table runtime.shard_directory add column epoch bigint not null default 1;

-- One row per kind: the directory's own epoch (bumped with every move, so a caller can
-- tell a newer directory from the one it holds) and how many hosts the coordinator
-- keeps (the target `lootify scale` sets).
create table runtime.directory_epochs (
    kind text primary key,
    epoch bigint not null default 1,
    hosts int not null check (hosts > 0)
);
insert into runtime.directory_epochs (kind, hosts)
select kind, max(host) + 1 from runtime.shard_directory group by kind;

-- One row per host: its incarnation, bumped each time a process starts as that host.
-- A process checks its incarnation when it commits, so the process a restart replaced
-- (paused, partitioned, on a node believed dead) can never commit again.
create table runtime.host_leases (
    kind text not null,
    host int not null,
    incarnation bigint not null,
    primary key (kind, host)
);

-- Every time a host takes up a shard (at its start or on a hand-off): with the epoch
-- and the incarnation it holds, the audit shows that no two processes ever held one
-- shard in the same epoch.
create table runtime.activations (
    kind text not null,
    shard int not null,
    epoch bigint not null,
    host int not null,
    incarnation bigint not null,
    at timestamptz not null default now()
);
create index activations_by_shard on runtime.activations (kind, shard, epoch);
