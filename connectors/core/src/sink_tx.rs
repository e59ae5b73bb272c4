//! What every SQL target does the same way inside its transactions: apply a batch with its
//! dead letters and its conditional progress, retry a refused batch event by event under
//! savepoints, and pass a truncate only once every partition of its topic has reached it. A
//! target supplies its statements ([`Statements`]) and its client calls ([`SinkTx`]); the
//! order, the outcomes and the log lines are here.

use std::future::Future;
use std::sync::Arc;

use crate::apply::{
    fold, order_for_foreign_keys, ApplyBatch, ApplyOutcome, BarrierOutcome, DeadLetter,
    FoldedTable, MappedEvent, PartitionProgress, TableShape,
};

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

/// One open target transaction. Dropping it without [`Self::finish`] rolls it back.
///
/// Contract: [`Self::progress`] writes a partition's next offset only if the stored one is
/// still [`PartitionProgress::expected`], and returns the partitions where it was not (another
/// consumer moved them): the body then rolls everything back, so rows and offsets never part.
/// [`Self::execute`] and [`Self::query_count`] run a statement of [`Self::STATEMENTS`] (or a
/// savepoint command, without parameters) inside the transaction.
pub trait SinkTx: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    const STATEMENTS: &'static Statements;

    fn sink(&self) -> &str;
    fn execute(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// A statement returning one row with one bigint.
    fn query_count(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> impl Future<Output = Result<i64, Self::Error>> + Send;
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

    /// The target refuses this data for good (a constraint, a value out of range).
    fn is_data_error(e: &Self::Error) -> bool;
    /// A foreign key refused the row (its parent is not there yet, or still has children).
    fn is_foreign_key_error(e: &Self::Error) -> bool;
    /// The dead letter of `event`, refused with `e` (the target's message and SQLSTATE).
    fn dead_letter(event: &MappedEvent, e: &Self::Error) -> DeadLetter;
}

/// The folded changes of `batch` for [`apply_batch`]: one group for the whole batch or, with
/// `one_by_one`, one per event; each in the order the target's foreign keys need when some
/// tables are linked (`ranks`, see [`crate::apply::foreign_key_ranks`]).
pub fn fold_groups(
    batch: &ApplyBatch,
    shapes: &[TableShape],
    ranks: Option<&[usize]>,
    one_by_one: bool,
) -> Vec<Vec<FoldedTable>> {
    let ordered = |folded: Vec<FoldedTable>| match ranks {
        Some(r) => order_for_foreign_keys(folded, shapes, r),
        None => folded,
    };
    if one_by_one {
        batch
            .events
            .iter()
            .map(|e| ordered(fold(std::slice::from_ref(e), shapes)))
            .collect()
    } else {
        vec![ordered(fold(&batch.events, shapes))]
    }
}

/// Applies `batch` in `tx`: `groups` holds its folded changes, one group for the whole batch
/// or, with `one_by_one` (a retry after the target refused the batch), one per event, each
/// written under a savepoint so that a refused event becomes a dead letter and the others
/// commit. A foreign-key refusal of an event whose partition may wait ([`ApplyBatch::holds`])
/// commits nothing and returns [`ApplyOutcome::Held`].
pub async fn apply_batch<T: SinkTx>(
    tx: &mut T,
    batch: &ApplyBatch,
    groups: &[Vec<FoldedTable>],
    one_by_one: bool,
) -> Result<ApplyOutcome, T::Error> {
    let mut dead: Vec<DeadLetter> = batch.dead_letters.clone();
    if one_by_one {
        for (event, folded) in batch.events.iter().zip(groups) {
            tx.execute("savepoint sluice_event", &[], "creating a savepoint")
                .await?;
            match tx.write(folded).await {
                Ok(()) => {
                    tx.execute(
                        "release savepoint sluice_event",
                        &[],
                        "releasing a savepoint",
                    )
                    .await?
                }
                Err(e) if T::is_foreign_key_error(&e) && batch.holds(event) => {
                    // The parent row may still be on its way (another topic). Nothing
                    // commits; the caller holds this partition.
                    tx.finish(false).await?;
                    return Ok(ApplyOutcome::Held(event.record.clone()));
                }
                Err(e) if T::is_data_error(&e) => {
                    tx.execute(
                        "rollback to savepoint sluice_event",
                        &[],
                        "rolling back a savepoint",
                    )
                    .await?;
                    dead.push(T::dead_letter(event, &e));
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
    write_dead_letters(tx, &dead).await?;
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
async fn write_dead_letters<T: SinkTx>(tx: &mut T, dead: &[DeadLetter]) -> Result<(), T::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let st = T::STATEMENTS;
    let sink = tx.sink().to_owned();
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
            Param::Text(&sink),
            Param::Text(&d.record.topic),
            Param::Int(d.record.partition),
            Param::BigInt(d.record.offset),
            Param::OptText(key.as_deref()),
            Param::OptText(value.as_deref()),
            Param::Text(&d.error),
            Param::OptText(d.sqlstate.as_deref()),
        ];
        tx.execute(st.dead_letter, &params, "writing a dead letter")
            .await?;
    }
    Ok(())
}

/// A truncate is published to every partition of its topic; the target tables are emptied
/// once, when the last partition reaches it, so that no partition's earlier rows land after
/// the truncate and no later ones before it. Each partition moves past the barrier with its
/// progress (conditional, as in [`apply_batch`]).
pub async fn truncate_barrier<T: SinkTx>(
    tx: &mut T,
    topic: &str,
    position: &str,
    partition_count: i32,
    progress: &PartitionProgress,
) -> Result<BarrierOutcome, T::Error> {
    const CTX: &str = "recording a truncate barrier";
    let st = T::STATEMENTS;
    let sink = tx.sink().to_owned();
    let at = [
        Param::Text(&sink),
        Param::Text(topic),
        Param::Text(position),
    ];
    if let Some(lock) = st.barrier_lock {
        tx.execute(lock, &at[..2], CTX).await?;
    }
    if tx.query_count(st.barrier_done, &at, CTX).await? == 0 {
        let arrival = [at[0], at[1], at[2], Param::Int(progress.partition)];
        tx.execute(st.barrier_arrive, &arrival, CTX).await?;
        let arrived = tx.query_count(st.barrier_arrived, &at, CTX).await?;
        if arrived < i64::from(partition_count) {
            tx.finish(true).await?;
            return Ok(BarrierOutcome::Waiting);
        }
        tx.empty_tables().await?;
        tx.execute(st.barrier_mark_done, &at, CTX).await?;
        tx.execute(st.barrier_forget, &at, CTX).await?;
    }
    let fenced = tx.progress(std::slice::from_ref(progress)).await?;
    if !fenced.is_empty() {
        tx.finish(false).await?;
        return Ok(BarrierOutcome::Fenced);
    }
    tx.finish(true).await?;
    Ok(BarrierOutcome::Passed)
}
