//! Incremental backfill: the existing rows of a table, read in key-ordered chunks while the
//! stream goes on, for a table added to a running source and for `sluice snapshot`.
//!
//! # Why a chunk row never overwrites a newer change
//!
//! The chunks are interleaved with the stream by *markers*: transactional logical decoding
//! messages (`pg_logical_emit_message`) that the stream decodes in commit order like any
//! change. The [`Driver`] works in rounds:
//!
//! 1. it reads chunk *i* (the next `chunk_rows` rows by primary key) in one statement, which
//!    starts after marker *i − 1* committed;
//! 2. it hands the rows to the stream session, then commits marker *i*.
//!
//! The stream session ([`Tracker`]) remembers the keys of the table that changes touched.
//! When it decodes marker *i* it publishes chunk *i* without the rows whose key a change
//! touched since marker *i − 2*, and publishes them at the marker's position, so they sort
//! after every change before it and before every change after it. A change between marker
//! *i − 1* and marker *i* may or may not be visible to the chunk's read; either way the change
//! event carries the row's newer state, so dropping the chunk row is right (the rule of
//! Netflix's DBLog). The window reaches back one round more than DBLog's because Postgres makes
//! a committed transaction visible a moment after its commit record is written: a change
//! decoded just before marker *i − 1* may still be invisible to the chunk's read.
//!
//! That moment has no bound (a backend descheduled between writing its commit record and
//! becoming visible), so the window alone is not enough: the read runs in a repeatable-read
//! transaction that also takes `pg_current_snapshot()`, and the tracker keeps, per key, the
//! last transaction that changed it until a read's `xmin` passes that transaction. A chunk row
//! is also dropped when that transaction is one the read did not see, whatever round it was
//! decoded in. The tracker notes these from the moment it knows of the backfill (at the
//! session's start for a queued one, at its request for `sluice snapshot`), not from the first
//! marker: a transaction decoded just before that marker can still be invisible to the first
//! chunk's read (seen under load: 28 ms between the commit record and the read).
//!
//! Progress (the last key read) travels in the source checkpoint, so a restart resumes after
//! the last chunk whose rows are in Kafka. Markers of an earlier run, whose chunks are gone
//! with it, are ignored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use sluice_core::{
    key_text, BackfillBook, BackfillState, Backoff, ErrorClass, ReadPace, Row, TableId, TableSchema,
};
use tokio::sync::mpsc;
use tokio_postgres::SimpleQueryMessage;

use crate::client::{connect, quote_ident, quote_literal, quote_table};
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::snapshot::{decode_fields, now_us, CopyParser};
use crate::source::CapturedTable;

/// Prefix of the marker messages; the content is `SOURCE/RUN/N`.
pub const MARKER_PREFIX: &str = "sluice.marker";
/// Prefix of `sluice snapshot` requests; the content is a [`SnapshotRequest`] in JSON.
pub const REQUEST_PREFIX: &str = "sluice.snapshot";

/// Which transactions a chunk's read saw: those of `pg_current_snapshot()` taken in the same
/// repeatable-read transaction as the read (32-bit xids, as the stream decodes them).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    xmin: u32,
    xmax: u32,
    in_progress: HashSet<u32>,
}

impl Seen {
    /// Parses `xmin:xmax:xip,…` (64-bit xids; their low 32 bits are the xids pgoutput sends).
    fn parse(text: &str) -> Option<Seen> {
        let mut parts = text.split(':');
        let xid = |v: &str| v.parse::<u64>().ok().map(|x| x as u32);
        let xmin = xid(parts.next()?)?;
        let xmax = xid(parts.next()?)?;
        let in_progress = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|v| !v.is_empty())
            .filter_map(xid)
            .collect();
        Some(Seen {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the read saw the work of committed transaction `xid`.
    fn saw(&self, xid: u32) -> bool {
        xid_precedes(xid, self.xmin)
            || (xid_precedes(xid, self.xmax) && !self.in_progress.contains(&xid))
    }
}

/// Whether 32-bit xid `a` is older than `b`, across wraparound (Postgres'
/// `TransactionIdPrecedes` for normal xids).
fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// One chunk on its way from the driver to the stream session.
pub struct Chunk {
    marker: String,
    backfill: String,
    table: Arc<TableSchema>,
    rows: Vec<Row>,
    /// The backfill's progress once this chunk is published.
    after: Option<Vec<String>>,
    /// The last chunk: the backfill is finished (or, with `failed`, abandoned).
    done: bool,
    failed: Option<String>,
    /// The transactions its read saw (`None` for a chunk without rows).
    seen: Option<Seen>,
}

/// Writes a transactional logical decoding message into the WAL (its own transaction), and
/// waits until that WAL is flushed: a walsender sends only flushed WAL, so under
/// `synchronous_commit = off` a marker would otherwise wait for the WAL writer (up to
/// `wal_writer_delay`, 200 ms by default), and with it every chunk the stream holds for it.
/// Only `off` is raised (to `local`): any other level is kept, so with synchronous standbys a
/// marker waits for them as other commits do, and a transaction committed before it is past
/// its own wait for them (and visible) by the time the next chunk is read. One round trip.
pub async fn emit_message(
    client: &tokio_postgres::Client,
    prefix: &str,
    content: &str,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "begin; \
         select set_config('synchronous_commit', 'local', true) \
           where current_setting('synchronous_commit') = 'off'; \
         select pg_logical_emit_message(true, {}, {}); commit",
        quote_literal(prefix),
        quote_literal(content)
    );
    match client.simple_query(&sql).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // A failed statement leaves the transaction block open and aborted.
            let _ = client.batch_execute("rollback").await;
            Err(e)
        }
    }
}

/// How many rows of `table` match `predicate` (all rows without one).
pub async fn count_matching(
    client: &tokio_postgres::Client,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, tokio_postgres::Error> {
    let sql = match predicate {
        Some(p) => format!("select count(*) from {} where ({p})", quote_table(table)),
        None => format!("select count(*) from {}", quote_table(table)),
    };
    Ok(client.query_one(sql.as_str(), &[]).await?.get(0))
}

#[derive(Default)]
struct Window {
    /// Every key changed since the backfill became known to this session: the stream
    /// published those rows' states (whole rows: capture reads back unchanged TOASTed
    /// values), which a chunk read later would only publish again, for a sink to write twice.
    changed: HashSet<String>,
    current: HashSet<String>,
    previous: HashSet<String>,
    /// A truncate of the table in the current / previous round.
    truncated: [bool; 2],
    /// The last transaction that changed each key, kept while a chunk's read may not have
    /// seen it (until the reads' oldest running transaction, `xmin`, passes it).
    last_xid: HashMap<String, u32>,
}

/// The stream session's side: remembers changed keys and publishes chunks at their markers.
pub struct Tracker {
    source: String,
    captured: HashMap<TableId, Arc<CapturedTable>>,
    chunks: mpsc::Receiver<Chunk>,
    requests: mpsc::UnboundedSender<BackfillState>,
    pending: VecDeque<Chunk>,
    windows: HashMap<TableId, Window>,
    /// Backfills queued, under way, finished and abandoned, as the next checkpoint records them.
    pub book: BackfillBook,
}

/// What a marker released: rows to publish as reads of `table`.
pub struct Released {
    pub table: Arc<TableSchema>,
    pub rows: Vec<Row>,
}

impl Tracker {
    pub fn new(
        source: String,
        captured: HashMap<TableId, Arc<CapturedTable>>,
        chunks: mpsc::Receiver<Chunk>,
        requests: mpsc::UnboundedSender<BackfillState>,
        book: BackfillBook,
    ) -> Self {
        // The changes of a table to backfill are noted from the session's start, not from its
        // first marker: a transaction decoded before that marker may still be invisible to
        // the first chunk's read (see `Window::last_xid`).
        let windows = book
            .state
            .iter()
            .filter_map(|b| TableId::parse(&b.table, "public"))
            .filter(|id| captured.contains_key(id))
            .map(|id| (id, Window::default()))
            .collect();
        Tracker {
            source,
            captured,
            chunks,
            requests,
            pending: VecDeque::new(),
            windows,
            book,
        }
    }

    /// Whether any table is being backfilled (changes must then be noted).
    pub fn active(&self) -> bool {
        !self.windows.is_empty()
    }

    /// Notes a change of `row` (its key columns at least) in `table` by transaction `xid`.
    pub fn touched(&mut self, table: &TableSchema, row: &Row, xid: u32) {
        if let Some(w) = self.windows.get_mut(&table.id) {
            let key = key_text(table, row);
            w.last_xid.insert(key.clone(), xid);
            w.changed.insert(key.clone());
            w.current.insert(key);
        }
    }

    pub fn truncated(&mut self, table: &TableId) {
        if let Some(w) = self.windows.get_mut(table) {
            w.truncated[0] = true;
        }
    }

    /// Handles a logical decoding message; returns the rows a marker releases.
    pub fn message(&mut self, prefix: &str, content: &[u8]) -> Option<Released> {
        let content = std::str::from_utf8(content).ok()?;
        match prefix {
            MARKER_PREFIX => self.marker(content),
            REQUEST_PREFIX => {
                self.request(content);
                None
            }
            _ => None,
        }
    }

    fn request(&mut self, content: &str) {
        let captured = &self.captured;
        let captures =
            |t: &str| TableId::parse(t, "public").is_some_and(|id| captured.contains_key(&id));
        if let Some(state) = self.book.request(&self.source, content, captures) {
            if let Some(id) = TableId::parse(&state.table, "public") {
                self.windows.entry(id).or_default();
            }
            let _ = self.requests.send(state);
        }
    }

    fn marker(&mut self, content: &str) -> Option<Released> {
        let mut parts = content.rsplitn(3, '/');
        let (n, run, source) = (parts.next()?, parts.next()?, parts.next()?);
        if source != self.source {
            return None;
        }
        while let Ok(chunk) = self.chunks.try_recv() {
            self.pending.push_back(chunk);
        }
        // Chunks of this run before this marker lost their marker (its commit failed).
        let n: u64 = n.parse().ok()?;
        let run_prefix = format!("{source}/{run}/");
        self.pending.retain(|c| {
            c.marker == content
                || !c.marker.starts_with(&run_prefix)
                || c.marker[run_prefix.len()..]
                    .parse::<u64>()
                    .is_ok_and(|m| m > n)
        });
        let at = self.pending.iter().position(|c| c.marker == content)?;
        let chunk = self.pending.remove(at)?;
        let window = self.windows.entry(chunk.table.id.clone()).or_default();
        let read = chunk.rows.len() as u64;
        // A row is dropped when a change of its key is in the window, or was made by a
        // transaction the read did not see: Postgres makes a commit visible a moment after
        // writing its record, so a change decoded rounds ago can still be unseen by a read
        // (a backend descheduled in between), and the older chunk row would overwrite it.
        let unseen = |k: &String| {
            chunk
                .seen
                .as_ref()
                .is_some_and(|seen| window.last_xid.get(k).is_some_and(|xid| !seen.saw(*xid)))
        };
        let rows: Vec<Row> = if window.truncated.iter().any(|t| *t) {
            Vec::new()
        } else if window.changed.is_empty()
            && window.current.is_empty()
            && window.previous.is_empty()
            && window.last_xid.is_empty()
        {
            chunk.rows
        } else {
            chunk
                .rows
                .into_iter()
                .filter(|r| {
                    let k = key_text(&chunk.table, r);
                    !window.changed.contains(&k)
                        && !window.current.contains(&k)
                        && !window.previous.contains(&k)
                        && !unseen(&k)
                })
                .collect()
        };
        if let Some(seen) = &chunk.seen {
            // Every later read sees what this one saw before its xmin.
            window
                .last_xid
                .retain(|_, xid| !xid_precedes(*xid, seen.xmin));
        }
        window.previous = std::mem::take(&mut window.current);
        window.truncated = [false, window.truncated[0]];
        let table_name = chunk.table.id.to_string();
        let published = rows.len() as u64;
        self.book.published(
            &self.source,
            &chunk.backfill,
            &table_name,
            read,
            published,
            chunk.after.clone(),
            chunk.done,
            chunk.failed.clone(),
        );
        if chunk.done && !self.book.busy(&table_name) {
            self.windows.remove(&chunk.table.id);
        }
        Some(Released {
            table: chunk.table,
            rows,
        })
    }
}

/// The database side: reads chunks and commits markers, one backfill after another.
pub struct Driver {
    pub conn: PostgresConnection,
    pub source: String,
    pub tables: HashMap<TableId, Arc<CapturedTable>>,
    pub chunk_rows: usize,
    /// Most rows read per second (0: no limit).
    pub max_rows_per_second: u64,
    pub chunks: mpsc::Sender<Chunk>,
    pub requests: mpsc::UnboundedReceiver<BackfillState>,
}

const CHUNKS_AHEAD: usize = 8;

pub type ChunkChannel = (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>);
pub type RequestChannel = (
    mpsc::UnboundedSender<BackfillState>,
    mpsc::UnboundedReceiver<BackfillState>,
);

/// Creates the channels between a [`Driver`] and its [`Tracker`].
pub fn channels() -> (ChunkChannel, RequestChannel) {
    // The driver may run this many chunks ahead of the stream: a stream lagging behind the
    // database then still receives whole chunks at every marker it reaches.
    (mpsc::channel(CHUNKS_AHEAD), mpsc::unbounded_channel())
}

struct Round<'a> {
    client: tokio_postgres::Client,
    run: String,
    n: u64,
    driver: &'a Driver,
}

impl Driver {
    fn table(&self, name: &str) -> Option<&Arc<CapturedTable>> {
        TableId::parse(name, "public").and_then(|id| self.tables.get(&id))
    }

    /// Works through `queue`, then through requests as the stream decodes them, until the
    /// stream session ends. Errors of one backfill are logged and abandon it; lost connections
    /// are retried.
    pub async fn run(mut self, queue: Vec<BackfillState>) {
        let mut queue: VecDeque<BackfillState> = queue.into();
        let mut backoff = Backoff::default();
        let run = format!("{:x}", now_us());
        let mut n = 0u64;
        loop {
            let bf = match queue.pop_front() {
                Some(bf) => bf,
                None => match self.requests.recv().await {
                    Some(bf) => bf,
                    None => return,
                },
            };
            let mut bf = bf;
            loop {
                let client = match connect(&self.conn, "backfill").await {
                    Ok(c) => c,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %sluice_core::error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill cannot connect");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                let mut round = Round {
                    client,
                    run: run.clone(),
                    n,
                    driver: &self,
                };
                let result = round.backfill(&mut bf).await;
                let outcome = match result {
                    Ok(()) => Ok(true),
                    Err(RoundError::Closed) => Err(()),
                    Err(RoundError::Failed(e))
                        if e.class() == ErrorClass::Transient && !e.refused_query() =>
                    {
                        let delay = backoff.next_delay();
                        tracing::warn!(table = %bf.table, error = %sluice_core::error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill interrupted; resuming after its last chunk");
                        tokio::time::sleep(delay).await;
                        Ok(false)
                    }
                    // A definite error, or a query the table refuses (a predicate naming a
                    // column dropped since the request, say), abandons it.
                    Err(RoundError::Failed(e)) => round
                        .abandon(&bf, sluice_core::error_chain(&e))
                        .await
                        .map(|()| true)
                        .map_err(|_| ()),
                };
                n = round.n;
                match outcome {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(()) => return,
                }
            }
            backoff.reset();
        }
    }
}

enum RoundError {
    Closed,
    Failed(PostgresError),
}

impl From<PostgresError> for RoundError {
    fn from(e: PostgresError) -> Self {
        RoundError::Failed(e)
    }
}

impl Round<'_> {
    /// Tells the stream that a backfill is abandoned (through a marker, like a chunk).
    async fn abandon(&mut self, bf: &BackfillState, reason: String) -> Result<(), RoundError> {
        let Some(table) = self.driver.table(&bf.table) else {
            return Ok(());
        };
        let schema = table.schema.clone();
        self.publish(bf, &schema, (Vec::new(), None, None), true, Some(reason))
            .await
    }

    async fn backfill(&mut self, bf: &mut BackfillState) -> Result<(), RoundError> {
        let d = self.driver;
        let Some(table) = d.table(&bf.table) else {
            return Err(RoundError::Failed(PostgresError::Setup(format!(
                "table {} is not captured by source {}",
                bf.table, d.source
            ))));
        };
        let table = table.clone();
        let estimate = self.estimate(&table).await.unwrap_or(0);
        tracing::info!(
            source = %d.source,
            table = %bf.table,
            id = %bf.id,
            predicate = bf.predicate.as_deref().unwrap_or("(all rows)"),
            resume_after = ?bf.after,
            rows_estimate = estimate,
            "backfill {}",
            if bf.after.is_some() { "resumed" } else { "started" }
        );
        // Two empty rounds open the window of changed keys before the first chunk is read.
        for _ in 0..2 {
            self.publish(bf, &table.schema, (Vec::new(), None, None), false, None)
                .await?;
        }
        let mut pace = ReadPace::new(&d.source, &bf.table, d.max_rows_per_second, Some(estimate));
        loop {
            let (rows, last, seen) = self.read_chunk(&table, bf).await?;
            pace.read(rows.len());
            let done = rows.len() < d.chunk_rows;
            self.publish(bf, &table.schema, (rows, last.clone(), seen), done, None)
                .await?;
            // Only once its marker committed: a retry after a failed marker reads the chunk
            // again (its rows were never published without the marker).
            if last.is_some() {
                bf.after = last;
            }
            if done {
                pace.complete();
                return Ok(());
            }
            pace.next().await;
        }
    }

    async fn estimate(&self, table: &CapturedTable) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                "select greatest(reltuples, 0)::int8 from pg_class where oid = ($1::text)::regclass",
                &[&quote_table(&table.schema.id)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Hands a chunk to the stream, then commits its marker.
    async fn publish(
        &mut self,
        bf: &BackfillState,
        table: &Arc<TableSchema>,
        (rows, after, seen): ChunkRead,
        done: bool,
        failed: Option<String>,
    ) -> Result<(), RoundError> {
        let d = self.driver;
        self.n += 1;
        let marker = format!("{}/{}/{}", d.source, self.run, self.n);
        let chunk = Chunk {
            marker: marker.clone(),
            backfill: bf.id.clone(),
            table: table.clone(),
            rows,
            after,
            done,
            failed,
            seen,
        };
        d.chunks.send(chunk).await.map_err(|_| RoundError::Closed)?;
        emit_message(&self.client, MARKER_PREFIX, &marker)
            .await
            .map_err(PostgresError::query("writing a backfill marker"))?;
        Ok(())
    }

    /// Reads the next chunk: rows after `bf.after` by primary key, matching the predicate.
    /// Returns the rows, the text form of the last row's key and the transactions the read
    /// saw (its snapshot, taken in the same repeatable-read transaction).
    async fn read_chunk(
        &self,
        table: &CapturedTable,
        bf: &BackfillState,
    ) -> Result<ChunkRead, PostgresError> {
        let context = format!("reading a backfill chunk of {}", table.schema.id);
        // The transaction and the snapshot it reads in, in one round trip.
        let read = match self
            .client
            .simple_query(
                "begin isolation level repeatable read read only; \
                 select pg_current_snapshot()::text",
            )
            .await
        {
            Ok(opened) => {
                let seen = opened
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0),
                        _ => None,
                    })
                    .and_then(Seen::parse);
                self.read_in_snapshot(table, bf, &context)
                    .await
                    .map(|(rows, last)| (rows, last, seen))
            }
            Err(e) => Err(PostgresError::query(context.clone())(e)),
        };
        let end = if read.is_ok() { "commit" } else { "rollback" };
        let ended = self.client.batch_execute(end).await;
        let read = read?;
        ended.map_err(PostgresError::query(context))?;
        Ok(read)
    }

    /// The chunk's rows and the text form of the last row's key, read in the open transaction.
    async fn read_in_snapshot(
        &self,
        table: &CapturedTable,
        bf: &BackfillState,
        context: &str,
    ) -> Result<(Vec<Row>, Option<Vec<String>>), PostgresError> {
        let cols = table.select_list();
        let keys = table
            .key_names
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let mut conditions = Vec::new();
        if let Some(after) = &bf.after {
            let lits = after
                .iter()
                .map(|v| quote_literal(v))
                .collect::<Vec<_>>()
                .join(", ");
            conditions.push(format!("({keys}) > ({lits})"));
        }
        if let Some(p) = &bf.predicate {
            conditions.push(format!("({p})"));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" where {}", conditions.join(" and "))
        };
        let sql = format!(
            "copy (select {cols} from {}{filter} order by {keys} limit {}) to stdout",
            quote_table(&table.schema.id),
            self.driver.chunk_rows
        );
        let stream = self
            .client
            .copy_out(sql.as_str())
            .await
            .map_err(PostgresError::query(context))?;
        futures_util::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let mut rows = Vec::with_capacity(self.driver.chunk_rows);
        // The last row's key, in text form (its buffers reused from row to row).
        let mut last_key: Vec<String> = vec![String::new(); table.schema.key.len()];
        let mut any = false;
        while let Some(bytes) = stream.next().await {
            let bytes: Bytes = bytes.map_err(PostgresError::query(context))?;
            parser.push(&bytes, |fields| {
                for (slot, &k) in last_key.iter_mut().zip(table.schema.key.iter()) {
                    slot.clear();
                    if let Some(Some(text)) = fields.get(k) {
                        slot.push_str(text);
                    }
                }
                any = true;
                rows.push(Row {
                    values: decode_fields(table, fields)?,
                });
                Ok::<(), PostgresError>(())
            })?;
        }
        Ok((rows, any.then_some(last_key)))
    }
}

/// A chunk's rows, the text form of its last key, and what its read saw.
type ChunkRead = (Vec<Row>, Option<Vec<String>>, Option<Seen>);

#[cfg(test)]
mod tests {
    use sluice_core::{AbandonedBackfill, Value};

    use super::*;

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            Arc::from("app"),
            Arc::from("app"),
            TableId::new("public", "t"),
            vec![Arc::from("id"), Arc::from("v")].into(),
            vec![0],
            Arc::from("sluice.public.t"),
        ))
    }

    fn row(id: i64, v: &str) -> Row {
        Row {
            values: vec![Some(Value::Int(id)), Some(Value::Text(v.into()))],
        }
    }

    fn tracker() -> (Tracker, mpsc::Sender<Chunk>) {
        let (tx, rx) = mpsc::channel(8);
        let (req, _) = mpsc::unbounded_channel();
        let state = vec![BackfillState::new("b".into(), "public.t".into(), None)];
        (
            Tracker::new(
                "app".into(),
                HashMap::from([(
                    schema().id.clone(),
                    Arc::new(CapturedTable {
                        schema: schema(),
                        kinds: vec![crate::types::TypeKind::Int, crate::types::TypeKind::Text],
                        key_names: vec!["id".into()],
                    }),
                )]),
                rx,
                req,
                BackfillBook {
                    state,
                    ..BackfillBook::default()
                },
            ),
            tx,
        )
    }

    fn chunk(n: u64, rows: Vec<Row>, done: bool) -> Chunk {
        Chunk {
            marker: format!("app/r/{n}"),
            backfill: "b".into(),
            table: schema(),
            after: rows.last().map(|r| vec![format!("{:?}", r.values[0])]),
            rows,
            done,
            failed: None,
            seen: None,
        }
    }

    fn ids(released: Option<Released>) -> Vec<i64> {
        released
            .expect("released")
            .rows
            .iter()
            .map(|r| match r.values[0] {
                Some(Value::Int(i)) => i,
                _ => panic!("id"),
            })
            .collect()
    }

    #[test]
    fn a_chunk_row_changed_within_two_rounds_is_dropped() {
        let (mut t, tx) = tracker();
        let s = schema();
        // Two opening rounds, then a change of key 2 before marker 2 and of key 3 after it.
        tx.try_send(chunk(1, vec![], false)).expect("send");
        assert!(ids(t.message(MARKER_PREFIX, b"app/r/1")).is_empty());
        assert!(t.active());
        t.touched(&s, &row(2, "new"), 100);
        tx.try_send(chunk(2, vec![], false)).expect("send");
        t.message(MARKER_PREFIX, b"app/r/2");
        t.touched(&s, &row(3, "new"), 101);
        tx.try_send(chunk(3, vec![row(1, "a"), row(2, "b"), row(3, "c")], false))
            .expect("send");
        // Key 2 changed two rounds back, key 3 in this one: both dropped.
        assert_eq!(ids(t.message(MARKER_PREFIX, b"app/r/3")), vec![1]);
        // Key 2's change is now three rounds back, but it is in the stream with the row's
        // state a later read sees: publishing that read would repeat it.
        tx.try_send(chunk(4, vec![row(2, "new"), row(4, "d")], true))
            .expect("send");
        assert_eq!(ids(t.message(MARKER_PREFIX, b"app/r/4")), vec![4]);
        assert!(t.book.state.is_empty(), "finished");
        assert_eq!(t.book.complete, vec!["public.t".to_owned()]);
        assert!(!t.active());
    }

    #[test]
    fn a_truncate_drops_the_round_and_foreign_markers_are_ignored() {
        let (mut t, tx) = tracker();
        tx.try_send(chunk(1, vec![], false)).expect("send");
        t.message(MARKER_PREFIX, b"app/r/1");
        t.truncated(&TableId::new("public", "t"));
        tx.try_send(chunk(2, vec![row(1, "a")], false))
            .expect("send");
        assert!(t.message(MARKER_PREFIX, b"other/r/2").is_none());
        assert!(ids(t.message(MARKER_PREFIX, b"app/r/2")).is_empty());
        // A marker whose chunk is gone (an earlier run's) releases nothing.
        assert!(t.message(MARKER_PREFIX, b"app/old/9").is_none());
        assert_eq!(t.book.state[0].superseded, 1);
    }

    #[test]
    fn an_abandoned_backfill_is_remembered_not_completed() {
        let (mut t, tx) = tracker();
        let mut failed = chunk(1, vec![], true);
        failed.failed = Some("column \"x\" does not exist".into());
        tx.try_send(failed).expect("send");
        t.message(MARKER_PREFIX, b"app/r/1");
        assert!(t.book.state.is_empty(), "no longer under way");
        assert!(t.book.complete.is_empty(), "its rows are not complete");
        assert_eq!(
            t.book.abandoned,
            vec![AbandonedBackfill {
                id: "b".into(),
                table: "public.t".into(),
                reason: "column \"x\" does not exist".into(),
            }]
        );
    }

    #[test]
    fn a_change_the_read_did_not_see_drops_its_row_whatever_its_round() {
        let (mut t, tx) = tracker();
        let s = schema();
        tx.try_send(chunk(1, vec![], false)).expect("send");
        t.message(MARKER_PREFIX, b"app/r/1");
        // Key 5 changed by transaction 700 and key 6 by transaction 600, both decoded long
        // before the chunk's window; the read's snapshot still had 700 running.
        t.touched(&s, &row(5, "new"), 700);
        t.touched(&s, &row(6, "new"), 600);
        for n in 2..=4 {
            tx.try_send(chunk(n, vec![], false)).expect("send");
            t.message(MARKER_PREFIX, format!("app/r/{n}").as_bytes());
        }
        let mut c = chunk(5, vec![row(4, "a"), row(5, "old"), row(6, "b")], false);
        c.seen = Seen::parse("650:710:700,705");
        tx.try_send(c).expect("send");
        assert_eq!(
            ids(t.message(MARKER_PREFIX, b"app/r/5")),
            vec![4],
            "700 was running at the read: key 5's chunk row is older than its change; key 6's \
             repeats the state its change published"
        );
        // 600 precedes the read's xmin: forgotten; 700 is kept until a read sees it.
        let w = t.windows.get(&s.id).expect("window");
        assert!(!w.last_xid.values().any(|x| *x == 600));
        assert!(w.last_xid.values().any(|x| *x == 700));
    }

    #[test]
    fn a_change_decoded_before_the_first_marker_but_unseen_by_the_read_drops_its_row() {
        // The backfill is queued when the session starts: its table's changes are noted at
        // once. Transaction 911 wrote its commit record before the first marker but became
        // visible only after the first chunk's read took its snapshot (a descheduled backend).
        let (mut t, tx) = tracker();
        let s = schema();
        assert!(
            t.active(),
            "a queued backfill's table is tracked from the start"
        );
        t.touched(&s, &row(183, "u183"), 911);
        for n in 1..=2 {
            tx.try_send(chunk(n, vec![], false)).expect("send");
            t.message(MARKER_PREFIX, format!("app/r/{n}").as_bytes());
        }
        let mut c = chunk(3, vec![row(182, "v"), row(183, "v183")], false);
        c.seen = Seen::parse("905:915:911");
        tx.try_send(c).expect("send");
        assert_eq!(ids(t.message(MARKER_PREFIX, b"app/r/3")), vec![182]);
    }

    #[test]
    fn snapshots_parse_and_tell_what_they_saw() {
        let seen = Seen::parse("100:110:103,107").expect("parse");
        assert!(seen.saw(99) && seen.saw(100) && seen.saw(104));
        assert!(!seen.saw(103) && !seen.saw(107) && !seen.saw(110) && !seen.saw(200));
        // 64-bit xids: the low 32 bits, compared across wraparound.
        let wrapped = Seen::parse("8589934590:8589934600:").expect("parse");
        assert!(wrapped.saw(u32::MAX - 5) && wrapped.saw(3));
        assert!(!wrapped.saw(8) && !wrapped.saw(9));
        assert!(Seen::parse("nonsense").is_none());
    }
}
