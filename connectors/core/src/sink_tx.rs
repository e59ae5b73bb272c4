//! What every SQL target does the same way inside its transactions: apply a batch with its
//! dead letters and its conditional progress, retry a refused batch event by event under
//! savepoints, and pass a truncate only once every partition of its topic has reached it. A
//! target supplies its statements ([`Statements`]) and its client calls ([`SinkTx`]); the
//! order, the outcomes and the log lines are here.

use std::future::Future;
use std::sync::Arc;

use crate::apply::{
    fold, foreign_key_ranks, order_for_foreign_keys, ApplyBatch, ApplyOutcome, BarrierOutcome,
    DeadLetter, FoldedTable, PartitionProgress, TableShape, TargetChange,
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
    OptBigInt(Option<i64>),
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
    /// Adds a batch's counts to a target table's status row (sink, worker, table, upserts,
    /// updates, deletes, dead letters, state, last error or null, last position as JSON text
    /// or null, last source commit in ms or null).
    pub table_status: &'static str,
    /// Adds a batch to the sink's history row of the current minute (sink, worker, events,
    /// dead letters, the oldest source commit of its events in ms or null).
    pub history: &'static str,
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
    status: StatusRows,
    shapes: Vec<TableShape>,
    ranks: Option<Vec<usize>>,
}

/// Whose rows a writer's batches add to in the status tables: cheap to clone, as every batch
/// takes it into its transaction.
#[derive(Debug, Clone)]
struct StatusRows {
    sink: Arc<str>,
    /// The apply worker this writer belongs to.
    worker: i32,
    /// The target tables' names, by index.
    names: Arc<[String]>,
}

impl FoldPlan {
    pub fn new<T: DescribedTable>(sink: &str, worker: usize, tables: &[T]) -> FoldPlan {
        let sink: Arc<str> = sink.into();
        FoldPlan {
            sink: sink.clone(),
            status: StatusRows {
                sink,
                worker: worker as i32,
                names: tables.iter().map(|t| t.id().to_string()).collect(),
            },
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
    let status = w.plan().status.clone();
    let groups = w.plan().groups(batch, one_by_one);
    w.prepare(&groups).await?;
    let mut tx = w.begin("beginning a target transaction", None).await?;
    apply_batch(&mut tx, &status, batch, &groups, one_by_one).await
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
    plan: &StatusRows,
    batch: &ApplyBatch,
    groups: &[Vec<FoldedTable>],
    one_by_one: bool,
) -> Result<ApplyOutcome, T::Error> {
    let sink = &*plan.sink;
    let mut dead: Vec<DeadLetter> = batch.dead_letters.clone();
    // Events the target refused (indexes into batch.events), and why.
    let mut refused: Vec<(usize, String)> = Vec::new();
    if one_by_one {
        for (i, (event, folded)) in batch.events.iter().zip(groups).enumerate() {
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
                    refused.push((i, format!("target refused the row: {message}")));
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
    write_status(tx, plan, batch, &refused, dead.len()).await?;
    let fenced = tx.progress(&batch.progress).await?;
    if !fenced.is_empty() {
        tx.finish(false).await?;
        return Ok(ApplyOutcome::Fenced(fenced));
    }
    tx.finish(true).await?;
    Ok(ApplyOutcome::Committed { dead_lettered })
}

/// A target table's counts in one batch.
#[derive(Default)]
struct TableCounts<'b> {
    upserts: i64,
    updates: i64,
    deletes: i64,
    dead_letters: i64,
    last_error: Option<&'b str>,
    /// The last event applied to it (index into the batch's events).
    last: Option<usize>,
    commit_ms: Option<i64>,
}

/// Adds the batch to the status tables, in its transaction: per target table its counts, last
/// position and source commit; per sink and minute its events, dead letters and largest lag.
async fn write_status<T: SinkTx>(
    tx: &mut T,
    plan: &StatusRows,
    batch: &ApplyBatch,
    refused: &[(usize, String)],
    dead_letters: usize,
) -> Result<(), T::Error> {
    if batch.events.is_empty() && dead_letters == 0 {
        return Ok(());
    }
    let st = T::STATEMENTS;
    let mut tables: std::collections::BTreeMap<usize, TableCounts<'_>> = Default::default();
    let (mut events, mut oldest) = (0i64, i64::MAX);
    for (i, e) in batch.events.iter().enumerate() {
        let refusal = refused
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, why)| why.as_str());
        if refusal.is_none() {
            events += 1;
            if let Some(ms) = e.commit_ms {
                oldest = oldest.min(ms);
            }
        }
        for change in &e.changes {
            let table = match change {
                TargetChange::Upsert { table, .. }
                | TargetChange::Update { table, .. }
                | TargetChange::Delete { table, .. } => *table,
            };
            let c = tables.entry(table).or_default();
            if let Some(why) = refusal {
                c.dead_letters += 1;
                c.last_error = Some(why);
                continue;
            }
            match change {
                TargetChange::Upsert { .. } => c.upserts += 1,
                TargetChange::Update { .. } => c.updates += 1,
                TargetChange::Delete { .. } => c.deletes += 1,
            }
            c.last = Some(i);
            c.commit_ms = c.commit_ms.max(e.commit_ms);
        }
    }
    for (table, c) in &tables {
        let Some(name) = plan.names.get(*table) else {
            continue;
        };
        let position = c.last.and_then(|i| {
            let r = &batch.events[i].record;
            batch
                .progress
                .iter()
                .find(|p| p.topic == r.topic && p.partition == r.partition)
                .and_then(|p| p.position.as_deref())
        });
        let state = if c.last_error.is_some() {
            "refusing"
        } else {
            "ok"
        };
        let params = [
            Param::Text(&plan.sink),
            Param::Int(plan.worker),
            Param::Text(name),
            Param::BigInt(c.upserts),
            Param::BigInt(c.updates),
            Param::BigInt(c.deletes),
            Param::BigInt(c.dead_letters),
            Param::Text(state),
            Param::OptText(c.last_error),
            Param::OptText(position),
            Param::OptBigInt(c.commit_ms),
        ];
        tx.run(
            st.table_status,
            &params,
            "recording a target table's status",
        )
        .await?;
    }
    let params = [
        Param::Text(&plan.sink),
        Param::Int(plan.worker),
        Param::BigInt(events),
        Param::BigInt(dead_letters as i64),
        Param::OptBigInt((oldest != i64::MAX).then_some(oldest)),
    ];
    tx.run(st.history, &params, "recording the sync history")
        .await?;
    Ok(())
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
