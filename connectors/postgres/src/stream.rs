//! The replication stream: one session of `START_REPLICATION`, decoded into batches.
//!
//! Over 700 lines: one replication session, whose decoding, TOAST read-back and batching share its state.
//!
//! The session runs on a `current_thread` runtime on a thread of its own (on the multi-thread
//! runtime the same client used 2–3x the CPU). It hands batches to the capture pipeline through a
//! bounded channel and learns through a `watch` channel which position the pipeline made durable;
//! only that position is ever reported to the server as flushed.
//!
//! # Acknowledgement
//!
//! * A batch closes with a checkpoint only at a commit: the checkpoint is the commit's end LSN,
//!   from which a new session resumes *after* that transaction.
//! * When nothing is in flight (no open transaction, no pending batch, and the pipeline has made
//!   durable everything we sent), a keepalive's `wal_end` is acknowledged too. WAL beyond it holds
//!   nothing for us, and without this an idle database retains WAL forever and a fast shutdown of
//!   Postgres waits on us.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sluice_core::event::{format_lsn, parse_lsn};
use sluice_core::{
    Batch, ChangeEvent, Op, Position, Row, SourceCheckpoint, SourceInfo, TableSchema, Value,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::{quote_ident, quote_literal, quote_table};
use crate::error::PostgresError;
use crate::pgoutput::{self, Datum, Message, OldTuple, Tuple};
use crate::snapshot::now_us;
use crate::table::CapturedTable;
use crate::types::{decode_text, TypeKind, TypeMap};
use sluice_core::backfill::Tracker;
use sluice_core::batch::batch_due;
use sluice_core::source::spawn_session_thread;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What the session does before it streams.
pub enum StartPlan {
    /// Resume an existing slot; the server skips transactions committed before `lsn`.
    Resume { lsn: u64 },
    /// Create the slot first. With `export`, the snapshot name and consistent point are sent on
    /// `created`, and streaming waits for `go` (the snapshot is read in between).
    CreateSlot {
        export: bool,
        created: oneshot::Sender<(u64, Option<String>)>,
        go: oneshot::Receiver<()>,
    },
}

pub struct StreamContext {
    pub source_name: Arc<str>,
    pub slot: String,
    /// Captured tables by `schema.table`.
    pub tables: HashMap<sluice_core::TableId, Arc<CapturedTable>>,
    pub types: Arc<TypeMap>,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub out: mpsc::Sender<Batch>,
    pub durable: watch::Receiver<Option<SourceCheckpoint>>,
    pub stop: watch::Receiver<bool>,
    /// Backfills: changed keys noted, chunks published at their markers.
    pub backfill: Tracker,
    /// The source database, for reading the large values an update left out (see
    /// [`UnchangedFill`]).
    pub connection: crate::config::PostgresConnection,
}

/// Runs one replication session to its end on a dedicated thread.
pub fn spawn_session(
    target: String,
    cfg: ReplicationConfig,
    plan: StartPlan,
    ctx: StreamContext,
) -> std::thread::JoinHandle<Result<(), PostgresError>> {
    let name = format!("pg-stream-{}", ctx.source_name);
    spawn_session_thread(name, PostgresError::Setup, move || {
        run_session(target, cfg, plan, ctx)
    })
}

async fn run_session(
    target: String,
    cfg: ReplicationConfig,
    plan: StartPlan,
    ctx: StreamContext,
) -> Result<(), PostgresError> {
    let repl_err = |source| PostgresError::Replication {
        target: target.clone(),
        source,
    };
    let mut client = ReplicationClient::connect_gated(cfg)
        .await
        .map_err(repl_err)?;
    let start_lsn = match plan {
        StartPlan::Resume { lsn } => lsn,
        StartPlan::CreateSlot {
            export,
            created,
            go,
        } => {
            let sql = format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{}')",
                ctx.slot,
                if export { "export" } else { "nothing" }
            );
            let rows = client.simple_query(&sql).await.map_err(repl_err)?;
            let row = rows.into_iter().next().unwrap_or_default();
            let text = |i: usize| {
                row.get(i)
                    .and_then(|v| v.as_ref())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let point = text(1).and_then(|t| parse_lsn(&t)).ok_or_else(|| {
                PostgresError::Setup("CREATE_REPLICATION_SLOT returned no consistent point".into())
            })?;
            tracing::info!(slot = %ctx.slot, consistent_point = %format_lsn(point), "replication slot created");
            let _ = created.send((point, text(2)));
            if export && go.await.is_err() {
                // The snapshot failed; its error is reported by the caller.
                return Err(PostgresError::Closed);
            }
            point
        }
    };
    client.start().await.map_err(repl_err)?;
    client.wait_started().await.map_err(repl_err)?;
    tracing::info!(slot = %ctx.slot, from = %format_lsn(start_lsn), "replication stream started");

    let mut session = Session::new(ctx, start_lsn);
    let result = session.stream(&mut client, &target).await;
    client.stop();
    result
}

struct RelationState {
    table: Arc<TableSchema>,
    kinds: Vec<TypeKind>,
}

/// Large (TOASTed) values an update left out because it did not change them.
///
/// Under `REPLICA IDENTITY DEFAULT` Postgres sends neither the unchanged value nor an old row
/// to take it from. An event without it is only safe for a sink that already holds the row's
/// earlier version: one that applies it to a fresh row (a key change, published as a delete
/// of the old key and an insert of the new; or an update whose insert a compacted topic no
/// longer holds) would have
/// nothing to keep. So the values are read from the table by the new key before the batch goes
/// out (under `REPLICA IDENTITY FULL` the old row supplies them and nothing is read). The row
/// read is the current one, which is the change's row or a later version of it; any later
/// change to those columns is itself published after this one, so the target converges on the
/// source. A row deleted (or keyed anew) since leaves the values absent, and the later delete
/// removes the row anyway.
struct UnchangedFill {
    /// Index of the event (an update, or the insert of a key change) in the batch.
    event: usize,
    table: Arc<TableSchema>,
    /// The new key's columns and their text, as the server sent them.
    key: Vec<(usize, String)>,
    /// The absent columns and how to decode them.
    columns: Vec<(usize, TypeKind)>,
}

struct Session {
    ctx: StreamContext,
    /// relation id → decoded relation; `None` for relations we do not capture.
    relations: HashMap<u32, Option<RelationState>>,
    /// The open transaction: (commit LSN, xid, commit time µs since Unix epoch).
    txn: Option<(u64, u32, i64)>,
    seq: u64,
    batch: Vec<ChangeEvent>,
    pending_checkpoint: Option<u64>,
    pending_since: Option<Instant>,
    /// End LSN of the last commit handed to the pipeline.
    last_sent: u64,
    /// Events of the batch still missing large values (see [`UnchangedFill`]).
    fills: Vec<UnchangedFill>,
    /// The connection that reads them, opened on first use.
    lookup: Option<tokio_postgres::Client>,
}

impl Session {
    fn new(ctx: StreamContext, start_lsn: u64) -> Self {
        let max_batch = ctx.max_batch;
        Session {
            ctx,
            relations: HashMap::new(),
            txn: None,
            seq: 0,
            batch: Vec::with_capacity(max_batch),
            pending_checkpoint: None,
            pending_since: None,
            last_sent: start_lsn,
            fills: Vec::new(),
            lookup: None,
        }
    }

    fn durable_lsn(&self) -> Option<u64> {
        self.ctx
            .durable
            .borrow()
            .as_ref()
            .and_then(|c| parse_lsn(&c.position))
    }

    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        target: &str,
    ) -> Result<(), PostgresError> {
        let mut stop = self.ctx.stop.clone();
        let mut durable = self.ctx.durable.clone();
        if let Some(lsn) = self.durable_lsn() {
            client.update_applied_lsn(Lsn(lsn));
        }
        loop {
            let deadline = self.pending_since.map(|t| t + self.ctx.max_delay);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return self.flush().await,
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Err(PostgresError::Closed);
                    }
                    if let Some(lsn) = self.durable_lsn() {
                        client.update_applied_lsn(Lsn(lsn));
                    }
                }
                ev = client.recv() => {
                    let mut next = Some(ev);
                    let mut drained = 0;
                    // Take what is already buffered without going through the select again:
                    // per-event select and timer bookkeeping showed up in capture profiles.
                    while let Some(ev) = next.take() {
                        match ev {
                            Ok(Some(ev)) => self.handle(ev, client).await?,
                            Ok(None) => return Ok(()),
                            Err(source) => return Err(PostgresError::Replication { target: target.to_owned(), source }),
                        }
                        drained += 1;
                        if drained < 512 {
                            next = client.recv().now_or_never();
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.flush().await?,
            }
        }
    }

    async fn handle(
        &mut self,
        ev: ReplicationEvent,
        client: &ReplicationClient,
    ) -> Result<(), PostgresError> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.txn = Some((final_lsn.0, xid, commit_time_micros + PG_EPOCH_OFFSET_US));
                self.seq = 0;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.txn = None;
                self.pending_checkpoint = Some(end_lsn.0);
                let limits = (self.ctx.max_batch, self.ctx.max_delay);
                if batch_due(self.batch.len(), &mut self.pending_since, limits) {
                    self.flush().await?;
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)?;
                self.message(msg)?;
                if self.batch.len() >= self.ctx.max_batch {
                    self.flush().await?;
                }
            }
            ReplicationEvent::Message {
                prefix, content, ..
            } => {
                if let Some(released) =
                    crate::backfill::message(&mut self.ctx.backfill, &prefix, &content)
                {
                    // A chunk joins the batch whole: grow it once, not by doubling.
                    self.batch.reserve(released.rows.len());
                    for row in released.rows {
                        let mut ev = self.event(released.table.clone(), Op::Read, None, Some(row));
                        ev.source.snapshot = true;
                        self.batch.push(ev);
                    }
                    if self.batch.len() >= self.ctx.max_batch {
                        self.flush().await?;
                    }
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let idle = self.txn.is_none()
                    && self.batch.is_empty()
                    && self.pending_checkpoint.is_none()
                    && self.durable_lsn().is_some_and(|d| d >= self.last_sent);
                if idle && wal_end.0 > self.last_sent {
                    client.update_applied_lsn(wal_end);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PostgresError> {
        if self.batch.is_empty() && self.pending_checkpoint.is_none() {
            self.pending_since = None;
            return Ok(());
        }
        self.fill_unchanged().await?;
        let events = std::mem::replace(&mut self.batch, Vec::with_capacity(self.ctx.max_batch));
        let checkpoint = self.pending_checkpoint.take().map(|lsn| {
            self.last_sent = lsn;
            SourceCheckpoint {
                connector: "postgres".into(),
                position: format_lsn(lsn),
                snapshot_done: true,
                slot: Some(self.ctx.slot.clone()),
                gtid: None,
                gtid_set: None,
                written_at_ms: now_us() / 1000,
                tables: Some(self.ctx.backfill.book.complete.clone()),
                backfills: self.ctx.backfill.book.state.clone(),
                abandoned: self.ctx.backfill.book.abandoned.clone(),
            }
        });
        self.pending_since = None;
        self.ctx
            .out
            .send(Batch { events, checkpoint })
            .await
            .map_err(|_| PostgresError::Closed)
    }

    /// Reads the values [`UnchangedFill`]s ask for into their events: one query per table and
    /// set of absent columns, up to [`FILL_KEYS_PER_QUERY`] keys each.
    async fn fill_unchanged(&mut self) -> Result<(), PostgresError> {
        if self.fills.is_empty() {
            return Ok(());
        }
        if self.lookup.as_ref().is_none_or(|c| c.is_closed()) {
            self.lookup = Some(
                crate::client::connect(&self.ctx.connection, "unchanged large value lookup")
                    .await?,
            );
        }
        let Some(lookup) = self.lookup.as_ref() else {
            return Ok(());
        };
        let mut fills = std::mem::take(&mut self.fills);
        fills.sort_by(|a, b| {
            (&a.table.id, a.column_indexes()).cmp(&(&b.table.id, b.column_indexes()))
        });
        let mut rest: &[UnchangedFill] = &fills;
        while let Some(first) = rest.first() {
            let same = rest
                .iter()
                .take(FILL_KEYS_PER_QUERY)
                .take_while(|f| {
                    f.table.id == first.table.id && f.column_indexes() == first.column_indexes()
                })
                .count();
            let (group, tail) = rest.split_at(same);
            rest = tail;
            let found = read_fill_group(lookup, group).await?;
            for (n, fill) in group.iter().enumerate() {
                let Some(values) = found.get(&n) else {
                    tracing::debug!(table = %fill.table.id, "row deleted or re-keyed since: its large values stay absent");
                    continue;
                };
                let Some(after) = self
                    .batch
                    .get_mut(fill.event)
                    .and_then(|e| e.after.as_mut())
                else {
                    continue;
                };
                for ((i, _), value) in fill.columns.iter().zip(values) {
                    if let Some(slot) = after.values.get_mut(*i) {
                        *slot = Some(value.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn message(&mut self, msg: Message<'_>) -> Result<(), PostgresError> {
        match msg {
            Message::Relation(rel) => {
                let id = sluice_core::TableId::new(rel.schema.clone(), rel.name.clone());
                let state = self.ctx.tables.get(&id).map(|captured| {
                    let columns: Arc<[Arc<str>]> = rel
                        .columns
                        .iter()
                        .map(|c| Arc::from(c.name.as_str()))
                        .collect();
                    // The key is the table's primary key (or identity index) by name; if DDL
                    // removed one of its columns, fall back to the relation's key flags.
                    let by_name: Option<Vec<usize>> = captured
                        .key_names
                        .iter()
                        .map(|k| rel.columns.iter().position(|c| &c.name == k))
                        .collect();
                    let key = by_name.unwrap_or_else(|| {
                        rel.columns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.key)
                            .map(|(i, _)| i)
                            .collect()
                    });
                    RelationState {
                        table: Arc::new(TableSchema::new(
                            captured.schema.source.clone(),
                            captured.schema.db.clone(),
                            id.clone(),
                            columns,
                            key,
                            captured.schema.topic.clone(),
                        )),
                        kinds: rel
                            .columns
                            .iter()
                            .map(|c| self.ctx.types.kind(c.type_oid))
                            .collect(),
                    }
                });
                self.relations.insert(rel.id, state);
            }
            Message::Insert { relation, new } => {
                if let Some(rel) = self.relation(relation)? {
                    let after = row(rel, &new, None, false)?;
                    let table = rel.table.clone();
                    if self.ctx.backfill.active() {
                        self.ctx.backfill.touched(&table, &after);
                    }
                    let ev = self.event(table, Op::Insert, None, Some(after));
                    self.batch.push(ev);
                }
            }
            Message::Update { relation, old, new } => {
                if let Some(rel) = self.relation(relation)? {
                    let (before, full_old) = match &old {
                        Some(OldTuple::Key(t)) => (Some(row(rel, t, None, true)?), None),
                        Some(OldTuple::Full(t)) => (Some(row(rel, t, None, false)?), Some(t)),
                        None => (None, None),
                    };
                    let after = row(rel, &new, full_old, false)?;
                    let key_changed = before
                        .as_ref()
                        .is_some_and(|b| rel.table.key_differs(b, &after));
                    let fill = unchanged_fill(rel, &new, &after);
                    let table = rel.table.clone();
                    if self.ctx.backfill.active() {
                        self.ctx.backfill.touched(&table, &after);
                        if let Some(b) = &before {
                            self.ctx.backfill.touched(&table, b);
                        }
                    }
                    if key_changed {
                        let del = self.event(table.clone(), Op::Delete, before, None);
                        self.batch.push(del);
                        if let Some(mut fill) = fill {
                            fill.event = self.batch.len();
                            self.fills.push(fill);
                        }
                        let ins = self.event(table, Op::Insert, None, Some(after));
                        self.batch.push(ins);
                    } else {
                        if let Some(mut fill) = fill {
                            fill.event = self.batch.len();
                            self.fills.push(fill);
                        }
                        let ev = self.event(table, Op::Update, before, Some(after));
                        self.batch.push(ev);
                    }
                }
            }
            Message::Delete { relation, old } => {
                if let Some(rel) = self.relation(relation)? {
                    let before = match &old {
                        OldTuple::Key(t) => row(rel, t, None, true)?,
                        OldTuple::Full(t) => row(rel, t, None, false)?,
                    };
                    let table = rel.table.clone();
                    if self.ctx.backfill.active() {
                        self.ctx.backfill.touched(&table, &before);
                    }
                    let ev = self.event(table, Op::Delete, Some(before), None);
                    self.batch.push(ev);
                }
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    if let Some(rel) = self.relation(relation)? {
                        let table = rel.table.clone();
                        self.ctx.backfill.truncated(&table.id);
                        let ev = self.event(table, Op::Truncate, None, None);
                        self.batch.push(ev);
                    }
                }
            }
            Message::Type { .. } | Message::Origin | Message::Other(_) => {}
        }
        Ok(())
    }

    fn relation(&self, id: u32) -> Result<Option<&RelationState>, PostgresError> {
        match self.relations.get(&id) {
            Some(state) => Ok(state.as_ref()),
            None => Err(PostgresError::Decode(pgoutput::DecodeError(format!(
                "change for relation {id} arrived before its Relation message"
            )))),
        }
    }

    fn event(
        &mut self,
        table: Arc<TableSchema>,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
    ) -> ChangeEvent {
        let (commit_lsn, xid, commit_time_us) = self.txn.unwrap_or((self.last_sent, 0, now_us()));
        let seq = self.seq;
        self.seq += 1;
        ChangeEvent {
            op,
            table,
            before,
            after,
            source: SourceInfo {
                connector: "postgres",
                position: Position::Postgres { commit_lsn, seq },
                tx_id: Some(u64::from(xid)),
                commit_time_us,
                snapshot: false,
                binlog: None,
            },
        }
    }
}

/// Keys read per lookup query (one `union all` branch, an index probe, each).
const FILL_KEYS_PER_QUERY: usize = 200;

impl UnchangedFill {
    fn column_indexes(&self) -> Vec<usize> {
        self.columns.iter().map(|(i, _)| *i).collect()
    }
}

/// Reads the current values of one group of fills (same table, same absent columns): one
/// statement whose branches each look up one key by its literal, so the server compares keys
/// in their own types. Returns the values by the fill's index in `group`; a key with no row is
/// missing from the map.
async fn read_fill_group(
    lookup: &tokio_postgres::Client,
    group: &[UnchangedFill],
) -> Result<HashMap<usize, Vec<Value>>, PostgresError> {
    let Some(first) = group.first() else {
        return Ok(HashMap::new());
    };
    let names = &first.table.columns;
    let name = |i: usize| quote_ident(names.get(i).map(|c| &**c).unwrap_or("?"));
    let columns = first
        .columns
        .iter()
        .map(|(i, _)| name(*i))
        .collect::<Vec<_>>()
        .join(", ");
    let table = quote_table(&first.table.id);
    let sql = group
        .iter()
        .enumerate()
        .map(|(n, fill)| {
            let filter = fill
                .key
                .iter()
                .map(|(i, text)| format!("{} = {}", name(*i), quote_literal(text)))
                .collect::<Vec<_>>()
                .join(" and ");
            format!("(select {n}, {columns} from {table} where {filter})")
        })
        .collect::<Vec<_>>()
        .join(" union all ");
    let messages = lookup
        .simple_query(&sql)
        .await
        .map_err(|source| PostgresError::Query {
            context: format!(
                "reading the unchanged large values of {} that an update left out",
                first.table.id
            ),
            source,
        })?;
    let mut found = HashMap::new();
    for message in &messages {
        let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let Some(n) = row.get(0).and_then(|t| t.parse::<usize>().ok()) else {
            continue;
        };
        let mut values = Vec::with_capacity(first.columns.len());
        for (j, (i, kind)) in first.columns.iter().enumerate() {
            let value = match row.get(j + 1) {
                None => Value::Null,
                Some(text) => decode_text(kind, text).map_err(|e| {
                    PostgresError::Decode(pgoutput::DecodeError(format!(
                        "column {} of {}: {} ({:?})",
                        name(*i),
                        first.table.id,
                        e.reason,
                        e.kind
                    )))
                })?,
            };
            values.push(value);
        }
        found.insert(n, values);
    }
    Ok(found)
}

/// What an update needs read from the table: the columns `after` lacks (unchanged TOASTed
/// values), or `None` when it lacks nothing. `event` is set by the caller.
fn unchanged_fill(rel: &RelationState, new: &Tuple<'_>, after: &Row) -> Option<UnchangedFill> {
    let columns: Vec<(usize, TypeKind)> = after
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_none())
        .map(|(i, _)| (i, rel.kinds.get(i).cloned().unwrap_or(TypeKind::Text)))
        .collect();
    if columns.is_empty() {
        return None;
    }
    let key = rel
        .table
        .key
        .iter()
        .map(|&k| match new.0.get(k) {
            Some(Datum::Text(b)) => std::str::from_utf8(b).ok().map(|t| (k, t.to_owned())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(UnchangedFill {
        event: 0,
        table: rel.table.clone(),
        key,
        columns,
    })
}

/// Converts a tuple to a row. `key_only`: a `K` old tuple, whose non-key columns are
/// placeholders and are left absent. `fill_from`: the full old tuple, whose values stand in for
/// unchanged TOASTed columns of the new tuple.
fn row(
    rel: &RelationState,
    tuple: &Tuple<'_>,
    fill_from: Option<&Tuple<'_>>,
    key_only: bool,
) -> Result<Row, PostgresError> {
    let mut values = Vec::with_capacity(tuple.0.len());
    for (i, datum) in tuple.0.iter().enumerate() {
        if key_only && !rel.table.key.contains(&i) {
            values.push(None);
            continue;
        }
        let datum = match (datum, fill_from.and_then(|t| t.0.get(i))) {
            (Datum::Unchanged, Some(old @ Datum::Text(_))) => old,
            _ => datum,
        };
        let kind = rel.kinds.get(i).unwrap_or(&TypeKind::Text);
        values.push(match datum {
            Datum::Null => Some(Value::Null),
            Datum::Unchanged => None,
            Datum::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    PostgresError::Decode(pgoutput::DecodeError(format!(
                        "column {} of {} is not valid UTF-8",
                        rel.table.columns.get(i).map(|c| &**c).unwrap_or("?"),
                        rel.table.id
                    )))
                })?;
                Some(decode_text(kind, text).map_err(|e| {
                    PostgresError::Decode(pgoutput::DecodeError(format!(
                        "column {} of {}: {} ({:?})",
                        rel.table.columns.get(i).map(|c| &**c).unwrap_or("?"),
                        rel.table.id,
                        e.reason,
                        e.kind
                    )))
                })?)
            }
            Datum::Binary(_) => {
                return Err(PostgresError::Decode(pgoutput::DecodeError(
                    "binary tuple data received, but the stream was started in text mode".into(),
                )))
            }
        });
    }
    Ok(Row { values })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
