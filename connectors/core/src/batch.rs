//! What a source hands to the capture pipeline.

use serde::{Deserialize, Serialize};

use crate::event::ChangeEvent;

/// A run of change events in source order, optionally closing at a resumable point.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ChangeEvent>,
    /// Set when the batch ends at a transaction boundary: once every event of this batch and
    /// of all earlier batches is confirmed by Kafka, the source may resume from here.
    pub checkpoint: Option<SourceCheckpoint>,
}

/// A durable resume point of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCheckpoint {
    /// `postgres` or `mysql`.
    pub connector: String,
    /// Connector-specific resume position; for Postgres the end LSN of the last transaction
    /// whose events are all in Kafka, as `16/B374D848`.
    pub position: String,
    /// Whether the initial snapshot finished (all its rows are in Kafka).
    pub snapshot_done: bool,
    /// The replication slot (Postgres) the position belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// When the checkpoint was written, milliseconds since the Unix epoch.
    pub written_at_ms: i64,
}
