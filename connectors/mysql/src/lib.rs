//! Sluice's MySQL/MariaDB connector.
//!
//! * [`MySqlSink`] writes mapped row changes into a target database together with the Kafka
//!   offsets they complete, in one transaction (see [`sink`]), like the Postgres sink.
//!
//! * [`preflight`](preflight::preflight) checks a server for binlog capture (binlog on, ROW
//!   format, FULL row image and metadata, grants, tables with primary keys).
//!
//! * [`MySqlSource`] captures row changes from the binlog (with a consistent snapshot first),
//!   see [`source`] and [`stream`]; [`binlog`] and [`types`] decode rows losslessly.

pub mod backfill;
pub mod binlog;
pub mod client;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod preflight;
pub mod sink;
pub mod source;
pub mod stream;
pub mod table;
pub mod target;
pub mod types;

pub use config::MySqlConnection;
pub use error::MySqlError;
pub use sink::{MySqlSink, MySqlTable};
pub use source::{MySqlSource, MySqlSourceSettings};
pub use target::MySqlTarget;
