-- What each sink did to each target table, and a minute-by-minute history of each sink
-- (see postgres/0003_status.sql): written in the same transaction as the rows. One row per
-- apply worker; the *_totals views add them up.

create table if not exists sluice_table_status (
    sink               varchar(255) not null,
    worker             int          not null,
    target_table       varchar(255) not null,
    upserts            bigint       not null default 0,
    updates            bigint       not null default 0,
    deletes            bigint       not null default 0,
    dead_letters       bigint       not null default 0,
    state              varchar(32)  not null,
    last_error         text,
    last_position      json,
    last_source_commit timestamp(6) null default null,
    updated_at         timestamp(6) not null default current_timestamp(6),
    primary key (sink, worker, target_table)
) engine = InnoDB;

create table if not exists sluice_sync_history (
    sink         varchar(255) not null,
    worker       int          not null,
    minute       datetime     not null,
    events       bigint       not null default 0,
    dead_letters bigint       not null default 0,
    batches      bigint       not null default 0,
    max_lag_ms   bigint,
    primary key (sink, worker, minute)
) engine = InnoDB;

create or replace view sluice_table_totals as
select sink, target_table, sum(upserts) as upserts, sum(updates) as updates,
       sum(deletes) as deletes, sum(dead_letters) as dead_letters,
       max(last_source_commit) as last_source_commit, max(updated_at) as updated_at
  from sluice_table_status
 group by sink, target_table;

create or replace view sluice_history_totals as
select sink, minute, sum(events) as events, sum(dead_letters) as dead_letters,
       sum(batches) as batches, max(max_lag_ms) as max_lag_ms
  from sluice_sync_history
 group by sink, minute;
