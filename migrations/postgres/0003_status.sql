-- What each sink did to each target table, and a minute-by-minute history of each sink:
-- written in the same transaction as the rows, so they agree with the target's rows after
-- any crash. One row per apply worker (workers never hold the same partition, so they never
-- wait on each other's row); the *_totals views add the workers up, for dashboards.

create table if not exists sluice.table_status (
    sink               text        not null,
    worker             integer     not null,
    target_table       text        not null,
    upserts            bigint      not null default 0,
    updates            bigint      not null default 0,
    deletes            bigint      not null default 0,
    dead_letters       bigint      not null default 0,
    -- 'ok', or 'refusing' when the last batch that touched the table had a row refused
    state              text        not null,
    -- the latest refusal's error (kept until another replaces it)
    last_error         text,
    -- the source position and commit time of the last change applied to the table
    last_position      jsonb,
    last_source_commit timestamptz,
    updated_at         timestamptz not null default now(),
    primary key (sink, worker, target_table)
);

create table if not exists sluice.sync_history (
    sink         text        not null,
    worker       integer     not null,
    minute       timestamptz not null,
    events       bigint      not null default 0,
    dead_letters bigint      not null default 0,
    batches      bigint      not null default 0,
    -- the largest time from a source commit to the target commit of a batch in the minute
    max_lag_ms   bigint,
    primary key (sink, worker, minute)
);

create or replace view sluice.table_totals as
select sink, target_table,
       sum(upserts)::bigint as upserts, sum(updates)::bigint as updates,
       sum(deletes)::bigint as deletes, sum(dead_letters)::bigint as dead_letters,
       max(last_source_commit) as last_source_commit, max(updated_at) as updated_at
  from sluice.table_status
 group by sink, target_table;

create or replace view sluice.history_totals as
select sink, minute, sum(events)::bigint as events, sum(dead_letters)::bigint as dead_letters,
       sum(batches)::bigint as batches, max(max_lag_ms) as max_lag_ms
  from sluice.sync_history
 group by sink, minute;
