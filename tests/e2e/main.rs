//! End-to-end scenarios against real services: a private Postgres, an Apache Kafka broker, and the
//! `sluice` binary. Each module proves one behaviour; see the comment at its top.

mod common;
mod pipeline;
mod reload;
mod replay;

mod apply;
mod backfill;

mod bad_input;
mod blobs;
mod capture_changes;
mod capture_types;
mod chaos;
mod fuzz_seeds;
mod identifiers;
mod idle_source;
mod kafka_security;
mod mappings;
mod mysql8;
mod mysql_backfill;
mod mysql_capture;
mod mysql_pipeline;
mod mysql_preflight;
mod mysql_target;
mod operate;
mod promise;
mod resnapshot;
mod restart;
mod round_trip;
mod snapshot_handover;
mod tls;
