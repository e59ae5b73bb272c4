//! The binlog stream: one replica session (`COM_BINLOG_DUMP`), decoded into batches.
//!
//! Over 700 lines: one binlog session, whose decoding, table maps, GTIDs and markers share its state.
//!
//! Like the Postgres stream it runs on a `current_thread` runtime on a thread of its own and
//! hands batches to the capture pipeline through a bounded channel.
//!
//! * **Transactions.** A transaction starts at its GTID event (MariaDB, MySQL) or its `BEGIN`
//!   query, and ends at its XID event, a `COMMIT` query, or — for DDL, which is a transaction
//!   by itself — the statement's own query event. Events are numbered from the position just
//!   after the GTID/BEGIN event, so a transaction published twice (after a crash) carries the
//!   same positions both times and consumers drop the repeat.
//! * **Checkpoints** close a batch only at a transaction end: the binlog `file:pos` just after
//!   it, with its GTID.
//! * **Schema changes.** After `ALTER TABLE` the server writes a new table map (with a new
//!   table id) before the table's next rows, so events after the change carry the new columns
//!   and events before it the old ones, with no catalog lookup in between.
//! * **MariaDB.** `@mariadb_slave_capability = 4` makes the server send GTID events (rather
//!   than `BEGIN` queries); its event types 0xa0–0xa3 are read or skipped here; compressed
//!   events (`log_bin_compress`) are refused with the setting to change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use mysql_async::binlog::events::{Event, EventData, TableMapEvent};
use mysql_async::binlog::EventType;
use mysql_async::prelude::*;
use mysql_async::BinlogStreamRequest;
use sluice_core::event::binlog_file_seq;
use sluice_core::{
    Batch, BinlogTxn, ChangeEvent, Op, Position, SourceCheckpoint, SourceInfo, TableId,
    TableSchema, Value,
};
use tokio::sync::{mpsc, watch};

use crate::binlog::{
    GtidSet, Images, RowImages, TableMap, MARIADB_COMPRESSED_FIRST, MARIADB_COMPRESSED_LAST,
    MARIADB_GTID,
};
use crate::client::connect;
use crate::config::MySqlConnection;
use crate::error::MySqlError;
use crate::table::{now_us, BinlogPos, CapturedTable};
use sluice_core::backfill::Tracker;
use sluice_core::batch::batch_due;
use sluice_core::source::spawn_session_thread;

/// A session that hears nothing (not even a heartbeat, sent every second) for this long is
/// dead, and is restarted from the last checkpoint.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);

pub struct StreamContext {
    pub source_name: Arc<str>,
    pub connection: MySqlConnection,
    pub server_id: u32,
    /// Captured tables by (database, table).
    pub tables: HashMap<(String, String), Arc<CapturedTable>>,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub out: mpsc::Sender<Batch>,
    pub stop: watch::Receiver<bool>,
    /// The table backfill watermarks and re-sync requests are written into.
    pub signal: TableId,
    /// The backfills' side in the stream.
    pub backfill: Tracker,
    /// The initial snapshot is being read as backfills (MySQL): no checkpoint until they
    /// are all published, so that a run stopped before that starts the snapshot over.
    pub snapshot_by_backfill: bool,
    /// MySQL: the GTID set executed up to `start`, kept up to date at every commit for the
    /// checkpoints (`None` where unknown, and on MariaDB).
    pub gtid_set: Option<GtidSet>,
    /// MySQL: ask for the transactions not in `gtid_set` (`COM_BINLOG_DUMP_GTID`) instead of
    /// reading from `start`'s `file:pos` (a resume from a checkpoint that has the set).
    pub dump_by_gtid_set: bool,
}

/// Runs one binlog session to its end on a dedicated thread.
/// Starts at `start`, or — on MariaDB, when resuming with a GTID position — right after the
/// transactions of `gtid`, through `@slave_connect_state` (the server checks that its binlog
/// holds that history: a diverged or purged one is refused).
pub fn spawn_session(
    start: BinlogPos,
    gtid: Option<String>,
    ctx: StreamContext,
) -> std::thread::JoinHandle<Result<(), MySqlError>> {
    let name = format!("binlog-{}", ctx.source_name);
    spawn_session_thread(name, MySqlError::Setup, move || {
        run_session(start, gtid, ctx)
    })
}

async fn run_session(
    start: BinlogPos,
    gtid: Option<String>,
    mut ctx: StreamContext,
) -> Result<(), MySqlError> {
    let mut conn = connect(&ctx.connection).await?;
    let checksum: Option<String> = conn
        .query_first("SELECT @@global.binlog_checksum")
        .await
        .map_err(MySqlError::query("reading binlog_checksum"))?;
    let version: Option<String> = conn
        .query_first("SELECT @@version")
        .await
        .map_err(MySqlError::query("reading the server version"))?;
    // MariaDB sends the session's first (artificial) rotate with checksum bytes after the
    // file name; MySQL 8 sends it without them.
    let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
    for sql in [
        // MariaDB: send GTID events; without this they arrive as BEGIN queries.
        "SET @mariadb_slave_capability = 4",
        // A heartbeat every second (nanoseconds) when idle, so that silence means trouble.
        "SET @master_heartbeat_period = 1000000000",
    ] {
        conn.query_drop(sql)
            .await
            .map_err(MySqlError::query(format!(
                "preparing the binlog session ({sql})"
            )))?;
    }
    // MariaDB's GTID position at the start point, one GTID per replication domain: kept up to
    // date at every commit, so that each checkpoint carries the complete position (MySQL has
    // no BINLOG_GTID_POS: its checkpoints carry the last transaction's GTID only).
    let gtid_state: Option<String> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&start.file, start.pos))
        .await
        .ok()
        .flatten();
    // GTID start only where the server has GTIDs (MariaDB: BINLOG_GTID_POS answered).
    let by_gtid = gtid.filter(|_| gtid_state.is_some());
    if let Some(g) = &by_gtid {
        for sql in [
            format!("SET @slave_connect_state = '{g}'"),
            "SET @slave_gtid_strict_mode = 1".to_owned(),
        ] {
            conn.query_drop(&sql)
                .await
                .map_err(MySqlError::query(format!(
                    "preparing the binlog session ({sql})"
                )))?;
        }
    }
    // MySQL: by GTID set when resuming with one (the server sends the transactions missing
    // from it, or refuses if they were purged).
    if mariadb {
        ctx.gtid_set = None;
    }
    let by_set = ctx
        .gtid_set
        .clone()
        .filter(|set| ctx.dump_by_gtid_set && !set.is_empty());
    let request = match (&by_gtid, &by_set) {
        // With @slave_connect_state the server ignores the file name and position.
        (Some(_), _) => BinlogStreamRequest::new(ctx.server_id)
            .with_filename(b"")
            .with_pos(4u64),
        (None, Some(set)) => BinlogStreamRequest::new(ctx.server_id)
            .with_gtid()
            .with_gtid_set(set.sids())
            .with_filename(b"")
            .with_pos(4u64),
        (None, None) => BinlogStreamRequest::new(ctx.server_id)
            .with_filename(start.file.as_bytes())
            .with_pos(start.pos),
    };
    let mut stream = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| dump_error(e, &start, &ctx.source_name))?;
    match (&by_gtid, &by_set) {
        (Some(g), _) => {
            tracing::info!(source = %ctx.source_name, from = %start, gtid = %g, "binlog stream started (from the GTID position)")
        }
        (None, Some(set)) => {
            tracing::info!(source = %ctx.source_name, from = %start, gtid_set = %set, "binlog stream started (from the GTID set)")
        }
        (None, None) => {
            tracing::info!(source = %ctx.source_name, from = %start, "binlog stream started")
        }
    }
    let mut session = Session::new(
        ctx,
        start,
        mariadb && checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE")),
    );
    session.gtids = gtid_state.map(|s| parse_gtid_state(&s));
    let result = session.stream(&mut stream).await;
    drop(stream);
    result
}

/// Error 1236 is the server refusing the requested position (purged file, bad offset): it
/// will not go away by retrying.
fn dump_error(e: mysql_async::Error, at: &BinlogPos, source: &str) -> MySqlError {
    match &e {
        mysql_async::Error::Server(s) if s.code == 1236 => MySqlError::Setup(format!(
            "the server cannot send the binlog from {at} (or its GTID position): {}; if the binlog was purged or the server's history diverged, the changes since then are lost: start over with `sluice run --resnapshot {source}`",
            s.message
        )),
        _ => MySqlError::Query {
            context: format!("reading the binlog from {at}"),
            source: e,
        },
    }
}

struct Txn {
    /// Position just after the transaction's first event (GTID or BEGIN).
    begin: u64,
    gtid: Option<String>,
    /// FL_STANDALONE (DDL): the statement ends the transaction.
    standalone: bool,
    info: Arc<BinlogTxn>,
    commit_time_us: i64,
    tx_id: Option<u64>,
    seq: u64,
}

/// A table map Sluice captures.
struct Mapped {
    map: TableMap,
    schema: Arc<TableSchema>,
}

struct Session {
    ctx: StreamContext,
    file: String,
    file_seq: u32,
    /// Whether the next rotate's name carries checksum bytes (on MariaDB it does before the
    /// first format description of a session, when the server checksums events).
    checksums: bool,
    seen_fde: bool,
    txn: Option<Txn>,
    /// table id → the table's shape, or `None` for tables not captured.
    maps: HashMap<u64, Option<Arc<Mapped>>>,
    /// The current shape of each captured table, reused while the columns stay the same.
    shapes: HashMap<(String, String), Arc<TableSchema>>,
    batch: Vec<ChangeEvent>,
    pending_checkpoint: Option<SourceCheckpoint>,
    pending_since: Option<Instant>,
    /// End position of the last event read.
    last_end: u64,
    /// MariaDB: the last committed GTID of each replication domain (`None` on MySQL).
    gtids: Option<std::collections::BTreeMap<u32, String>>,
}

impl Session {
    fn new(ctx: StreamContext, start: BinlogPos, checksums: bool) -> Session {
        let shapes = ctx
            .tables
            .iter()
            .map(|(k, t)| (k.clone(), t.schema.clone()))
            .collect();
        let max = ctx.max_batch;
        Session {
            ctx,
            file_seq: binlog_file_seq(&start.file).unwrap_or(0),
            last_end: start.pos,
            gtids: None,
            file: start.file,
            checksums,
            seen_fde: false,
            txn: None,
            maps: HashMap::new(),
            shapes,
            batch: Vec::with_capacity(max),
            pending_checkpoint: None,
            pending_since: None,
        }
    }

    async fn stream(&mut self, stream: &mut mysql_async::BinlogStream) -> Result<(), MySqlError> {
        let mut stop = self.ctx.stop.clone();
        let mut last_heard = Instant::now();
        loop {
            let deadline = self.pending_since.map(|t| t + self.ctx.max_delay);
            let silence = tokio::time::Instant::from_std(last_heard + SILENCE_LIMIT);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return self.flush().await,
                ev = stream.next() => {
                    last_heard = Instant::now();
                    let mut next = Some(ev);
                    let mut drained = 0;
                    // Take what is already buffered without another trip through select.
                    while let Some(ev) = next.take() {
                        match ev {
                            Some(Ok(ev)) => self.handle(ev).await?,
                            Some(Err(e)) => {
                                let at = BinlogPos { file: self.file.clone(), pos: self.last_end };
                                return Err(dump_error(e, &at, &self.ctx.source_name));
                            }
                            // A server shutting down ends the stream: the caller retries.
                            None => return Err(MySqlError::Ended),
                        }
                        drained += 1;
                        if drained < 512 {
                            next = stream.next().now_or_never();
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.flush().await?,
                _ = tokio::time::sleep_until(silence) => {
                    return Err(MySqlError::Silent(SILENCE_LIMIT));
                }
            }
        }
    }

    async fn handle(&mut self, ev: Event) -> Result<(), MySqlError> {
        let header = ev.header();
        let raw = header.event_type_raw();
        let end = header.log_pos() as u64;
        if end > 0 {
            self.last_end = end;
        }
        match raw {
            t if t == EventType::ROTATE_EVENT as u8 => {
                if let Ok(Some(EventData::RotateEvent(r))) = ev.read_data() {
                    let mut name = r.name_raw().to_vec();
                    if !self.seen_fde && self.checksums && name.len() > 4 {
                        name.truncate(name.len() - 4);
                    }
                    let name = String::from_utf8_lossy(&name).into_owned();
                    if let Some(seq) = binlog_file_seq(&name) {
                        if name != self.file {
                            tracing::debug!(file = %name, "binlog rotated");
                            // Table ids hold within one server run only: a file written after
                            // a restart reuses them for other tables.
                            self.maps.clear();
                        }
                        self.file = name;
                        self.file_seq = seq;
                    }
                }
            }
            t if t == EventType::FORMAT_DESCRIPTION_EVENT as u8 => {
                self.seen_fde = true;
                // A file's start: its table maps come again before its rows (see above).
                self.maps.clear();
            }
            MARIADB_GTID => {
                if let Some(g) = crate::binlog::MariaGtid::parse(ev.data(), header.server_id()) {
                    self.begin(
                        end,
                        Some(g.to_string()),
                        g.standalone,
                        Some(g.seq),
                        header.timestamp(),
                    );
                }
            }
            t if t == EventType::GTID_EVENT as u8 => {
                if let Ok(Some(EventData::GtidEvent(g))) = ev.read_data() {
                    let sid = g.sid();
                    let uuid = format!(
                        "{}-{}-{}-{}-{}",
                        hex(&sid[0..4]),
                        hex(&sid[4..6]),
                        hex(&sid[6..8]),
                        hex(&sid[8..10]),
                        hex(&sid[10..16])
                    );
                    self.begin(
                        end,
                        Some(format!("{uuid}:{}", g.gno())),
                        false,
                        Some(g.gno()),
                        header.timestamp(),
                    );
                }
            }
            t if t == EventType::ANONYMOUS_GTID_EVENT as u8 => {
                self.begin(end, None, false, None, header.timestamp());
            }
            t if t == EventType::QUERY_EVENT as u8 => {
                let Ok(Some(EventData::QueryEvent(q))) = ev.read_data() else {
                    return Ok(());
                };
                let query = String::from_utf8_lossy(q.query_raw()).into_owned();
                let schema = q.schema().into_owned();
                let trimmed = query.trim();
                if trimmed.eq_ignore_ascii_case("BEGIN") {
                    if self.txn.is_none() {
                        self.begin(end, None, false, None, header.timestamp());
                    }
                } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                    self.commit(end).await?;
                } else {
                    // DDL (and other statements logged as text): a transaction by itself.
                    if self.txn.is_none() {
                        self.begin(end, None, true, None, header.timestamp());
                    }
                    if let Some((db, table)) = truncated_table(trimmed, &schema) {
                        self.truncate(&db, &table);
                    }
                    let standalone = self.txn.as_ref().is_none_or(|t| t.standalone);
                    if standalone {
                        self.commit(end).await?;
                    }
                }
            }
            t if t == EventType::TABLE_MAP_EVENT as u8 => {
                let tme: TableMapEvent<'_> = ev
                    .read_event()
                    .map_err(|e| MySqlError::Decode(format!("table map: {e}")))?;
                self.table_map(&tme, &ev)?;
            }
            t if t == EventType::XID_EVENT as u8 => self.commit(end).await?,
            t if t == EventType::PARTIAL_UPDATE_ROWS_EVENT as u8 => {
                return Err(MySqlError::Setup(
                    "the binlog holds partial JSON updates, which cannot be captured: set binlog_row_value_options = '' on the server".into(),
                ));
            }
            t if t == EventType::TRANSACTION_PAYLOAD_EVENT as u8 => {
                return Err(MySqlError::Setup(
                    "the binlog holds compressed transactions (binlog_transaction_compression = ON), which cannot be decoded: set binlog_transaction_compression = OFF on the server; the changes in compressed transactions must be re-read with `sluice run --resnapshot`".into(),
                ));
            }
            t if (MARIADB_COMPRESSED_FIRST..=MARIADB_COMPRESSED_LAST).contains(&t) => {
                return Err(MySqlError::Setup(
                    "the binlog holds compressed events (log_bin_compress = ON), which cannot be decoded: set log_bin_compress = OFF on the server; the changes in compressed events must be re-read with `sluice run --resnapshot`".into(),
                ));
            }
            t if t == EventType::WRITE_ROWS_EVENT as u8
                || t == EventType::UPDATE_ROWS_EVENT as u8
                || t == EventType::DELETE_ROWS_EVENT as u8
                || t == EventType::WRITE_ROWS_EVENT_V1 as u8
                || t == EventType::UPDATE_ROWS_EVENT_V1 as u8
                || t == EventType::DELETE_ROWS_EVENT_V1 as u8 =>
            {
                self.rows(&ev, end, header.timestamp()).await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn begin(
        &mut self,
        end: u64,
        gtid: Option<String>,
        standalone: bool,
        tx_id: Option<u64>,
        ts: u32,
    ) {
        self.txn = Some(Txn {
            begin: end,
            info: Arc::new(BinlogTxn {
                file: self.file.clone(),
                gtid: gtid.clone(),
            }),
            gtid,
            standalone,
            commit_time_us: ts as i64 * 1_000_000,
            tx_id,
            seq: 0,
        });
    }

    async fn commit(&mut self, end: u64) -> Result<(), MySqlError> {
        let txn = self.txn.take();
        if end == 0 {
            return Ok(());
        }
        let gtid = txn.and_then(|t| t.gtid);
        if let (Some(set), Some(g)) = (self.ctx.gtid_set.as_mut(), gtid.as_deref()) {
            set.add_gtid(g);
        }
        if self.ctx.snapshot_by_backfill {
            let reading = self
                .ctx
                .backfill
                .book
                .state
                .iter()
                .any(|b| b.id.starts_with(crate::backfill::SNAPSHOT_ID_PREFIX));
            if reading {
                return self.flush_if_due().await;
            }
            self.ctx.snapshot_by_backfill = false;
            tracing::info!(source = %self.ctx.source_name, tables = self.ctx.backfill.book.complete.len(), "initial snapshot published: checkpoints resume");
        }
        self.pending_checkpoint = Some(SourceCheckpoint {
            connector: "mysql".into(),
            position: format!("{}:{end}", self.file),
            snapshot_done: true,
            slot: None,
            gtid: self.gtid_position(gtid),
            gtid_set: self
                .ctx
                .gtid_set
                .as_ref()
                .filter(|set| !set.is_empty())
                .map(GtidSet::to_string),
            written_at_ms: now_us() / 1000,
            tables: Some(self.ctx.backfill.book.complete.clone()),
            backfills: self.ctx.backfill.book.state.clone(),
            abandoned: self.ctx.backfill.book.abandoned.clone(),
        });
        self.flush_if_due().await
    }

    /// Sends the batch once it is full or has waited `max_delay`.
    async fn flush_if_due(&mut self) -> Result<(), MySqlError> {
        let limits = (self.ctx.max_batch, self.ctx.max_delay);
        if batch_due(self.batch.len(), &mut self.pending_since, limits) {
            self.flush().await?;
        }
        Ok(())
    }

    /// The GTID position after a commit of `gtid`: on MariaDB every domain's last GTID
    /// (`0-1-42,1-2-7`), else the transaction's own GTID.
    fn gtid_position(&mut self, gtid: Option<String>) -> Option<String> {
        match (self.gtids.as_mut(), gtid) {
            (Some(state), Some(g)) => {
                if let Some(domain) = g.split('-').next().and_then(|d| d.parse().ok()) {
                    state.insert(domain, g);
                }
                Some(state.values().cloned().collect::<Vec<_>>().join(","))
            }
            (Some(state), None) => {
                (!state.is_empty()).then(|| state.values().cloned().collect::<Vec<_>>().join(","))
            }
            (None, g) => g,
        }
    }

    fn table_map(&mut self, tme: &TableMapEvent<'_>, ev: &Event) -> Result<(), MySqlError> {
        let id = tme.table_id();
        let key = (
            tme.database_name().into_owned(),
            tme.table_name().into_owned(),
        );
        if key.0 == self.ctx.signal.schema && key.1 == self.ctx.signal.name {
            let map = TableMap::from_event(tme, ev, &[]).map_err(MySqlError::Setup)?;
            let names: Arc<[Arc<str>]> = map
                .columns
                .iter()
                .map(|c| Arc::from(c.name.as_str()))
                .collect();
            let schema = Arc::new(TableSchema::new(
                self.ctx.source_name.clone(),
                Arc::from(key.0.as_str()),
                self.ctx.signal.clone(),
                names,
                Vec::new(),
                Arc::from(""),
            ));
            self.maps.insert(id, Some(Arc::new(Mapped { map, schema })));
            return Ok(());
        }
        let Some(captured) = self.ctx.tables.get(&key) else {
            self.maps.insert(id, None);
            return Ok(());
        };
        let known = self
            .maps
            .get(&id)
            .and_then(|m| m.as_ref())
            .is_some_and(|m| *m.schema.id.schema == *key.0 && *m.schema.id.name == *key.1);
        if known {
            return Ok(()); // the same table id for the same table: the same shape
        }
        let map =
            TableMap::from_event(tme, ev, &captured.json_columns).map_err(MySqlError::Setup)?;
        let current = self.shapes.get(&key).cloned();
        let same = current.as_ref().is_some_and(|s| {
            s.columns.len() == map.columns.len()
                && s.columns
                    .iter()
                    .zip(&map.columns)
                    .all(|(a, b)| **a == *b.name)
        });
        let schema = match current {
            Some(s) if same => s,
            _ => {
                let names: Arc<[Arc<str>]> = map
                    .columns
                    .iter()
                    .map(|c| Arc::from(c.name.as_str()))
                    .collect();
                let key_idx = if map.key.is_empty() {
                    captured
                        .key_names
                        .iter()
                        .filter_map(|k| map.columns.iter().position(|c| c.name == *k))
                        .collect()
                } else {
                    map.key.clone()
                };
                let schema = Arc::new(TableSchema::new(
                    captured.schema.source.clone(),
                    captured.schema.db.clone(),
                    captured.schema.id.clone(),
                    names,
                    key_idx,
                    captured.schema.topic.clone(),
                ));
                tracing::info!(table = %captured.schema.id, columns = schema.columns.len(), "table shape changed in the binlog");
                self.shapes.insert(key, schema.clone());
                schema
            }
        };
        self.maps.insert(id, Some(Arc::new(Mapped { map, schema })));
        Ok(())
    }

    async fn rows(&mut self, ev: &Event, end: u64, ts: u32) -> Result<(), MySqlError> {
        let data = ev
            .read_data()
            .map_err(|e| MySqlError::Decode(format!("rows event: {e}")))?;
        let Some(EventData::RowsEvent(rows)) = data else {
            return Ok(());
        };
        let mapped = match self.maps.get(&rows.table_id()) {
            Some(Some(mapped)) => mapped.clone(),
            Some(None) => return Ok(()), // a table Sluice does not capture
            None => {
                // Every rows event follows its table map: skipping it could drop a captured
                // table's rows, so stop instead.
                return Err(MySqlError::Decode(format!(
                    "a rows event for table id {} came without its table map",
                    rows.table_id()
                )));
            }
        };
        if self.txn.is_none() {
            self.begin(end, None, false, None, ts);
        }
        let signal = mapped.schema.id == self.ctx.signal;
        let decode_err =
            |e: std::io::Error| MySqlError::Decode(format!("a row of {}: {e}", mapped.schema.id));
        let images = RowImages::new(&mapped.map, &rows);
        let op = match images.images() {
            Images::After => Op::Insert,
            Images::Before => Op::Delete,
            Images::Both => Op::Update,
        };
        for row in images {
            let (b, a) = row.map_err(decode_err)?;
            if signal {
                if let Some(a) = &a {
                    self.signal(&mapped, a)?;
                }
                continue;
            }
            if self.ctx.backfill.active() {
                for r in [&b, &a].into_iter().flatten() {
                    self.ctx.backfill.touched(&mapped.schema, r);
                }
            }
            let key_changed = match (&b, &a) {
                (Some(b), Some(a)) => mapped.schema.key_differs(b, a),
                _ => false,
            };
            if key_changed {
                self.push(&mapped.schema, Op::Delete, b, None)?;
                self.push(&mapped.schema, Op::Insert, None, a)?;
            } else {
                self.push(&mapped.schema, op, b, a)?;
            }
            if self.batch.len() >= self.ctx.max_batch {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// A row written into the signal table: a watermark publishes the chunk rows it
    /// releases, as reads at its own position.
    fn signal(&mut self, mapped: &Mapped, row: &sluice_core::Row) -> Result<(), MySqlError> {
        let text = |name: &str| {
            let i = mapped.map.columns.iter().position(|c| c.name == name)?;
            match row.values.get(i)? {
                Some(Value::Text(t)) => Some(t.to_string()),
                Some(Value::Bytes(b)) => String::from_utf8(b.to_vec()).ok(),
                _ => None,
            }
        };
        let (Some(kind), Some(content)) = (text("kind"), text("content")) else {
            return Ok(());
        };
        if let Some(released) = crate::backfill::signal(&mut self.ctx.backfill, &kind, &content) {
            for row in released.rows {
                self.push(&released.table, Op::Read, None, Some(row))?;
                if let Some(ev) = self.batch.last_mut() {
                    ev.source.snapshot = true;
                }
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        table: &Arc<TableSchema>,
        op: Op,
        before: Option<sluice_core::Row>,
        after: Option<sluice_core::Row>,
    ) -> Result<(), MySqlError> {
        let txn = self.txn.as_mut().ok_or(MySqlError::Closed)?;
        self.batch.push(ChangeEvent {
            op,
            table: table.clone(),
            before,
            after,
            source: SourceInfo {
                connector: "mysql",
                position: Position::MySql {
                    file: self.file_seq,
                    pos: txn.begin,
                    seq: txn.seq,
                },
                tx_id: txn.tx_id,
                commit_time_us: txn.commit_time_us,
                snapshot: false,
                binlog: Some(txn.info.clone()),
            },
        });
        txn.seq += 1;
        Ok(())
    }

    /// A `TRUNCATE` of a captured table: one truncate event, published to every partition.
    fn truncate(&mut self, db: &str, table: &str) {
        let key = (db.to_owned(), table.to_owned());
        let Some(schema) = self.shapes.get(&key).cloned() else {
            return;
        };
        self.ctx.backfill.truncated(&schema.id);
        if self.txn.is_some() {
            let _ = self.push(&schema, Op::Truncate, None, None);
        }
    }

    async fn flush(&mut self) -> Result<(), MySqlError> {
        self.pending_since = None;
        if self.batch.is_empty() && self.pending_checkpoint.is_none() {
            return Ok(());
        }
        let events = std::mem::replace(&mut self.batch, Vec::with_capacity(self.ctx.max_batch));
        self.ctx
            .out
            .send(Batch {
                events,
                checkpoint: self.pending_checkpoint.take(),
            })
            .await
            .map_err(|_| MySqlError::Closed)
    }
}

/// `TRUNCATE [TABLE] [db.]name` → (db, name), with `default_db` for an unqualified name;
/// `None` for any other statement.
pub fn truncated_table(query: &str, default_db: &str) -> Option<(String, String)> {
    let mut rest = query.trim_start();
    rest = strip_word(rest, "truncate")?;
    if let Some(r) = strip_word(rest, "table") {
        rest = r;
    }
    let name = rest.trim().trim_end_matches(';').trim();
    let parts = split_qualified(name)?;
    match parts.as_slice() {
        [t] => Some((default_db.to_owned(), t.clone())),
        [d, t] => Some((d.clone(), t.clone())),
        _ => None,
    }
}

fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let head = text.get(..word.len())?;
    let tail = &text[word.len()..];
    (head.eq_ignore_ascii_case(word) && tail.starts_with(char::is_whitespace)).then_some(tail)
}

/// `a`, `` `a`.`b` ``, `a.b` → parts.
fn split_qualified(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = name.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            loop {
                match chars.next()? {
                    '`' if chars.peek() == Some(&'`') => {
                        chars.next();
                        part.push('`');
                    }
                    '`' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            None => return Some(parts),
            Some(c) if c.is_whitespace() => return Some(parts),
            Some(_) => return None,
        }
    }
}

/// `0-1-42,1-2-7` → domain → GTID.
fn parse_gtid_state(text: &str) -> std::collections::BTreeMap<u32, String> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .filter_map(|g| Some((g.split('-').next()?.parse().ok()?, g.to_owned())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_positions_keep_one_gtid_per_domain() {
        let state = parse_gtid_state("0-1-42, 1-2-7");
        assert_eq!(state.len(), 2);
        assert_eq!(state[&1], "1-2-7");
        assert!(parse_gtid_state("").is_empty());
    }

    #[test]
    fn truncate_statements_name_their_table() {
        assert_eq!(
            truncated_table("TRUNCATE TABLE `app`.`users`", "x"),
            Some(("app".into(), "users".into()))
        );
        assert_eq!(
            truncated_table("truncate users", "app"),
            Some(("app".into(), "users".into()))
        );
        assert_eq!(
            truncated_table("truncate table `we``ird`", "d"),
            Some(("d".into(), "we`ird".into()))
        );
        assert_eq!(truncated_table("ALTER TABLE users ADD c INT", "d"), None);
        assert_eq!(truncated_table("truncated_things", "d"), None);
    }
}
