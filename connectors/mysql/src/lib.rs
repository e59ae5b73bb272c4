//! Sluice's MySQL/MariaDB connector.
//!
//! * [`MySqlSink`] writes mapped row changes into a target database together with the Kafka
//!   offsets they complete, in one transaction (see [`sink`]), like the Postgres sink.
//!
//! The binlog source is not built yet.

pub mod client;
pub mod config;
pub mod error;
pub mod sink;

pub use config::MySqlConnection;
pub use error::MySqlError;
pub use sink::{MySqlSink, MySqlTable};
