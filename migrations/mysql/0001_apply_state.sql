-- Sluice's own state in a target MySQL/MariaDB database (tables prefixed sluice_, in the
-- target database itself): where each sink is in each Kafka partition, the events the target
-- refused, and truncate barriers. Written in the same transaction as the rows they describe.
-- One statement per ';' at the end of a line (MySQL runs DDL one statement at a time).

create table if not exists sluice_apply_offsets (
    sink            varchar(255) not null,
    topic           varchar(255) not null,
    `partition`     int          not null,
    next_offset     bigint       not null,
    source_position json,
    updated_at      timestamp(6) not null default current_timestamp(6),
    primary key (sink, topic, `partition`)
) engine = InnoDB;

create table if not exists sluice_dead_letters (
    id          bigint       not null auto_increment primary key,
    sink        varchar(255) not null,
    topic       varchar(255) not null,
    `partition` int          not null,
    `offset`    bigint       not null,
    `key`       longtext,
    value       longtext,
    error       text         not null,
    `sqlstate`  varchar(32),
    failed_at   timestamp(6) not null default current_timestamp(6),
    key sluice_dead_letters_sink (sink, failed_at)
) engine = InnoDB;

create table if not exists sluice_truncate_barriers (
    sink        varchar(255) not null,
    topic       varchar(255) not null,
    position    varchar(255) not null,
    `partition` int          not null,
    arrived_at  timestamp(6) not null default current_timestamp(6),
    primary key (sink, topic, position, `partition`)
) engine = InnoDB;

create table if not exists sluice_truncates_done (
    sink     varchar(255) not null,
    topic    varchar(255) not null,
    position varchar(255) not null,
    done_at  timestamp(6) not null default current_timestamp(6),
    primary key (sink, topic, position)
) engine = InnoDB;
