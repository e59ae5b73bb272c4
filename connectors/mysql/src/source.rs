//! The MySQL/MariaDB source: table shapes, the consistent snapshot, and where a run starts.
//!
//! # Where a run starts
//!
//! | durable checkpoint      | what happens                                                   |
//! |-------------------------|----------------------------------------------------------------|
//! | none, or snapshot unfinished | snapshot (or, with `snapshot = "never"`, the current end of the binlog), then stream from the snapshot's binlog position |
//! | snapshot done           | stream from the checkpoint's `file:pos`                        |
//! | its binlog file purged  | refuse: the changes since then are gone; `--resnapshot` starts over |
//!
//! The snapshot needs no global lock on MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT`
//! and the `binlog_snapshot_file`/`binlog_snapshot_position` status of that same transaction
//! name exactly the binlog point the snapshot's rows are consistent with. MySQL has no such
//! status: there the stream starts at the binlog's end and every table is read as a backfill
//! between watermarks (see [`crate::backfill`]), with no checkpoint until all are published,
//! so that a run stopped before then starts the snapshot over as an unfinished MariaDB one
//! does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Conn;
use sluice_core::event::binlog_file_seq;
use sluice_core::source::SnapshotMode;
use sluice_core::{
    topic_name, BackfillBook, BackfillState, Batch, BinlogTxn, ChangeEvent, Op, Position,
    RunHandles, SourceCheckpoint, SourceInfo, TableId, TableSchema,
};

use crate::backfill::{self, MySqlChunks};
use crate::binlog::GtidSet;
use crate::client::{connect, quote_table};
use crate::config::MySqlConnection;
use crate::error::MySqlError;
use crate::stream::{spawn_session, StreamContext};
use crate::table::{current_position_and_gtids, now_us, BinlogPos, CapturedTable};
use crate::types::Kind;
use sluice_core::backfill::{Driver, Tracker};

/// Everything a MySQL/MariaDB source needs to run.
#[derive(Debug, Clone)]
pub struct MySqlSourceSettings {
    pub name: String,
    pub connection: MySqlConnection,
    /// Tables as `database.table`.
    pub tables: Vec<TableId>,
    /// The replica server id Sluice registers with (unique among the server's replicas).
    pub server_id: u32,
    pub snapshot: SnapshotMode,
    pub topic_prefix: String,
    pub max_batch_events: usize,
    pub max_batch_delay: Duration,
    /// The table backfill watermarks and re-sync requests are written into.
    pub signal_table: TableId,
    /// Rows per chunk of an incremental backfill.
    pub backfill_chunk_rows: usize,
    /// Most rows a backfill reads per second (0: no limit).
    pub backfill_max_rows_per_second: u64,
}

pub struct MySqlSource {
    settings: MySqlSourceSettings,
    tables: Vec<Arc<CapturedTable>>,
    /// A connection kept for measuring lag (made on first use).
    lag_conn: tokio::sync::Mutex<Option<Conn>>,
}

/// Where a stream session starts.
struct StreamStart {
    pos: BinlogPos,
    /// MariaDB: the GTID position to resume from.
    mariadb_gtid: Option<String>,
    /// MySQL: the GTID set executed up to `pos`, if known.
    gtid_set: Option<GtidSet>,
    /// MySQL: start by that set (`COM_BINLOG_DUMP_GTID`) rather than by `pos`.
    by_gtid_set: bool,
}

impl MySqlSource {
    /// Streams from `start`, running the backfills of `book` beside it. With
    /// `snapshot_by_backfill`, no checkpoint is written until the queued backfills (the
    /// initial snapshot) are all published.
    async fn stream(
        &self,
        start: StreamStart,
        book: BackfillBook,
        snapshot_by_backfill: bool,
        handles: RunHandles,
    ) -> Result<(), MySqlError> {
        let s = &self.settings;
        let captured: HashMap<TableId, Arc<CapturedTable>> = self
            .tables
            .iter()
            .map(|t| (t.schema.id.clone(), t.clone()))
            .collect();
        let ((chunk_tx, chunk_rx), (request_tx, request_rx)) = sluice_core::backfill::channels();
        let queue = book.state.clone();
        let driver = Driver {
            reader: MySqlChunks {
                conn: s.connection.clone(),
                source: s.name.clone(),
                signal: s.signal_table.clone(),
            },
            source: s.name.clone(),
            default_schema: "",
            tables: captured.clone(),
            chunk_rows: s.backfill_chunk_rows,
            max_rows_per_second: s.backfill_max_rows_per_second,
            chunks: chunk_tx,
            requests: request_rx,
        };
        let ctx = StreamContext {
            source_name: Arc::from(s.name.as_str()),
            connection: s.connection.clone(),
            server_id: s.server_id,
            tables: self
                .tables
                .iter()
                .map(|t| {
                    (
                        (t.schema.id.schema.clone(), t.schema.id.name.clone()),
                        t.clone(),
                    )
                })
                .collect::<HashMap<_, _>>(),
            max_batch: s.max_batch_events,
            max_delay: s.max_batch_delay,
            out: handles.out,
            stop: handles.stop,
            signal: s.signal_table.clone(),
            backfill: Tracker::new(
                s.name.clone(),
                "",
                captured.into_keys().collect(),
                chunk_rx,
                request_tx,
                book,
            ),
            snapshot_by_backfill,
            gtid_set: start.gtid_set,
            dump_by_gtid_set: start.by_gtid_set,
        };
        let session = spawn_session(start.pos, start.mariadb_gtid, ctx);
        // The driver ends when the session drops its side of the request channel.
        let driver = tokio::spawn(driver.run(queue));
        let result = tokio::task::spawn_blocking(move || session.join())
            .await
            .map_err(|e| MySqlError::Setup(format!("stream thread lost: {e}")))?
            .unwrap_or_else(|_| Err(MySqlError::Setup("stream thread panicked".into())));
        driver.abort();
        result
    }

    /// Every configured table as `database.table`, sorted.
    fn configured(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .iter()
            .map(|t| t.schema.id.to_string())
            .collect();
        names.sort();
        names
    }

    /// The initial snapshot as backfills: one per configured table, no table complete.
    fn snapshot_book(&self) -> BackfillBook {
        let micros = now_us();
        BackfillBook {
            state: self
                .configured()
                .into_iter()
                .map(|table| {
                    BackfillState::new(
                        format!("{}{table}-{micros:x}", backfill::SNAPSHOT_ID_PREFIX),
                        table,
                        None,
                    )
                })
                .collect(),
            complete: Vec::new(),
            abandoned: Vec::new(),
        }
    }

    /// Reads every table inside one consistent-snapshot transaction and returns the binlog
    /// position the rows are consistent with; `None` on a server that cannot name that
    /// position (MySQL: `binlog_snapshot_file` is MariaDB's).
    async fn snapshot(
        &self,
        conn: &mut Conn,
        handles: &RunHandles,
    ) -> Result<Option<BinlogPos>, MySqlError> {
        let s = &self.settings;
        let has_point: Vec<(String, String)> = conn
            .query("SHOW GLOBAL STATUS LIKE 'binlog_snapshot_file'")
            .await
            .map_err(MySqlError::query("looking for binlog_snapshot_file"))?;
        if has_point.is_empty() {
            return Ok(None);
        }
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(MySqlError::query("setting the snapshot's isolation level"))?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(MySqlError::query("starting the snapshot transaction"))?;
        let status: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(MySqlError::query("reading the snapshot's binlog position"))?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(pos)) = (
            get("binlog_snapshot_file"),
            get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok()),
        ) else {
            return Err(MySqlError::Setup(format!(
                "source {}: the server reports binlog_snapshot_file but no binlog_snapshot_position inside the snapshot transaction: a consistent snapshot cannot be placed in the binlog; use snapshot = \"never\" and `sluice snapshot` per table instead",
                s.name
            )));
        };
        let Some(file_seq) = binlog_file_seq(&file) else {
            return Err(MySqlError::Setup(format!(
                "binlog file name {file:?} has no numeric suffix"
            )));
        };
        let point = BinlogPos { file, pos };
        tracing::info!(source = %s.name, tables = self.tables.len(), at = %point, "initial snapshot started");
        let txn = Arc::new(BinlogTxn {
            file: point.file.clone(),
            gtid: None,
        });
        let read_at = now_us();
        let mut seq: u64 = 0;
        let mut total: u64 = 0;
        let mut batch = Vec::with_capacity(s.max_batch_events);
        for table in &self.tables {
            let sql = format!(
                "SELECT {} FROM {}",
                table.select_list(),
                quote_table(&table.schema.id)
            );
            let context = || format!("reading the snapshot of {}", table.schema.id);
            // A SELECT: exactly one result set.
            let mut stream = conn
                .exec_stream::<mysql_async::Row, _, _>(sql, ())
                .await
                .map_err(MySqlError::query(context()))?;
            use futures_util::StreamExt as _;
            while let Some(row) = stream.next().await {
                let row = row.map_err(MySqlError::query(context()))?;
                let values = table.row(row.unwrap());
                batch.push(ChangeEvent {
                    op: Op::Read,
                    table: table.schema.clone(),
                    before: None,
                    after: Some(values),
                    source: SourceInfo {
                        connector: "mysql",
                        position: Position::MySql {
                            file: file_seq,
                            pos: point.pos,
                            seq,
                        },
                        tx_id: None,
                        commit_time_us: read_at,
                        snapshot: true,
                        binlog: Some(txn.clone()),
                    },
                });
                seq += 1;
                total += 1;
                if batch.len() >= s.max_batch_events {
                    let events =
                        std::mem::replace(&mut batch, Vec::with_capacity(s.max_batch_events));
                    handles
                        .out
                        .send(Batch {
                            events,
                            checkpoint: None,
                        })
                        .await
                        .map_err(|_| MySqlError::Closed)?;
                }
            }
        }
        if !batch.is_empty() {
            handles
                .out
                .send(Batch {
                    events: batch,
                    checkpoint: None,
                })
                .await
                .map_err(|_| MySqlError::Closed)?;
        }
        conn.query_drop("COMMIT")
            .await
            .map_err(MySqlError::query("ending the snapshot transaction"))?;
        tracing::info!(source = %s.name, rows = total, "initial snapshot read");
        Ok(Some(point))
    }
}

async fn describe(
    conn: &mut Conn,
    settings: &MySqlSourceSettings,
    id: &TableId,
) -> Result<CapturedTable, MySqlError> {
    let columns: Vec<(String, String, String, Option<String>)> = conn
        .exec(
            "select column_name, data_type, column_type, character_set_name
               from information_schema.columns
              where table_schema = ? and table_name = ?
              order by ordinal_position",
            (&id.schema, &id.name),
        )
        .await
        .map_err(MySqlError::query(format!("reading the columns of {id}")))?;
    if columns.is_empty() {
        return Err(MySqlError::Setup(format!(
            "table {id} does not exist (or the user cannot see it): create it or fix sources.{}.tables",
            settings.name
        )));
    }
    let key_names = primary_key(conn, id).await?;
    if key_names.is_empty() {
        return Err(MySqlError::Setup(format!(
            "table {id} has no primary key: Sluice keys every change by it (alter table {id} add primary key (…))"
        )));
    }
    // MariaDB's JSON is LONGTEXT with a json_valid() check; MySQL has no such table column
    // (and a real JSON type), so a failing query means "none".
    let checks: Vec<String> = conn
        .exec(
            "select check_clause from information_schema.check_constraints
              where constraint_schema = ? and table_name = ?",
            (&id.schema, &id.name),
        )
        .await
        .unwrap_or_default();
    let json_columns: Vec<String> = columns
        .iter()
        .map(|(name, ..)| name.clone())
        .filter(|name| {
            let needle = format!("json_valid(`{}`)", name.replace('`', "``"));
            checks.iter().any(|c| c.contains(&needle))
        })
        .collect();
    let names: Arc<[Arc<str>]> = columns
        .iter()
        .map(|(n, ..)| Arc::from(n.as_str()))
        .collect();
    let key = key_names
        .iter()
        .filter_map(|k| columns.iter().position(|(n, ..)| n == k))
        .collect();
    let kinds = columns
        .iter()
        .map(|(name, data_type, column_type, charset)| {
            Kind::from_information_schema(
                data_type,
                column_type,
                charset.as_deref(),
                json_columns.contains(name),
            )
        })
        .collect();
    Ok(CapturedTable {
        schema: Arc::new(TableSchema::new(
            Arc::from(settings.name.as_str()),
            Arc::from(id.schema.as_str()),
            id.clone(),
            names,
            key,
            Arc::from(topic_name(&settings.topic_prefix, id)),
        )),
        kinds,
        key_names,
        json_columns,
    })
}

/// A table's primary-key columns, in key order (empty without a primary key).
/// The primary-key columns of `id`, in key order (empty: none). Read from `key_column_usage`,
/// which a user with SELECT on the table sees; MariaDB shows `table_constraints` rows only
/// with more privileges than a capture user has.
pub(crate) async fn primary_key(conn: &mut Conn, id: &TableId) -> Result<Vec<String>, MySqlError> {
    conn.exec(
        "select column_name from information_schema.key_column_usage
          where table_schema = ? and table_name = ? and constraint_name = 'PRIMARY'
          order by ordinal_position",
        (&id.schema, &id.name),
    )
    .await
    .map_err(MySqlError::query(format!("reading the key of {id}")))
}

/// A table's columns (with their types, for checking mappings) and primary-key columns;
/// `None` if it does not exist.
pub async fn source_columns(
    connection: &MySqlConnection,
    id: &TableId,
) -> Result<Option<(Vec<sluice_core::ColumnDesc>, Vec<String>)>, MySqlError> {
    let mut conn = connect(connection).await?;
    let rows: Vec<(String, String, String, String)> = conn
        .exec(
            "select column_name, data_type, column_type, is_nullable from information_schema.columns
              where table_schema = ? and table_name = ? order by ordinal_position",
            (&id.schema, &id.name),
        )
        .await
        .map_err(MySqlError::query(format!("reading the columns of {id}")))?;
    let key = primary_key(&mut conn, id).await?;
    let _ = conn.disconnect().await;
    let columns: Vec<sluice_core::ColumnDesc> = rows
        .into_iter()
        .map(
            |(name, data_type, column_type, nullable)| sluice_core::ColumnDesc {
                name,
                class: class_of(
                    &data_type.to_ascii_lowercase(),
                    &column_type.to_ascii_lowercase(),
                ),
                sql_type: column_type,
                nullable: nullable.eq_ignore_ascii_case("YES"),
            },
        )
        .collect();
    Ok((!columns.is_empty()).then_some((columns, key)))
}

/// The class of a column type from `information_schema.columns` (`data_type`, `column_type`).
fn class_of(data_type: &str, column_type: &str) -> sluice_core::ColumnClass {
    use sluice_core::ColumnClass as C;
    match data_type {
        // An unsigned bigint may exceed a signed one: not checked.
        "bigint" if column_type.contains("unsigned") => C::Other,
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => C::Integer,
        "float" | "double" => C::Float,
        "decimal" => C::Decimal,
        "date" | "datetime" | "timestamp" | "time" => C::Temporal,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            C::Text
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => C::Bytes,
        "json" => C::Json,
        _ => C::Other,
    }
}

impl sluice_core::source::ChangeSource for MySqlSource {
    type Settings = MySqlSourceSettings;
    type Error = MySqlError;

    /// Reads each configured table's columns and key. Preflight has run before; problems
    /// found here are still explained.
    async fn open(settings: MySqlSourceSettings) -> Result<Self, MySqlError> {
        let mut conn = connect(&settings.connection).await?;
        let mut tables = Vec::new();
        for id in &settings.tables {
            tables.push(Arc::new(describe(&mut conn, &settings, id).await?));
        }
        let _ = conn.disconnect().await;
        Ok(MySqlSource {
            settings,
            tables,
            lag_conn: tokio::sync::Mutex::new(None),
        })
    }

    /// Binlog bytes past `position` (a checkpoint's `file:pos`): the rest of its file and
    /// every later file, as `SHOW BINARY LOGS` sizes them.
    async fn log_behind(&self, position: &str) -> Result<Option<u64>, MySqlError> {
        let Some(pos) = BinlogPos::parse(position) else {
            return Ok(None);
        };
        let mut guard = self.lag_conn.lock().await;
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(connect(&self.settings.connection).await?),
        };
        let files = match binlog_files(conn).await {
            Ok(files) => files,
            Err(e) => {
                *guard = None; // a new connection next time
                return Err(e);
            }
        };
        let mut behind = 0u64;
        let mut past = false;
        for (file, size) in files {
            if file == pos.file {
                past = true;
                behind += size.saturating_sub(pos.pos);
            } else if past {
                behind += size;
            }
        }
        Ok(past.then_some(behind))
    }

    fn tables(&self) -> Vec<&TableSchema> {
        self.tables.iter().map(|t| &*t.schema).collect()
    }

    async fn run(
        &self,
        resume: Option<SourceCheckpoint>,
        resnapshot: bool,
        handles: RunHandles,
    ) -> Result<(), MySqlError> {
        let s = &self.settings;
        let resume = resume.filter(|c| c.connector == "mysql" && c.snapshot_done && !resnapshot);
        let book = match &resume {
            Some(cp) => BackfillBook::resume(
                &s.name,
                &self.configured(),
                Some(cp),
                s.snapshot == SnapshotMode::Never,
            ),
            None => BackfillBook {
                complete: self.configured(),
                ..BackfillBook::default()
            },
        };
        // A MariaDB GTID position to resume from (digits, dashes and commas only).
        let resume_gtid = resume.as_ref().and_then(|c| c.gtid.clone()).filter(|g| {
            !g.is_empty()
                && g.chars()
                    .all(|c| c.is_ascii_digit() || c == '-' || c == ',')
        });
        // A MySQL GTID set to resume from.
        let resume_set = resume
            .as_ref()
            .and_then(|c| c.gtid_set.as_deref())
            .and_then(GtidSet::parse);
        let resume_pos = resume
            .map(|c| {
                BinlogPos::parse(&c.position).ok_or_else(|| {
                    MySqlError::Setup(format!(
                        "source {}: the checkpoint position {:?} is not a binlog file:pos; start over with `sluice run --resnapshot {}`",
                        s.name, c.position, s.name
                    ))
                })
            })
            .transpose()?;
        let mut conn = connect(&s.connection).await?;
        let mut book = book;
        let mut snapshot_by_backfill = false;
        let mut gtid_set = None;
        let resumed = resume_pos.is_some();
        let start = match resume_pos {
            Some(pos) => {
                let files: Vec<String> = binlog_files(&mut conn)
                    .await?
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                if !files.contains(&pos.file) {
                    return Err(MySqlError::Setup(format!(
                        "source {}: the checkpoint is at {pos} but the server no longer has binlog file {} (purged; it keeps {}): the changes since then cannot be recovered; start over with a new snapshot with `sluice run --resnapshot {}`",
                        s.name,
                        pos.file,
                        files.first().map(|f| format!("{f} and later")).unwrap_or_else(|| "none".into()),
                        s.name
                    )));
                }
                tracing::info!(source = %s.name, from = %pos, "resuming the binlog stream");
                gtid_set = resume_set;
                pos
            }
            None => {
                let pos = match s.snapshot {
                    SnapshotMode::Initial => match self.snapshot(&mut conn, &handles).await? {
                        Some(pos) => pos,
                        None => {
                            // MySQL: no binlog point of a snapshot transaction. The snapshot
                            // is read in chunks between watermarks while the stream runs.
                            backfill::ensure_signal_table(&mut conn, &s.signal_table, &s.name)
                                .await?;
                            book = self.snapshot_book();
                            snapshot_by_backfill = true;
                            let (pos, set) = current_position_and_gtids(&mut conn).await?;
                            gtid_set = set;
                            tracing::info!(source = %s.name, tables = self.tables.len(), at = %pos, "initial snapshot started: read in chunks between watermarks while the binlog streams (the server has no binlog_snapshot_file)");
                            pos
                        }
                    },
                    SnapshotMode::Never => {
                        let (pos, set) = current_position_and_gtids(&mut conn).await?;
                        gtid_set = set;
                        pos
                    }
                };
                // A snapshot read between watermarks has its checkpoint when every table's
                // rows are published; otherwise the start point is checkpointed now.
                if !snapshot_by_backfill {
                    // MariaDB: the GTID position of that binlog point (MySQL has no such function).
                    let gtid: Option<String> = conn
                        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&pos.file, pos.pos))
                        .await
                        .ok()
                        .flatten()
                        .filter(|g: &String| !g.is_empty());
                    handles
                        .out
                        .send(Batch {
                            events: Vec::new(),
                            checkpoint: Some(SourceCheckpoint {
                                connector: "mysql".into(),
                                position: pos.to_string(),
                                snapshot_done: true,
                                slot: None,
                                gtid,
                                gtid_set: gtid_set.as_ref().map(GtidSet::to_string),
                                written_at_ms: now_us() / 1000,
                                tables: Some(self.configured()),
                                backfills: Vec::new(),
                                abandoned: Vec::new(),
                            }),
                        })
                        .await
                        .map_err(|_| MySqlError::Closed)?;
                }
                pos
            }
        };
        let _ = conn.disconnect().await;
        // A resume with a GTID set asks for the transactions missing from it.
        let by_gtid_set = resumed && gtid_set.is_some();
        let start = StreamStart {
            pos: start,
            mariadb_gtid: resume_gtid,
            gtid_set,
            by_gtid_set,
        };
        self.stream(start, book, snapshot_by_backfill, handles)
            .await
    }
}

/// The server's binlog files and their sizes, oldest first (`SHOW BINARY LOGS`: MariaDB lists
/// name and size, MySQL 8 adds `Encrypted`).
async fn binlog_files(conn: &mut Conn) -> Result<Vec<(String, u64)>, MySqlError> {
    Ok(conn
        .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
        .await
        .map_err(MySqlError::query("listing the server's binlog files"))?
        .into_iter()
        .filter_map(|row| Some((row.get::<String, usize>(0)?, row.get::<u64, usize>(1)?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_parse() {
        assert_eq!(
            BinlogPos::parse("binlog.000007:4711"),
            Some(BinlogPos {
                file: "binlog.000007".into(),
                pos: 4711
            })
        );
        assert_eq!(BinlogPos::parse("16/B374D848"), None);
        assert_eq!(BinlogPos::parse("binlog.000007"), None);
    }
}
