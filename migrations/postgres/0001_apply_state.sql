-- Sluice's own state in a target Postgres database: where each sink is in each Kafka
-- partition, the events the target refused, and truncate barriers.
-- Written in the same transaction as the rows they describe.

create table if not exists sluice.apply_offsets (
    sink            text        not null,
    topic           text        not null,
    partition       integer     not null,
    -- the next Kafka offset to read: everything below it is applied (or dead-lettered)
    next_offset     bigint      not null,
    -- the source position of the last event applied from this partition, e.g.
    -- {"connector": "postgres", "commit_lsn": "0/16B3748", "seq": 3}
    source_position jsonb,
    updated_at      timestamptz not null default now(),
    primary key (sink, topic, partition)
);

create table if not exists sluice.dead_letters (
    id          bigserial   primary key,
    sink        text        not null,
    topic       text        not null,
    partition   integer     not null,
    "offset"    bigint      not null,
    -- the Kafka record as received (key and value as text; null when absent)
    key         text,
    value       text,
    -- why the event was refused, and the target's SQLSTATE when the target refused it
    error       text        not null,
    sqlstate    text,
    failed_at   timestamptz not null default now()
);

create index if not exists dead_letters_sink_idx on sluice.dead_letters (sink, failed_at);

-- A truncate reaches every partition of a table's topic. It runs once all of them got there,
-- so that no partition's later changes are wiped and no earlier change survives it.
create table if not exists sluice.truncate_barriers (
    sink       text    not null,
    topic      text    not null,
    -- the truncate's source position, as in apply_offsets
    position   text    not null,
    partition  integer not null,
    arrived_at timestamptz not null default now(),
    primary key (sink, topic, position, partition)
);

create table if not exists sluice.truncates_done (
    sink     text not null,
    topic    text not null,
    position text not null,
    done_at  timestamptz not null default now(),
    primary key (sink, topic, position)
);
