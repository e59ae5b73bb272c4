//! What apply needs of a target database. A target connector implements [`Target`] (the
//! database: its own tables, the shapes of the mapped ones, stored offsets) and
//! [`TargetWriter`] (one worker's connection, writing batches); apply is generic over them.
//!
//! Contract, for every target:
//! - **Duplicates are harmless.** After a crash apply sends again what it had not stored
//!   progress for: upserts and deletes by primary key, so writing an event twice leaves the
//!   same row.
//! - **Rows and progress never part.** [`TargetWriter::apply`] writes a batch's rows, its dead
//!   letters and each partition's next offset in one transaction, the offsets only if the
//!   stored ones are still those the batch expected (else nothing commits:
//!   [`ApplyOutcome::Fenced`]). Stored progress never moves backward except by `sluice
//!   replay` ([`Target::move_offsets`]).
//! - **A refused row is a dead letter, never a stop.** A row the target refuses for good (a
//!   constraint, a value out of range) goes to the target's dead-letter table with its reason,
//!   in the same transaction as the rest of the batch.
//! - **A truncate is a barrier.** [`TargetWriter::truncate_barrier`] empties the tables once,
//!   when every partition of the topic has reached the truncate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::apply::{ApplyBatch, ApplyOutcome, BarrierOutcome, PartitionProgress, TableShape};
use crate::{ErrorClass, TableId};

/// Stored progress per (topic, partition): the next offset to read and the source position
/// of the last event applied (JSON text).
pub type StoredOffsets = HashMap<(Arc<str>, i32), (i64, Option<String>)>;

/// A target table's name, column names and key column indexes.
pub type TableShapeOf = (TableId, Vec<String>, Vec<usize>);

/// A mapped blob column of a target table, for what a truncate does to its objects.
#[derive(Debug, Clone)]
pub struct BlobColumn {
    /// The target table (index into the sink's tables).
    pub table: usize,
    pub url_column: String,
    /// Whether the objects of deleted (or truncated) rows are deleted from the store.
    pub delete_objects: bool,
}

/// A truncate that reached one partition of its topic: the barrier it waits at, and what it
/// empties once every partition is there.
#[derive(Debug, Clone, Copy)]
pub struct TruncateAt<'a> {
    pub topic: &'a str,
    /// The truncate's source position (text): with the topic, the barrier's name.
    pub position: &'a str,
    /// How many partitions the topic has: all of them reach the barrier before it passes.
    pub partition_count: i32,
    /// The target tables it empties (indexes into the sink's tables).
    pub tables: &'a [usize],
    /// Their blob columns: what happens to the truncated rows' objects.
    pub blob_columns: &'a [BlobColumn],
}

/// A target table as its connector read it from the database's catalog.
pub trait DescribedTable: Clone + Send + Sync + 'static {
    /// The table as the sink's mapping names it.
    fn id(&self) -> &TableId;
    fn column_names(&self) -> Vec<String>;
    /// Indexes of the primary-key columns, in key order.
    fn key(&self) -> &[usize];
    /// The tables this one references by foreign keys.
    fn references(&self) -> &[TableId];
    /// Whether `other` (as a foreign key names it) is this table.
    fn is(&self, other: &TableId) -> bool {
        self.id() == other
    }

    /// The table's name, column names and key, for mapping checks.
    fn shape_of(&self) -> TableShapeOf {
        (self.id().clone(), self.column_names(), self.key().to_vec())
    }

    /// How many columns and which form the key, for folding.
    fn fold_shape(&self) -> TableShape {
        TableShape {
            columns: self.column_names().len(),
            key: self.key().to_vec(),
        }
    }
}

/// For each table, the indexes of the tables among `tables` that its foreign keys reference.
pub fn references_by_index<T: DescribedTable>(tables: &[T]) -> Vec<Vec<usize>> {
    tables
        .iter()
        .map(|t| {
            t.references()
                .iter()
                .filter_map(|r| tables.iter().position(|o| o.is(r)))
                .collect()
        })
        .collect()
}

/// A target database, as configured for a sink.
pub trait Target: Clone + Send + Sync + 'static {
    /// A target table as read from the database's catalog.
    type Table: DescribedTable;
    type Writer: TargetWriter<Error = Self::Error>;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The config section's name (`postgres`, `mysql`): `[sinks.NAME.<kind>]`.
    const KIND: &'static str;
    /// Where this target's dead letters go, for messages.
    const DEAD_LETTER_TABLE: &'static str;

    /// `user@host:port/database`, without the password.
    fn describe(&self) -> String;
    /// Connects, creates or upgrades Sluice's own tables when `migrate`, and reads the shapes
    /// of `tables`: each one's description, or the problem (missing, no primary key) with its
    /// fix.
    fn prepare(
        &self,
        tables: &[TableId],
        migrate: bool,
    ) -> impl Future<Output = Result<Vec<Result<Self::Table, String>>, Self::Error>> + Send;
    /// Stored offsets of `sink`'s partitions, over a new connection.
    fn load_offsets(
        &self,
        sink: &str,
        partitions: &[(Arc<str>, i32)],
    ) -> impl Future<Output = Result<StoredOffsets, Self::Error>> + Send;
    /// Sets `sink`'s stored offsets (topic, partition, next offset) and forgets their source
    /// positions, in one transaction: `sluice replay`.
    fn move_offsets(
        &self,
        sink: &str,
        moves: &[(String, i32, i64)],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// A writer for worker `id` of `sink`, with its own connection (opened when first used).
    fn writer(&self, sink: &str, tables: Vec<Self::Table>, id: usize) -> Self::Writer;
}

/// One apply worker's connection to the target.
pub trait TargetWriter: Send + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether retrying can help (a lost connection) or not (a missing table, a refused
    /// login): a definite error stops the sink with its explanation.
    fn class(e: &Self::Error) -> ErrorClass;

    /// Writes a batch in one transaction (see the module's contract).
    fn apply(
        &mut self,
        batch: &ApplyBatch,
    ) -> impl Future<Output = Result<ApplyOutcome, Self::Error>> + Send;
    fn load_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> impl Future<Output = Result<StoredOffsets, Self::Error>> + Send;
    /// A truncate reached `progress.partition` of its topic.
    fn truncate_barrier(
        &mut self,
        truncate: &TruncateAt<'_>,
        progress: &PartitionProgress,
    ) -> impl Future<Output = Result<BarrierOutcome, Self::Error>> + Send;
    /// Forgets the connection (after an error that may have broken it).
    fn reset(&mut self);
}
