//! What the apply side hands to a sink: row changes already mapped onto target tables, the
//! Kafka progress they complete, and the events that could not be mapped.
//!
//! A sink writes one [`ApplyBatch`] in ONE target transaction: the row changes, the new
//! per-partition offsets (conditional on the offsets it expected, which fences off a second
//! consumer that was assigned the same partition meanwhile), and the dead letters.

use std::sync::Arc;

/// One row change in terms of a target table (an index into the sink's table list) and its
/// columns (indexes into that table's columns). Values are the envelope's JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetChange {
    /// Insert the row, or update the columns it carries if the key exists. Columns not carried
    /// (an unchanged TOAST value, or not mapped) are left as they are in the target.
    Upsert {
        table: usize,
        columns: Vec<(usize, serde_json::Value)>,
    },
    /// Delete the row with this key (values in the table's key-column order).
    Delete {
        table: usize,
        key: Vec<serde_json::Value>,
    },
}

/// Where a record came from, to record progress and dead letters.
#[derive(Debug, Clone)]
pub struct RecordRef {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A mapped event: its changes are applied together or, if the target refuses one of them for
/// good, not at all (the event then becomes a dead letter).
#[derive(Debug, Clone)]
pub struct MappedEvent {
    pub record: RecordRef,
    pub changes: Vec<TargetChange>,
    /// The record's key and value as text, kept for a dead letter.
    pub key: Option<Arc<str>>,
    pub value: Option<Arc<str>>,
}

/// An event that will not be applied, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: RecordRef,
    pub key: Option<Arc<str>>,
    pub value: Option<Arc<str>>,
    pub error: String,
    /// The target's SQLSTATE when the target refused the event.
    pub sqlstate: Option<String>,
}

/// A partition's progress to store with the batch.
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The stored next offset this batch continues from (`None`: nothing stored yet). The
    /// write only succeeds if the target still holds exactly this value.
    pub expected: Option<i64>,
    pub next_offset: i64,
    /// The source position of the last event applied from the partition (JSON text).
    pub position: Option<String>,
}

/// One target transaction's worth of work.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch {
    pub events: Vec<MappedEvent>,
    pub dead_letters: Vec<DeadLetter>,
    pub progress: Vec<PartitionProgress>,
}

impl ApplyBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty() && self.progress.is_empty()
    }
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Committed; `dead_lettered` events were refused by the target and recorded instead.
    Committed { dead_lettered: usize },
    /// Nothing was committed: the stored offsets of these partitions are not the ones this
    /// batch expected (another consumer moved them). The caller reloads them and retries.
    Fenced(Vec<(Arc<str>, i32)>),
}
