-- What each sink did to each target table, and a minute-by-minute history of each sink
-- (see postgres/0003_status.sql): written in the same transaction as the rows. One row per
-- apply worker: sum them per sink and table (or minute). No views here: creating one needs
-- a privilege (CREATE VIEW) the tables do not.

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
