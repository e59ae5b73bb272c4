//! Incremental backfill for MySQL/MariaDB sources: the existing rows of a table added to a
//! running source, or those a `sluice snapshot` asks for, read in key-ordered chunks while the
//! binlog stream goes on.
//!
//! # Why a chunk row never overwrites a newer change
//!
//! The binlog has no logical messages, so the chunks are interleaved with the stream through a
//! *signal table* in the source (`signal_table`, created when first needed): a row per source
//! that the [`Driver`] rewrites as a low or a high *watermark*. For chunk *n* it
//!
//! 1. commits the low watermark *n*,
//! 2. reads the chunk (the next `backfill_chunk_rows` rows by primary key) in one statement,
//! 3. hands the rows to the stream session, then commits the high watermark *n*.
//!
//! The stream session ([`Tracker`]) notes the keys of the table that changes touch between
//! the two watermarks. At the high watermark it publishes the chunk without those rows, at the
//! watermark's position (the watermark rule of Netflix's DBLog). A change before the low
//! watermark in the binlog was visible to the read: the server makes transactions visible in
//! their binlog order (MariaDB's ordered commit; MySQL's `binlog_order_commits`, on by
//! default), and the low watermark was visible before the read began. A change after the high
//! watermark was not visible to the read, which ended before that watermark committed, and it
//! follows the chunk in the topic. A change between them may or may not have been seen; it is
//! in the stream with the row's newer state, so the chunk's row is dropped.
//!
//! A change before the low watermark but after the backfill became known to this session (at
//! its start for a queued one, such as MySQL's initial snapshot; at its request for
//! `sluice snapshot`) is in the stream too, with the whole row (`binlog_row_image = FULL`):
//! the chunk's row would only publish that state again, at a later position, and a sink would
//! write it twice. So the tracker keeps every key any change touched in a table from the
//! moment its backfill is known until it ends (the window's changes among them), and drops
//! those rows.
//!
//! Requests of `sluice snapshot` travel the same way: a `snapshot` row of the signal table,
//! read by the stream in order. Progress (the last key read, as SQL literals) is part of the
//! source checkpoint, so a restart resumes after the last published chunk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt as _;
use mysql_async::prelude::*;
use mysql_async::Conn;
use sluice_core::{
    key_text, BackfillBook, BackfillState, Backoff, ErrorClass, ReadPace, Row, SnapshotRequest,
    TableId, TableSchema,
};
use tokio::sync::mpsc;

use crate::client::{connect, quote_ident, quote_table};
use crate::config::MySqlConnection;
use crate::error::MySqlError;
use crate::source::{now_us, CapturedTable};

/// The id of each backfill that reads a table for the initial snapshot of a server without
/// a snapshot point in the binlog (MySQL), followed by the table and the start time.
pub const SNAPSHOT_ID_PREFIX: &str = "snapshot-";

/// `kind` of a watermark row of the signal table.
pub const MARKER_KIND: &str = "marker";
/// `kind` of a re-sync request row; its content is a [`SnapshotRequest`] in JSON.
pub const REQUEST_KIND: &str = "snapshot";

/// A watermark, the content of a marker row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    source: String,
    run: String,
    n: u64,
    /// `low` (the chunk is about to be read) or `high` (it was read).
    edge: String,
    /// `database.table` being read.
    table: String,
}

/// Creates the signal table if it is missing; the error says what to run instead.
pub async fn ensure_signal_table(
    conn: &mut Conn,
    signal: &TableId,
    source: &str,
) -> Result<(), MySqlError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(191) NOT NULL PRIMARY KEY, \
         kind VARCHAR(16) NOT NULL, content TEXT NOT NULL) ENGINE=InnoDB",
        quote_table(signal)
    );
    conn.query_drop(&sql).await.map_err(|e| {
        MySqlError::Setup(format!(
            "source {source}: cannot create the signal table {signal} that backfills and \
             `sluice snapshot` write their watermarks into ({e}): create it as `{sql}` and \
             grant the capture user INSERT and UPDATE on it, or name another in \
             sources.{source}.signal_table"
        ))
    })
}

/// Refuses a server that may make transactions visible out of binlog order: the watermark
/// rule keeps a chunk row only when no change of its key lies between its watermarks, which
/// holds only if a change before the low watermark was visible to the read. MariaDB commits in
/// binlog order (it has no such setting); MySQL does with `binlog_order_commits = ON`, its
/// default.
pub async fn check_commit_order(conn: &mut Conn, source: &str) -> Result<(), MySqlError> {
    let rows: Vec<(String, String)> = conn
        .query("SHOW GLOBAL VARIABLES LIKE 'binlog_order_commits'")
        .await
        .map_err(MySqlError::query("reading binlog_order_commits"))?;
    match rows.first() {
        Some((_, value)) if value.eq_ignore_ascii_case("OFF") => Err(MySqlError::Setup(format!(
            "source {source}: binlog_order_commits is OFF, so a transaction can become visible \
             after a later one in the binlog and a backfill chunk could overwrite a newer \
             change: run `SET GLOBAL binlog_order_commits = ON` (and set it in the server's \
             config) before a backfill or `sluice snapshot`"
        ))),
        _ => Ok(()),
    }
}

/// Writes `content` into the source's row of `kind` in the signal table (its own transaction).
pub async fn write_signal(
    conn: &mut Conn,
    signal: &TableId,
    source: &str,
    kind: &str,
    content: &str,
) -> Result<(), MySqlError> {
    conn.exec_drop(
        format!(
            "INSERT INTO {} (id, kind, content) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE kind = VALUES(kind), content = VALUES(content)",
            quote_table(signal)
        ),
        (format!("{source}/{kind}"), kind, content),
    )
    .await
    .map_err(MySqlError::query(format!(
        "writing a {kind} row into the signal table {signal}"
    )))
}

/// Queues a re-sync of `source` (`sluice snapshot`): checks the predicate by counting the rows
/// it matches, writes the request into the signal table and returns the count and the binlog
/// position after the request (the capture has taken it up once its checkpoint passes it).
pub async fn queue_snapshot(
    settings: &crate::MySqlSourceSettings,
    request: &SnapshotRequest,
    table: &TableId,
) -> Result<(i64, crate::source::BinlogPos), MySqlError> {
    let mut conn = connect(&settings.connection).await?;
    let total = count_matching(&mut conn, table, request.predicate.as_deref()).await?;
    check_commit_order(&mut conn, &settings.name).await?;
    ensure_signal_table(&mut conn, &settings.signal_table, &settings.name).await?;
    let body = serde_json::to_string(request).unwrap_or_default();
    write_signal(
        &mut conn,
        &settings.signal_table,
        &settings.name,
        REQUEST_KIND,
        &body,
    )
    .await?;
    let at = crate::source::current_position(&mut conn).await?;
    let _ = conn.disconnect().await;
    Ok((total, at))
}

/// How many rows of `table` match `predicate` (all rows without one), on a new connection.
pub async fn count_rows(
    connection: &MySqlConnection,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, MySqlError> {
    let mut conn = connect(connection).await?;
    let n = count_matching(&mut conn, table, predicate).await;
    let _ = conn.disconnect().await;
    n
}

/// How many rows of `table` match `predicate` (all rows without one).
pub async fn count_matching(
    conn: &mut Conn,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, MySqlError> {
    let mut sql = format!("SELECT COUNT(*) FROM {}", quote_table(table));
    if let Some(p) = predicate {
        sql.push_str(&format!(" WHERE ({p})"));
    }
    let n: Option<i64> = conn
        .query_first(sql)
        .await
        .map_err(MySqlError::query(format!("counting the rows of {table}")))?;
    Ok(n.unwrap_or(0))
}

/// One chunk on its way from the driver to the stream session.
pub struct Chunk {
    run: String,
    n: u64,
    backfill: String,
    table: Arc<TableSchema>,
    rows: Vec<Row>,
    /// The backfill's progress once this chunk is published.
    after: Option<Vec<String>>,
    /// The last chunk: the backfill is finished (or, with `failed`, abandoned).
    done: bool,
    failed: Option<String>,
}

/// What a high watermark released: rows to publish as reads of `table`.
pub struct Released {
    pub table: Arc<TableSchema>,
    pub rows: Vec<Row>,
}

/// A chunk under way: from its low watermark to its high one. The keys changes touched
/// meanwhile are in [`Tracker::changed`], which notes every change since the backfill was known
/// and so those of the window too.
struct Window {
    run: String,
    n: u64,
    truncated: bool,
}

/// The stream session's side: notes changed keys between watermarks and publishes chunks at
/// their high watermark.
pub struct Tracker {
    source: String,
    captured: HashMap<TableId, Arc<CapturedTable>>,
    chunks: mpsc::Receiver<Chunk>,
    requests: mpsc::UnboundedSender<BackfillState>,
    pending: VecDeque<Chunk>,
    windows: HashMap<TableId, Window>,
    /// The keys changes touched in each table with a backfill under way, since this session
    /// knew of it: the stream published those rows' states, which a chunk must not repeat.
    changed: HashMap<TableId, HashSet<String>>,
    /// Backfills queued, under way, finished and abandoned, as the next checkpoint records them.
    pub book: BackfillBook,
}

impl Tracker {
    pub fn new(
        source: String,
        captured: HashMap<TableId, Arc<CapturedTable>>,
        chunks: mpsc::Receiver<Chunk>,
        requests: mpsc::UnboundedSender<BackfillState>,
        book: BackfillBook,
    ) -> Self {
        let mut t = Tracker {
            source,
            captured,
            chunks,
            requests,
            pending: VecDeque::new(),
            windows: HashMap::new(),
            changed: HashMap::new(),
            book,
        };
        t.follow_book();
        t
    }

    /// Keeps [`Self::changed`] to the tables the book has a backfill of.
    fn follow_book(&mut self) {
        let tables: HashSet<TableId> = self
            .book
            .state
            .iter()
            .filter_map(|b| TableId::parse(&b.table, ""))
            .collect();
        self.changed.retain(|t, _| tables.contains(t));
        for t in tables {
            self.changed.entry(t).or_default();
        }
    }

    /// Whether a backfill is under way (changes must then be noted).
    pub fn active(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Notes a change of `row` (its key columns at least) in `table`.
    pub fn touched(&mut self, table: &TableSchema, row: &Row) {
        if let Some(c) = self.changed.get_mut(&table.id) {
            c.insert(key_text(table, row));
        }
    }

    pub fn truncated(&mut self, table: &TableId) {
        if let Some(w) = self.windows.get_mut(table) {
            w.truncated = true;
        }
    }

    /// Handles a row written into the signal table; returns the rows a high watermark releases.
    pub fn signal(&mut self, kind: &str, content: &str) -> Option<Released> {
        match kind {
            MARKER_KIND => {
                let marker: Marker = serde_json::from_str(content).ok()?;
                if marker.source != self.source {
                    return None;
                }
                match marker.edge.as_str() {
                    "low" => {
                        let table = TableId::parse(&marker.table, "")?;
                        self.windows.insert(
                            table,
                            Window {
                                run: marker.run,
                                n: marker.n,
                                truncated: false,
                            },
                        );
                        None
                    }
                    _ => self.high(&marker),
                }
            }
            REQUEST_KIND => {
                self.request(content);
                None
            }
            _ => None,
        }
    }

    fn request(&mut self, content: &str) {
        let captured = &self.captured;
        let captures = |t: &str| TableId::parse(t, "").is_some_and(|id| captured.contains_key(&id));
        if let Some(state) = self.book.request(&self.source, content, captures) {
            let _ = self.requests.send(state);
            self.follow_book();
        }
    }

    fn high(&mut self, marker: &Marker) -> Option<Released> {
        while let Ok(chunk) = self.chunks.try_recv() {
            self.pending.push_back(chunk);
        }
        // Chunks of this run before this watermark lost their high watermark (its write failed).
        self.pending
            .retain(|c| c.run != marker.run || c.n >= marker.n);
        let at = self
            .pending
            .iter()
            .position(|c| c.run == marker.run && c.n == marker.n)?;
        let chunk = self.pending.remove(at)?;
        let window = self
            .windows
            .remove(&chunk.table.id)
            .filter(|w| w.run == marker.run && w.n == marker.n);
        let read = chunk.rows.len() as u64;
        let empty = HashSet::new();
        let changed = self.changed.get(&chunk.table.id).unwrap_or(&empty);
        let rows: Vec<Row> = match &window {
            Some(w) if w.truncated => Vec::new(),
            Some(_) if !changed.is_empty() => chunk
                .rows
                .into_iter()
                .filter(|r| !changed.contains(&key_text(&chunk.table, r)))
                .collect(),
            Some(_) => chunk.rows,
            None => {
                // The low watermark precedes the high one in the binlog, and the stream of a
                // run reads both: this cannot happen. Publish nothing rather than a stale row.
                tracing::error!(source = %self.source, table = %chunk.table.id, "a backfill chunk's low watermark was not seen: its rows are dropped; re-sync the table with `sluice snapshot`");
                Vec::new()
            }
        };
        let table_name = chunk.table.id.to_string();
        self.book.published(
            &self.source,
            &chunk.backfill,
            &table_name,
            read,
            rows.len() as u64,
            chunk.after.clone(),
            chunk.done,
            chunk.failed.clone(),
        );
        self.follow_book();
        Some(Released {
            table: chunk.table,
            rows,
        })
    }
}

/// The database side: writes watermarks and reads chunks, one backfill after another.
pub struct Driver {
    pub conn: MySqlConnection,
    pub source: String,
    pub tables: HashMap<TableId, Arc<CapturedTable>>,
    pub signal: TableId,
    pub chunk_rows: usize,
    /// Most rows read per second (0: no limit).
    pub max_rows_per_second: u64,
    pub chunks: mpsc::Sender<Chunk>,
    pub requests: mpsc::UnboundedReceiver<BackfillState>,
}

pub type ChunkChannel = (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>);
pub type RequestChannel = (
    mpsc::UnboundedSender<BackfillState>,
    mpsc::UnboundedReceiver<BackfillState>,
);

/// Creates the channels between a [`Driver`] and its [`Tracker`].
pub fn channels() -> (ChunkChannel, RequestChannel) {
    // The driver may run this many chunks ahead of the stream.
    (mpsc::channel(8), mpsc::unbounded_channel())
}

enum RoundError {
    Closed,
    Failed(MySqlError),
}

impl From<MySqlError> for RoundError {
    fn from(e: MySqlError) -> Self {
        RoundError::Failed(e)
    }
}

/// A query the table refuses (a predicate naming a missing column, a syntax error): retrying
/// cannot help.
fn refused(e: &MySqlError) -> bool {
    e.sqlstate()
        .is_some_and(|s| s.starts_with("42") || s.starts_with("22"))
}

struct Round<'a> {
    conn: Conn,
    run: String,
    n: u64,
    driver: &'a Driver,
}

impl Driver {
    fn table(&self, name: &str) -> Option<&Arc<CapturedTable>> {
        TableId::parse(name, "").and_then(|id| self.tables.get(&id))
    }

    /// Works through `queue`, then through requests as the stream reads them, until the
    /// stream session ends. A definite error abandons its backfill; lost connections are
    /// retried.
    pub async fn run(mut self, queue: Vec<BackfillState>) {
        let mut queue: VecDeque<BackfillState> = queue.into();
        let mut backoff = Backoff::default();
        let run = format!("{:x}", now_us());
        let mut n = 0u64;
        loop {
            let mut bf = match queue.pop_front() {
                Some(bf) => bf,
                None => match self.requests.recv().await {
                    Some(bf) => bf,
                    None => return,
                },
            };
            loop {
                let conn = match self.open().await {
                    Ok(c) => c,
                    Err(e) if e.class() == ErrorClass::Transient => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %sluice_core::error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill cannot connect");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Err(e) => {
                        // No signal table: nothing can be published; the stream keeps going.
                        tracing::error!(source = %self.source, table = %bf.table, error = %sluice_core::error_chain(&e), "backfill cannot start");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                };
                let mut round = Round {
                    conn,
                    run: run.clone(),
                    n,
                    driver: &self,
                };
                let outcome = match round.backfill(&mut bf).await {
                    Ok(()) => Ok(true),
                    Err(RoundError::Closed) => Err(()),
                    Err(RoundError::Failed(e))
                        if e.class() == ErrorClass::Transient && !refused(&e) =>
                    {
                        let delay = backoff.next_delay();
                        tracing::warn!(table = %bf.table, error = %sluice_core::error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill interrupted; resuming after its last chunk");
                        tokio::time::sleep(delay).await;
                        Ok(false)
                    }
                    Err(RoundError::Failed(e)) => round
                        .abandon(&bf, sluice_core::error_chain(&e))
                        .await
                        .map(|()| true)
                        .map_err(|_| ()),
                };
                n = round.n;
                let _ = round.conn.disconnect().await;
                match outcome {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(()) => return,
                }
            }
            backoff.reset();
        }
    }

    async fn open(&self) -> Result<Conn, MySqlError> {
        let mut conn = connect(&self.conn).await?;
        check_commit_order(&mut conn, &self.source).await?;
        ensure_signal_table(&mut conn, &self.signal, &self.source).await?;
        Ok(conn)
    }
}

impl Round<'_> {
    async fn abandon(&mut self, bf: &BackfillState, reason: String) -> Result<(), RoundError> {
        let Some(table) = self.driver.table(&bf.table) else {
            return Ok(());
        };
        let schema = table.schema.clone();
        self.n += 1;
        self.mark(&schema, "low").await?;
        self.close(bf, &schema, Vec::new(), None, true, Some(reason))
            .await
    }

    async fn backfill(&mut self, bf: &mut BackfillState) -> Result<(), RoundError> {
        let d = self.driver;
        let Some(table) = d.table(&bf.table).cloned() else {
            return Err(RoundError::Failed(MySqlError::Setup(format!(
                "table {} is not captured by source {}",
                bf.table, d.source
            ))));
        };
        tracing::info!(
            source = %d.source,
            table = %bf.table,
            id = %bf.id,
            predicate = bf.predicate.as_deref().unwrap_or("(all rows)"),
            resume_after = ?bf.after,
            "backfill {}",
            if bf.after.is_some() { "resumed" } else { "started" }
        );
        let mut pace = ReadPace::new(&d.source, &bf.table, d.max_rows_per_second, None);
        loop {
            self.n += 1;
            self.mark(&table.schema, "low").await?;
            let (rows, last) = self.read_chunk(&table, bf).await?;
            pace.read(rows.len());
            let done = rows.len() < d.chunk_rows;
            self.close(bf, &table.schema, rows, last.clone(), done, None)
                .await?;
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

    /// Commits watermark `self.n` of `table`.
    async fn mark(&mut self, table: &TableSchema, edge: &str) -> Result<(), RoundError> {
        let d = self.driver;
        let marker = Marker {
            source: d.source.clone(),
            run: self.run.clone(),
            n: self.n,
            edge: edge.to_owned(),
            table: table.id.to_string(),
        };
        let content = serde_json::to_string(&marker).unwrap_or_default();
        write_signal(&mut self.conn, &d.signal, &d.source, MARKER_KIND, &content).await?;
        Ok(())
    }

    /// Hands chunk `self.n` to the stream, then commits its high watermark.
    async fn close(
        &mut self,
        bf: &BackfillState,
        table: &Arc<TableSchema>,
        rows: Vec<Row>,
        after: Option<Vec<String>>,
        done: bool,
        failed: Option<String>,
    ) -> Result<(), RoundError> {
        let d = self.driver;
        let chunk = Chunk {
            run: self.run.clone(),
            n: self.n,
            backfill: bf.id.clone(),
            table: table.clone(),
            rows,
            after,
            done,
            failed,
        };
        d.chunks.send(chunk).await.map_err(|_| RoundError::Closed)?;
        self.mark(table, "high").await
    }

    /// Reads the next chunk: rows after `bf.after` by primary key, matching the predicate.
    /// Returns the rows and the last row's key as SQL literals.
    async fn read_chunk(
        &mut self,
        table: &CapturedTable,
        bf: &BackfillState,
    ) -> Result<(Vec<Row>, Option<Vec<String>>), MySqlError> {
        let d = self.driver;
        let context = || format!("reading a backfill chunk of {}", table.schema.id);
        let keys: Vec<String> = table.key_names.iter().map(|k| quote_ident(k)).collect();
        let mut conditions = Vec::new();
        if let Some(after) = &bf.after {
            conditions.push(after_condition(&keys, after));
        }
        if let Some(p) = &bf.predicate {
            conditions.push(format!("({p})"));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {}",
            table.select_list(),
            quote_table(&table.schema.id),
            keys.join(", "),
            d.chunk_rows
        );
        let mut result = self
            .conn
            .exec_iter(sql, ())
            .await
            .map_err(MySqlError::query(context()))?;
        let mut stream = result
            .stream::<mysql_async::Row>()
            .await
            .map_err(MySqlError::query(context()))?
            .ok_or_else(|| MySqlError::Setup(format!("{}: no result set", context())))?;
        let mut rows = Vec::with_capacity(d.chunk_rows);
        let mut last = None;
        while let Some(row) = stream.next().await {
            let values = row.map_err(MySqlError::query(context()))?.unwrap();
            last = Some(
                table
                    .schema
                    .key
                    .iter()
                    .map(|&k| values.get(k).map(|v| v.as_sql(false)).unwrap_or_default())
                    .collect(),
            );
            rows.push(table.row(values));
        }
        Ok((rows, last))
    }
}

/// `(k1, k2, …) > (v1, v2, …)` spelled out as `k1 > v1 OR (k1 = v1 AND k2 > v2) OR …`, which
/// the range optimizer of every MySQL and MariaDB version reads as an index range.
fn after_condition(keys: &[String], literals: &[String]) -> String {
    let mut alternatives = Vec::new();
    for i in 0..keys.len().min(literals.len()) {
        let mut terms: Vec<String> = (0..i)
            .map(|j| format!("{} = {}", keys[j], literals[j]))
            .collect();
        terms.push(format!("{} > {}", keys[i], literals[i]));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    format!("({})", alternatives.join(" OR "))
}

#[cfg(test)]
mod tests {
    use sluice_core::Value;

    use super::*;

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            Arc::from("app"),
            Arc::from("db"),
            TableId::new("db", "t"),
            vec![Arc::from("id"), Arc::from("v")].into(),
            vec![0],
            Arc::from("sluice.db.t"),
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
        let book = BackfillBook {
            state: vec![BackfillState::new("b".into(), "db.t".into(), None)],
            ..BackfillBook::default()
        };
        (
            Tracker::new("app".into(), HashMap::new(), rx, req, book),
            tx,
        )
    }

    fn marker(n: u64, edge: &str) -> String {
        serde_json::to_string(&Marker {
            source: "app".into(),
            run: "r".into(),
            n,
            edge: edge.into(),
            table: "db.t".into(),
        })
        .expect("json")
    }

    fn chunk(n: u64, rows: Vec<Row>, done: bool) -> Chunk {
        Chunk {
            run: "r".into(),
            n,
            backfill: "b".into(),
            table: schema(),
            rows,
            after: Some(vec![n.to_string()]),
            done,
            failed: None,
        }
    }

    fn ids(released: Option<Released>) -> Vec<i64> {
        released
            .expect("released")
            .rows
            .iter()
            .map(|r| match r.values[0] {
                Some(Value::Int(i)) => i,
                _ => -1,
            })
            .collect()
    }

    #[test]
    fn rows_changed_between_the_watermarks_are_dropped() {
        let (mut t, tx) = tracker();
        // The backfill is queued: changes are noted from the start.
        assert!(t.active());
        assert!(t.signal(MARKER_KIND, &marker(1, "low")).is_none());
        t.touched(&schema(), &row(2, "newer"));
        tx.try_send(chunk(
            1,
            vec![row(1, "a"), row(2, "old"), row(3, "c")],
            false,
        ))
        .expect("send");
        assert_eq!(ids(t.signal(MARKER_KIND, &marker(1, "high"))), vec![1, 3]);
        assert!(
            t.windows.is_empty(),
            "the window closes at the high watermark"
        );
        assert_eq!((t.book.state[0].rows, t.book.state[0].superseded), (2, 1));
        // Between chunks, a change is still noted: the stream published that row's state,
        // which the next chunk's read sees and must not publish again.
        t.touched(&schema(), &row(4, "later"));
        assert!(t.signal(MARKER_KIND, &marker(2, "low")).is_none());
        tx.try_send(chunk(2, vec![row(4, "later"), row(5, "e")], true))
            .expect("send");
        assert_eq!(ids(t.signal(MARKER_KIND, &marker(2, "high"))), vec![5]);
        assert!(t.book.state.is_empty());
        assert_eq!(t.book.complete, vec!["db.t".to_owned()]);
        // With no backfill left, nothing is noted.
        assert!(!t.active(), "no backfill under way");
    }

    #[test]
    fn a_truncate_between_the_watermarks_drops_the_chunk_and_other_sources_are_ignored() {
        let (mut t, tx) = tracker();
        t.signal(MARKER_KIND, &marker(1, "low"));
        t.truncated(&TableId::new("db", "t"));
        tx.try_send(chunk(1, vec![row(1, "a")], false))
            .expect("send");
        assert!(ids(t.signal(MARKER_KIND, &marker(1, "high"))).is_empty());
        let other = marker(2, "low").replace("\"app\"", "\"other\"");
        assert!(t.signal(MARKER_KIND, &other).is_none());
        assert!(t.windows.is_empty());
    }

    #[test]
    fn a_chunk_whose_high_watermark_was_lost_is_dropped_at_the_next() {
        let (mut t, tx) = tracker();
        t.signal(MARKER_KIND, &marker(1, "low"));
        tx.try_send(chunk(1, vec![row(1, "a")], false))
            .expect("send");
        // Watermark 1's high write failed; the retry reads the chunk again as chunk 2.
        t.signal(MARKER_KIND, &marker(2, "low"));
        tx.try_send(chunk(2, vec![row(1, "a")], false))
            .expect("send");
        assert_eq!(ids(t.signal(MARKER_KIND, &marker(2, "high"))), vec![1]);
        assert!(t.pending.is_empty());
    }

    #[test]
    fn composite_keys_resume_with_a_range_condition() {
        let keys = ["`a`".to_owned(), "`b`".to_owned()];
        assert_eq!(
            after_condition(&keys, &["1".into(), "'x'".into()]),
            "((`a` > 1) OR (`a` = 1 AND `b` > 'x'))"
        );
    }
}
