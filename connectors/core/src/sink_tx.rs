//! What every SQL target does the same way inside its transactions: apply a batch with its
//! dead letters and its conditional progress, retry a refused batch event by event under
//! savepoints, and pass a truncate only once every partition of its topic has reached it. A
//! target supplies its statements ([`Statements`]) and its client calls ([`SinkTx`]); the
//! order, the outcomes and the log lines are here.

use std::future::Future;
use std::sync::Arc;

use crate::apply::{
    fold, foreign_key_ranks, order_for_foreign_keys, ApplyBatch, ApplyOutcome, BarrierOutcome,
    DeadLetter, FoldedTable, PartitionProgress, TableShape,
};
use crate::target::{references_by_index, DescribedTable, StoredOffsets, TargetWriter, TruncateAt};
use crate::ErrorClass;

/// A migration of Sluice's own tables in a target: version, file name, SQL.
pub type Migration = (i32, &'static str, &'static str);

/// The migrations of `all` whose version is not in `done`, in order.
pub fn pending<'a>(all: &'a [Migration], done: &[i32]) -> impl Iterator<Item = &'a Migration> {
    let done = done.to_vec();
    all.iter().filter(move |(v, _, _)| !done.contains(v))
}

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i32),
    BigInt(i64),
}

/// A target's statements for the shared transaction body, in its SQL dialect. Each takes the
/// parameters its doc names, in that order.
pub struct Statements {
    /// The dead-letter table, for log lines.
    pub dead_letter_table: &'static str,
    /// Inserts a dead letter: sink, topic, partition, offset, key, value, error, sqlstate.
    pub dead_letter: &'static str,
    /// Serialises the partitions of a topic on a barrier (sink, topic), when
    /// [`Self::barrier_done`] does not lock by itself.
    pub barrier_lock: Option<&'static str>,
    /// Counts the barrier's done rows (sink, topic, position): 1 once its truncate ran.
    pub barrier_done: &'static str,
    /// Records a partition's arrival, once (sink, topic, position, partition).
    pub barrier_arrive: &'static str,
    /// Counts the partitions arrived (sink, topic, position).
    pub barrier_arrived: &'static str,
    /// Marks the truncate done (sink, topic, position).
    pub barrier_mark_done: &'static str,
    /// Forgets the arrivals (sink, topic, position).
    pub barrier_forget: &'static str,
}

/// What the shared body needs to know about a SQL target's errors.
pub trait SqlError: std::error::Error + Send + Sync + 'static {
    /// The target refuses this data for good (a constraint, a value out of range).
    fn is_data_error(&self) -> bool;
    /// A foreign key refused the row (its parent is not there yet, or still has children).
    fn is_foreign_key_error(&self) -> bool;
    /// The target's own message (without Sluice's context) and its SQLSTATE, for a dead letter.
    fn refusal(&self) -> (String, Option<String>);
    /// Whether retrying a write can help (see [`TargetWriter::class`]).
    fn apply_class(&self) -> ErrorClass;
}

/// One open target transaction. Dropping it without [`Self::finish`] rolls it back.
///
/// Contract: [`Self::progress`] writes a partition's next offset only if the stored one is
/// still [`PartitionProgress::expected`], and returns the partitions where it was not (another
/// consumer moved them): the body then rolls everything back, so rows and offsets never part.
/// [`Self::run`] runs a statement of [`Self::STATEMENTS`] (or a savepoint command, without
/// parameters) inside the transaction.
pub trait SinkTx: Send {
    type Error: SqlError;

    const STATEMENTS: &'static Statements;

    /// Runs a statement; returns the first column of its first row when it returns a row
    /// whose first column is a bigint (the counts), else `None`.
    fn run(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> impl Future<Output = Result<Option<i64>, Self::Error>> + Send;
    /// Writes folded changes (deletes, upserts, updates) of one or more target tables.
    fn write(
        &mut self,
        folded: &[FoldedTable],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn progress(
        &mut self,
        progress: &[PartitionProgress],
    ) -> impl Future<Output = Result<Vec<(Arc<str>, i32)>, Self::Error>> + Send;
    /// Empties the tables a truncate names (and whatever the target keeps about their rows).
    fn empty_tables(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Commits, or rolls back.
    fn finish(&mut self, commit: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A sink as the shared body sees it: its name, and how it folds batches (each target
/// table's shape, and the tables' foreign-key ranks when some reference others, see
/// [`crate::apply::foreign_key_ranks`]).
#[derive(Debug, Clone)]
pub struct FoldPlan {
    sink: Arc<str>,
    shapes: Vec<TableShape>,
    ranks: Option<Vec<usize>>,
}

impl FoldPlan {
    pub fn new<T: DescribedTable>(sink: &str, tables: &[T]) -> FoldPlan {
        FoldPlan {
            sink: sink.into(),
            shapes: tables.iter().map(DescribedTable::fold_shape).collect(),
            ranks: foreign_key_ranks(&references_by_index(tables)),
        }
    }

    /// Whether some of the sink's target tables reference others by foreign keys.
    pub fn has_foreign_keys(&self) -> bool {
        self.ranks.is_some()
    }

    /// The folded changes of `batch` for [`apply_batch`]: one group for the whole batch or,
    /// with `one_by_one`, one per event; each in the order the target's foreign keys need.
    pub fn groups(&self, batch: &ApplyBatch, one_by_one: bool) -> Vec<Vec<FoldedTable>> {
        let ordered = |folded: Vec<FoldedTable>| match &self.ranks {
            Some(r) => order_for_foreign_keys(folded, &self.shapes, r),
            None => folded,
        };
        if one_by_one {
            batch
                .events
                .iter()
                .map(|e| ordered(fold(std::slice::from_ref(e), &self.shapes)))
                .collect()
        } else {
            vec![ordered(fold(&batch.events, &self.shapes))]
        }
    }
}

/// A SQL target's writer, as the shared body drives it. Every `SqlWriter` is a
/// [`TargetWriter`]: a refused batch is applied again event by event, and a truncate goes
/// through [`truncate_barrier`].
pub trait SqlWriter: Send + 'static {
    type Error: SqlError;
    /// An open transaction, borrowing the writer's connection.
    type Tx<'a>: SinkTx<Error = Self::Error>
    where
        Self: 'a;

    /// Whether the connection is dropped after the target refused a batch, before the
    /// batch is applied again event by event.
    const RECONNECT_AFTER_REFUSAL: bool;

    fn plan(&self) -> &FoldPlan;
    /// Connects when needed and gets ready to write `groups` (e.g. prepares statements).
    fn prepare(
        &mut self,
        groups: &[Vec<FoldedTable>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Opens a transaction, connecting first when needed; with `truncate`, one that may
    /// empty the truncate's tables.
    fn begin<'s>(
        &'s mut self,
        context: &'static str,
        truncate: Option<&TruncateAt<'_>>,
    ) -> impl Future<Output = Result<Self::Tx<'s>, Self::Error>> + Send;
    /// Stored offsets of `partitions`, over this writer's connection.
    fn stored_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> impl Future<Output = Result<StoredOffsets, Self::Error>> + Send;
    /// Drops the connection (after an error that may have broken it).
    fn disconnect(&mut self);
}

async fn apply_once<W: SqlWriter>(
    w: &mut W,
    batch: &ApplyBatch,
    one_by_one: bool,
) -> Result<ApplyOutcome, W::Error> {
    let sink = w.plan().sink.clone();
    let groups = w.plan().groups(batch, one_by_one);
    w.prepare(&groups).await?;
    let mut tx = w.begin("beginning a target transaction", None).await?;
    apply_batch(&mut tx, &sink, batch, &groups, one_by_one).await
}

impl<W: SqlWriter> TargetWriter for W {
    type Error = W::Error;

    fn class(e: &W::Error) -> ErrorClass {
        e.apply_class()
    }

    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyOutcome, W::Error> {
        match apply_once(self, batch, false).await {
            Err(e) if e.is_data_error() => {
                tracing::debug!(error = %e, "batch refused; applying it event by event");
                if W::RECONNECT_AFTER_REFUSAL {
                    self.disconnect();
                }
                apply_once(self, batch, true).await
            }
            other => other,
        }
    }

    async fn load_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<StoredOffsets, W::Error> {
        self.stored_offsets(partitions).await
    }

    async fn truncate_barrier(
        &mut self,
        truncate: &TruncateAt<'_>,
        progress: &PartitionProgress,
    ) -> Result<BarrierOutcome, W::Error> {
        let sink = self.plan().sink.clone();
        let mut tx = self
            .begin("recording a truncate barrier", Some(truncate))
            .await?;
        let at = [
            Param::Text(&sink),
            Param::Text(truncate.topic),
            Param::Text(truncate.position),
        ];
        truncate_barrier(&mut tx, at, truncate.partition_count, progress).await
    }

    fn reset(&mut self) {
        self.disconnect();
    }
}

/// Applies `batch` in `tx`: `groups` holds its folded changes, one group for the whole batch
/// or, with `one_by_one` (a retry after the target refused the batch), one per event, each
/// written under a savepoint so that a refused event becomes a dead letter and the others
/// commit. A foreign-key refusal of an event whose partition may wait ([`ApplyBatch::holds`])
/// commits nothing and returns [`ApplyOutcome::Held`].
async fn apply_batch<T: SinkTx>(
    tx: &mut T,
    sink: &str,
    batch: &ApplyBatch,
    groups: &[Vec<FoldedTable>],
    one_by_one: bool,
) -> Result<ApplyOutcome, T::Error> {
    let mut dead: Vec<DeadLetter> = batch.dead_letters.clone();
    if one_by_one {
        for (event, folded) in batch.events.iter().zip(groups) {
            tx.run("savepoint sluice_event", &[], "creating a savepoint")
                .await?;
            match tx.write(folded).await {
                Ok(()) => {
                    tx.run(
                        "release savepoint sluice_event",
                        &[],
                        "releasing a savepoint",
                    )
                    .await?;
                }
                Err(e) if e.is_foreign_key_error() && batch.holds(event) => {
                    // The parent row may still be on its way (another topic). Nothing
                    // commits; the caller holds this partition.
                    tx.finish(false).await?;
                    return Ok(ApplyOutcome::Held(event.record.clone()));
                }
                Err(e) if e.is_data_error() => {
                    tx.run(
                        "rollback to savepoint sluice_event",
                        &[],
                        "rolling back a savepoint",
                    )
                    .await?;
                    let (message, sqlstate) = e.refusal();
                    dead.push(DeadLetter {
                        record: event.record.clone(),
                        key: event.key.clone(),
                        value: event.value.clone(),
                        error: format!("target refused the row: {message}"),
                        sqlstate,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    } else {
        for folded in groups {
            tx.write(folded).await?;
        }
    }
    let dead_lettered = dead.len() - batch.dead_letters.len();
    write_dead_letters(tx, sink, &dead).await?;
    let fenced = tx.progress(&batch.progress).await?;
    if !fenced.is_empty() {
        tx.finish(false).await?;
        return Ok(ApplyOutcome::Fenced(fenced));
    }
    tx.finish(true).await?;
    Ok(ApplyOutcome::Committed { dead_lettered })
}

/// Records dead letters in the target's table, and logs where and why in general terms: the
/// target's message can quote the row ("Failing row contains …"), so it goes only to the table.
async fn write_dead_letters<T: SinkTx>(
    tx: &mut T,
    sink: &str,
    dead: &[DeadLetter],
) -> Result<(), T::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let st = T::STATEMENTS;
    for d in dead {
        let reason = match &d.sqlstate {
            Some(code) => format!("refused by the target, SQLSTATE {code}"),
            None => d.error.clone(),
        };
        tracing::warn!(
            sink = %sink,
            topic = %d.record.topic,
            partition = d.record.partition,
            offset = d.record.offset,
            reason = %reason,
            "event refused: recorded in {} with the full error",
            st.dead_letter_table
        );
        let (key, value) = d.texts();
        let params = [
            Param::Text(sink),
            Param::Text(&d.record.topic),
            Param::Int(d.record.partition),
            Param::BigInt(d.record.offset),
            Param::OptText(key.as_deref()),
            Param::OptText(value.as_deref()),
            Param::Text(&d.error),
            Param::OptText(d.sqlstate.as_deref()),
        ];
        tx.run(st.dead_letter, &params, "writing a dead letter")
            .await?;
    }
    Ok(())
}

/// A truncate is published to every partition of its topic; the target tables are emptied
/// once, when the last partition reaches it, so that no partition's earlier rows land after
/// the truncate and no later ones before it. Each partition moves past the barrier with its
/// progress (conditional, as in [`apply_batch`]).
///
/// `at` is the barrier: sink, topic and the truncate's source position.
async fn truncate_barrier<T: SinkTx>(
    tx: &mut T,
    at: [Param<'_>; 3],
    partition_count: i32,
    progress: &PartitionProgress,
) -> Result<BarrierOutcome, T::Error> {
    const CTX: &str = "recording a truncate barrier";
    let st = T::STATEMENTS;
    if let Some(lock) = st.barrier_lock {
        tx.run(lock, &at[..2], CTX).await?;
    }
    if tx.run(st.barrier_done, &at, CTX).await?.unwrap_or(0) == 0 {
        let arrival = [at[0], at[1], at[2], Param::Int(progress.partition)];
        tx.run(st.barrier_arrive, &arrival, CTX).await?;
        let arrived = tx.run(st.barrier_arrived, &at, CTX).await?.unwrap_or(0);
        if arrived < i64::from(partition_count) {
            tx.finish(true).await?;
            return Ok(BarrierOutcome::Waiting);
        }
        tx.empty_tables().await?;
        tx.run(st.barrier_mark_done, &at, CTX).await?;
        tx.run(st.barrier_forget, &at, CTX).await?;
    }
    let fenced = tx.progress(std::slice::from_ref(progress)).await?;
    if !fenced.is_empty() {
        tx.finish(false).await?;
        return Ok(BarrierOutcome::Fenced);
    }
    tx.finish(true).await?;
    Ok(BarrierOutcome::Passed)
}
