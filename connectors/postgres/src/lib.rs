//! Sluice's Postgres connector.
//!
//! * [`PostgresSource`] captures row changes of configured tables through logical replication
//!   (`pgoutput`, protocol v1): it makes sure the publication and the replication slot exist,
//!   takes a consistent initial snapshot through the slot's exported snapshot, then streams
//!   from the slot's consistent point with no gap and no overlap (see [`snapshot`]).
//! * [`preflight`](preflight::preflight) explains every misconfiguration it can see before
//!   anything starts: `wal_level`, the role's REPLICATION attribute, missing tables, tables
//!   without a usable key, slot state.
//! * [`pgoutput`] is our own decoder of the protocol messages; [`types`] turns Postgres text
//!   values into Sluice's lossless [`sluice_core::Value`] encoding.
//!
//! * [`PostgresSink`] writes mapped row changes into a target database together with the Kafka
//!   offsets they complete, in one transaction (see [`sink`]).
//!
//! Guarantees: a position is acknowledged to Postgres only after the capture pipeline reports
//! it durable (see [`stream`]); unchanged TOASTed values are never emitted as data.

pub mod backfill;
pub mod catalog;
pub mod client;
pub mod config;
pub mod error;
pub mod pgoutput;
pub mod preflight;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod table;
pub mod target;
pub mod types;

pub use config::PostgresConnection;
pub use error::PostgresError;
pub use sink::{BlobColumn, PostgresSink, TargetTable};
pub use sluice_core::RunHandles;
pub use source::{PostgresSource, SourceSettings};
pub use target::PostgresTarget;
