//! The MySQL/MariaDB target: mapped row changes, Kafka progress and dead letters in one
//!
//! Over 700 lines: the MySQL target's migrations, table descriptions, statements and transaction calls.
//!
//! transaction, like the Postgres target (see `sluice_postgres::sink`).
//!
//! Folded batches become one multi-row `delete … where key in (…)` and one multi-row
//! `insert … on duplicate key update` per table and set of carried columns. Progress rows are
//! read `for update` and compared with what the batch expected before they are written, which
//! fences off a second consumer of the same partition. A batch refused for a data reason is
//! applied again event by event under savepoints, each refused event becoming a dead letter.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use mysql_async::prelude::*;
use mysql_async::{Conn, TxOpts, Value};
use sluice_core::sink_tx::{self, Param, SinkTx, Statements};
use sluice_core::target::TargetWriter;
use sluice_core::ErrorClass;
use sluice_core::{
    ApplyBatch, ApplyOutcome, BarrierOutcome, DeadLetter, FoldedTable, MappedEvent,
    PartitionProgress, TableId, TableShape,
};

use crate::client::{connect, quote_ident};
use crate::config::MySqlConnection;
use crate::error::MySqlError;

const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "0001_apply_state.sql",
    include_str!("../../../migrations/mysql/0001_apply_state.sql"),
)];

/// Most placeholders in one statement (the protocol allows 65535).
const MAX_PLACEHOLDERS: usize = 60_000;

/// Creates or upgrades Sluice's tables in the target database (under a named lock, so
/// concurrent processes do not race).
pub async fn migrate(conn: &mut Conn) -> Result<Vec<String>, MySqlError> {
    let ctx =
        "creating Sluice's tables (sluice_*) in the target database (the user needs CREATE there)";
    conn.query_drop("SELECT GET_LOCK('sluice_migrations', 60)")
        .await
        .map_err(MySqlError::query(ctx))?;
    let result = async {
        conn.query_drop(
            "create table if not exists sluice_schema_migrations (
                 version int primary key, name varchar(255) not null,
                 applied_at timestamp(6) not null default current_timestamp(6)) engine = InnoDB",
        )
        .await
        .map_err(MySqlError::query(ctx))?;
        let done: Vec<i32> = conn
            .query("select version from sluice_schema_migrations")
            .await
            .map_err(MySqlError::query(ctx))?;
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                let statement: String = statement
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if statement.trim().is_empty() {
                    continue;
                }
                conn.query_drop(statement)
                    .await
                    .map_err(MySqlError::query(format!("applying migration {name}")))?;
            }
            conn.exec_drop(
                "insert into sluice_schema_migrations (version, name) values (?, ?)",
                (version, name),
            )
            .await
            .map_err(MySqlError::query(ctx))?;
            applied.push((*name).to_owned());
        }
        Ok(applied)
    }
    .await;
    let _ = conn
        .query_drop("SELECT RELEASE_LOCK('sluice_migrations')")
        .await;
    result
}

/// How JSON values are turned into MySQL values for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Float,
    Bytes,
    DateTime,
    Json,
    Text,
}

fn kind_of(data_type: &str) -> ColumnKind {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" | "bit" => {
            ColumnKind::Integer
        }
        "float" | "double" => ColumnKind::Float,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnKind::Bytes
        }
        "datetime" | "timestamp" => ColumnKind::DateTime,
        "json" => ColumnKind::Json,
        _ => ColumnKind::Text,
    }
}

/// A target table as the sink writes it.
#[derive(Debug, Clone)]
pub struct MySqlTable {
    pub id: TableId,
    pub columns: Vec<(String, ColumnKind)>,
    pub key: Vec<usize>,
    /// The tables this one references by foreign keys (`database.table`).
    pub references: Vec<TableId>,
    /// The database the table is in.
    db: String,
    quoted: String,
}

impl MySqlTable {
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn shape(&self) -> TableShape {
        TableShape {
            columns: self.columns.len(),
            key: self.key.clone(),
        }
    }
}

/// Reads the target tables' shapes. The inner `Err` is a configuration problem, with its fix.
pub async fn describe_targets(
    conn: &mut Conn,
    connection: &MySqlConnection,
    tables: &[TableId],
) -> Result<Vec<Result<MySqlTable, String>>, MySqlError> {
    let mut out = Vec::with_capacity(tables.len());
    for id in tables {
        let db = connection.database_of(id).to_owned();
        let ctx = format!("reading the columns of target table {db}.{}", id.name);
        let columns: Vec<(String, String)> = conn
            .exec(
                "select column_name, data_type from information_schema.columns
                  where table_schema = ? and table_name = ? order by ordinal_position",
                (&db, &id.name),
            )
            .await
            .map_err(MySqlError::query(ctx.clone()))?;
        if columns.is_empty() {
            out.push(Err(format!(
                "target table {db}.{} does not exist: create it in the target database (Sluice does not create target tables)",
                id.name
            )));
            continue;
        }
        let key_names: Vec<String> = conn
            .exec(
                "select column_name from information_schema.key_column_usage
                  where table_schema = ? and table_name = ? and constraint_name = 'PRIMARY'
                  order by ordinal_position",
                (&db, &id.name),
            )
            .await
            .map_err(MySqlError::query(ctx))?;
        if key_names.is_empty() {
            out.push(Err(format!(
                "target table {db}.{} has no primary key: upserts and deletes need one (alter table {db}.{} add primary key (…))",
                id.name, id.name
            )));
            continue;
        }
        let columns: Vec<(String, ColumnKind)> = columns
            .into_iter()
            .map(|(name, ty)| (name, kind_of(&ty.to_ascii_lowercase())))
            .collect();
        let key = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|(c, _)| c == k))
            .collect();
        let references: Vec<(String, String)> = conn
            .exec(
                "select distinct referenced_table_schema, referenced_table_name
                   from information_schema.key_column_usage
                  where table_schema = ? and table_name = ? and referenced_table_name is not null",
                (&db, &id.name),
            )
            .await
            .map_err(MySqlError::query(format!(
                "reading the foreign keys of target table {db}.{}",
                id.name
            )))?;
        out.push(Ok(MySqlTable {
            quoted: format!("{}.{}", quote_ident(&db), quote_ident(&id.name)),
            id: id.clone(),
            db: db.clone(),
            columns,
            key,
            references: references
                .into_iter()
                .map(|(s, t)| TableId::new(s, t))
                .collect(),
        }));
    }
    Ok(out)
}

/// Reads the stored progress of `partitions` for `sink`.
pub async fn load_offsets(
    conn: &mut Conn,
    sink: &str,
    partitions: &[(Arc<str>, i32)],
) -> Result<HashMap<(Arc<str>, i32), (i64, Option<String>)>, MySqlError> {
    let rows: Vec<(String, i32, i64, Option<String>)> = conn
        .exec(
            "select topic, `partition`, next_offset, cast(source_position as char)
               from sluice_apply_offsets where sink = ?",
            (sink,),
        )
        .await
        .map_err(MySqlError::query("reading sluice_apply_offsets"))?;
    let mut out = HashMap::new();
    for (topic, partition, next, position) in rows {
        if let Some(tp) = partitions
            .iter()
            .find(|(t, p)| **t == *topic && *p == partition)
        {
            out.insert(tp.clone(), (next, position));
        }
    }
    Ok(out)
}

/// One sink's writer: a connection and its target tables.
pub struct MySqlSink {
    connection: MySqlConnection,
    conn: Option<Conn>,
    sink: String,
    tables: Vec<MySqlTable>,
    shapes: Vec<TableShape>,
    /// The tables' foreign-key ranks, when some reference others (see
    /// [`sluice_core::apply::order_for_foreign_keys`]).
    ranks: Option<Vec<usize>>,
}

impl MySqlSink {
    pub fn new(connection: MySqlConnection, sink: &str, tables: Vec<MySqlTable>) -> Self {
        MySqlSink {
            connection,
            conn: None,
            sink: sink.to_owned(),
            shapes: tables.iter().map(MySqlTable::shape).collect(),
            ranks: sluice_core::apply::foreign_key_ranks(&references_by_index(&tables)),
            tables,
        }
    }

    async fn conn(&mut self) -> Result<&mut Conn, MySqlError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.connection).await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| MySqlError::Setup("target connection unavailable".into()))
    }

    async fn apply_once(
        &mut self,
        batch: &ApplyBatch,
        one_by_one: bool,
    ) -> Result<ApplyOutcome, MySqlError> {
        let groups = sink_tx::fold_groups(batch, &self.shapes, self.ranks.as_deref(), one_by_one);
        let mut tx = self.begin("beginning a target transaction").await?;
        sink_tx::apply_batch(&mut tx, batch, &groups, one_by_one).await
    }

    /// Opens a transaction, connecting first when needed.
    async fn begin(&mut self, context: &'static str) -> Result<MyTx<'_, '_>, MySqlError> {
        self.conn().await?;
        let MySqlSink {
            conn, sink, tables, ..
        } = self;
        let tx = conn
            .as_mut()
            .ok_or_else(|| MySqlError::Setup("target connection unavailable".into()))?
            .start_transaction(TxOpts::default())
            .await
            .map_err(MySqlError::query(context))?;
        Ok(MyTx {
            tx: Some(tx),
            sink,
            tables,
            empty: Vec::new(),
        })
    }
}

/// A target transaction with what the shared body needs to write into it.
struct MyTx<'a, 'b> {
    tx: Option<mysql_async::Transaction<'a>>,
    sink: &'b str,
    tables: &'b [MySqlTable],
    /// The tables a truncate empties (quoted).
    empty: Vec<String>,
}

impl<'a> MyTx<'a, '_> {
    fn tx(&mut self) -> Result<&mut mysql_async::Transaction<'a>, MySqlError> {
        self.tx
            .as_mut()
            .ok_or_else(|| MySqlError::Setup("target transaction already ended".into()))
    }
}

/// The shared body's statements in MySQL's dialect. The partitions of a topic serialise on a
/// barrier by locking its done row (or the gap where it would be).
const STATEMENTS: Statements = Statements {
    dead_letter_table: "sluice_dead_letters",
    dead_letter: "insert into sluice_dead_letters (sink, topic, `partition`, `offset`, `key`, value, error, `sqlstate`)
                  values (?, ?, ?, ?, ?, ?, ?, ?)",
    barrier_lock: None,
    barrier_done: "select count(*) from sluice_truncates_done where sink = ? and topic = ? and position = ? for update",
    barrier_arrive: "insert ignore into sluice_truncate_barriers (sink, topic, position, `partition`) values (?, ?, ?, ?)",
    barrier_arrived: "select count(*) from sluice_truncate_barriers where sink = ? and topic = ? and position = ? for update",
    barrier_mark_done: "insert into sluice_truncates_done (sink, topic, position) values (?, ?, ?)",
    barrier_forget: "delete from sluice_truncate_barriers where sink = ? and topic = ? and position = ?",
};

fn my_params(params: &[Param<'_>]) -> Vec<Value> {
    params
        .iter()
        .map(|p| match *p {
            Param::Text(s) | Param::OptText(Some(s)) => Value::from(s),
            Param::OptText(None) => Value::NULL,
            Param::Int(i) => Value::from(i),
            Param::BigInt(i) => Value::from(i),
        })
        .collect()
}

impl SinkTx for MyTx<'_, '_> {
    type Error = MySqlError;

    const STATEMENTS: &'static Statements = &STATEMENTS;

    fn sink(&self) -> &str {
        self.sink
    }

    async fn execute(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> Result<(), MySqlError> {
        let tx = self.tx()?;
        let done = if params.is_empty() {
            tx.query_drop(sql).await
        } else {
            tx.exec_drop(sql, my_params(params)).await
        };
        done.map_err(MySqlError::query(context))
    }

    async fn query_count(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> Result<i64, MySqlError> {
        let n: Option<i64> = self
            .tx()?
            .exec_first(sql, my_params(params))
            .await
            .map_err(MySqlError::query(context))?;
        Ok(n.unwrap_or(0))
    }

    async fn write(&mut self, folded: &[FoldedTable]) -> Result<(), MySqlError> {
        let tables = self.tables;
        write_folded(self.tx()?, tables, folded).await
    }

    async fn progress(
        &mut self,
        progress: &[PartitionProgress],
    ) -> Result<Vec<(Arc<str>, i32)>, MySqlError> {
        let sink = self.sink;
        write_progress(self.tx()?, sink, progress).await
    }

    async fn empty_tables(&mut self) -> Result<(), MySqlError> {
        let names = std::mem::take(&mut self.empty);
        // TRUNCATE commits implicitly in MySQL: delete keeps it inside the transaction.
        for name in &names {
            self.tx()?
                .query_drop(format!("delete from {name}"))
                .await
                .map_err(MySqlError::query(format!("emptying {name} in the target")))?;
        }
        Ok(())
    }

    async fn finish(&mut self, commit: bool) -> Result<(), MySqlError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if commit {
            tx.commit()
                .await
                .map_err(MySqlError::query("committing a target transaction"))
        } else {
            tx.rollback()
                .await
                .map_err(MySqlError::query("rolling back a target transaction"))
        }
    }

    fn is_data_error(e: &MySqlError) -> bool {
        e.is_data_error()
    }

    fn is_foreign_key_error(e: &MySqlError) -> bool {
        e.is_foreign_key_error()
    }

    fn dead_letter(event: &MappedEvent, e: &MySqlError) -> DeadLetter {
        dead_letter_for(event, e)
    }
}

fn dead_letter_for(event: &MappedEvent, e: &MySqlError) -> DeadLetter {
    DeadLetter {
        record: event.record.clone(),
        key: event.key.clone(),
        value: event.value.clone(),
        error: format!(
            "target refused the row: {}",
            e.server_message().unwrap_or("unknown error")
        ),
        sqlstate: e.sqlstate(),
    }
}

/// A JSON value as a MySQL value for a column of `kind`.
fn to_mysql(kind: ColumnKind, v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match (kind, v) {
        (_, J::Null) => Value::NULL,
        (_, J::Bool(b)) => Value::Int(i64::from(*b)),
        (_, J::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        (ColumnKind::Bytes, J::String(s)) => {
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => Value::Bytes(bytes),
                Err(_) => Value::Bytes(s.clone().into_bytes()),
            }
        }
        // `2024-05-01T12:00:00.000000Z` (UTC; the session time zone is UTC) → `2024-05-01 12:00:00.000000`.
        (ColumnKind::DateTime, J::String(s)) => {
            let t = s.strip_suffix('Z').unwrap_or(s).replacen('T', " ", 1);
            Value::Bytes(t.into_bytes())
        }
        (_, J::String(s)) => Value::Bytes(s.clone().into_bytes()),
        // Arrays and objects: JSON text (a JSON column, or text).
        (_, other) => Value::Bytes(other.to_string().into_bytes()),
    }
}

async fn write_folded(
    tx: &mut mysql_async::Transaction<'_>,
    tables: &[MySqlTable],
    folded: &[FoldedTable],
) -> Result<(), MySqlError> {
    for f in folded {
        let t = &tables[f.table];
        if !f.deletes.is_empty() {
            let per_row = t.key.len();
            for chunk in f.deletes.chunks((MAX_PLACEHOLDERS / per_row).max(1)) {
                let tuple = format!("({})", vec!["?"; per_row].join(","));
                let cols = t
                    .key
                    .iter()
                    .map(|k| quote_ident(&t.columns[*k].0))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!(
                    "delete from {} where ({cols}) in ({})",
                    t.quoted,
                    vec![tuple.as_str(); chunk.len()].join(",")
                );
                let params: Vec<Value> = chunk
                    .iter()
                    .flat_map(|key| {
                        t.key
                            .iter()
                            .zip(key)
                            .map(|(k, v)| to_mysql(t.columns[*k].1, v))
                    })
                    .collect();
                tx.exec_drop(sql, params)
                    .await
                    .map_err(MySqlError::query(format!(
                        "deleting rows from {}",
                        t.quoted
                    )))?;
            }
        }
        for (shape, rows) in &f.upserts {
            let cols: Vec<String> = shape
                .iter()
                .map(|c| quote_ident(&t.columns[*c].0))
                .collect();
            let updates: Vec<String> = shape
                .iter()
                .filter(|c| !t.key.contains(c))
                .map(|c| {
                    let q = quote_ident(&t.columns[*c].0);
                    format!("{q} = values({q})")
                })
                .collect();
            let on_duplicate = if updates.is_empty() {
                // Only key columns: nothing to update, but the statement must not fail.
                let q = &cols[0];
                format!("{q} = {q}")
            } else {
                updates.join(", ")
            };
            let tuple = format!("({})", vec!["?"; shape.len()].join(","));
            for chunk in rows.chunks((MAX_PLACEHOLDERS / shape.len()).max(1)) {
                let sql = format!(
                    "insert into {} ({}) values {} on duplicate key update {on_duplicate}",
                    t.quoted,
                    cols.join(", "),
                    vec![tuple.as_str(); chunk.len()].join(",")
                );
                let params: Vec<Value> = chunk
                    .iter()
                    .flat_map(|row| {
                        shape
                            .iter()
                            .zip(row)
                            .map(|(c, v)| to_mysql(t.columns[*c].1, v))
                    })
                    .collect();
                tx.exec_drop(sql, params)
                    .await
                    .map_err(MySqlError::query(format!(
                        "upserting rows into {}",
                        t.quoted
                    )))?;
            }
        }
        for (shape, rows) in &f.updates {
            let sets: Vec<usize> = shape
                .iter()
                .copied()
                .filter(|c| !t.key.contains(c))
                .collect();
            if sets.is_empty() {
                continue;
            }
            let sql = format!(
                "update {} set {} where {}",
                t.quoted,
                sets.iter()
                    .map(|c| format!("{} = ?", quote_ident(&t.columns[*c].0)))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.key
                    .iter()
                    .map(|k| format!("{} = ?", quote_ident(&t.columns[*k].0)))
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            for row in rows {
                let value_of = |c: usize| {
                    shape
                        .iter()
                        .position(|s| *s == c)
                        .and_then(|i| row.get(i))
                        .map(|v| to_mysql(t.columns[c].1, v))
                        .unwrap_or(Value::NULL)
                };
                let params: Vec<Value> = sets.iter().chain(&t.key).map(|c| value_of(*c)).collect();
                tx.exec_drop(&sql, params)
                    .await
                    .map_err(MySqlError::query(format!("updating rows of {}", t.quoted)))?;
            }
        }
    }
    Ok(())
}

/// Writes each partition's progress if the stored offset is still the expected one; returns
/// the partitions where it was not.
async fn write_progress(
    tx: &mut mysql_async::Transaction<'_>,
    sink: &str,
    progress: &[PartitionProgress],
) -> Result<Vec<(Arc<str>, i32)>, MySqlError> {
    let mut fenced = Vec::new();
    for p in progress {
        let stored: Option<i64> = tx
            .exec_first(
                "select next_offset from sluice_apply_offsets where sink = ? and topic = ? and `partition` = ? for update",
                (sink, &*p.topic, p.partition),
            )
            .await
            .map_err(MySqlError::query("reading sluice_apply_offsets"))?;
        if stored != p.expected {
            fenced.push((p.topic.clone(), p.partition));
            continue;
        }
        let written = if stored.is_some() {
            tx.exec_drop(
                "update sluice_apply_offsets
                    set next_offset = ?, source_position = coalesce(?, source_position), updated_at = current_timestamp(6)
                  where sink = ? and topic = ? and `partition` = ?",
                (p.next_offset, &p.position, sink, &*p.topic, p.partition),
            )
            .await
        } else {
            tx.exec_drop(
                "insert into sluice_apply_offsets (sink, topic, `partition`, next_offset, source_position)
                 values (?, ?, ?, ?, ?)",
                (sink, &*p.topic, p.partition, p.next_offset, &p.position),
            )
            .await
        };
        match written {
            Ok(()) => {}
            // Another consumer inserted the row first.
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => {
                fenced.push((p.topic.clone(), p.partition));
            }
            Err(e) => {
                return Err(MySqlError::Query {
                    context: "writing sluice_apply_offsets".into(),
                    source: e,
                })
            }
        }
    }
    Ok(fenced)
}

/// Connects and describes the target tables: a sink's preflight.
pub async fn preflight_target(
    connection: &MySqlConnection,
    tables: &[TableId],
) -> Result<Vec<Result<MySqlTable, String>>, MySqlError> {
    let mut conn = connect(connection).await?;
    let out = describe_targets(&mut conn, connection, tables).await;
    let _ = conn.disconnect().await;
    out
}

/// Moves `sink`'s stored offsets (a replay): each (topic, partition) reads again from the
/// given offset, and its last applied source position is forgotten. One transaction.
pub async fn move_offsets(
    conn: &mut Conn,
    sink: &str,
    moves: &[(String, i32, i64)],
) -> Result<(), MySqlError> {
    let context = "moving the sink's offsets in sluice_apply_offsets";
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .await
        .map_err(MySqlError::query(context))?;
    for (topic, partition, offset) in moves {
        tx.exec_drop(
            "insert into sluice_apply_offsets (sink, topic, `partition`, next_offset, source_position)
             values (?, ?, ?, ?, null)
             on duplicate key update next_offset = values(next_offset), source_position = null,
               updated_at = current_timestamp(6)",
            (sink, topic, partition, offset),
        )
        .await
        .map_err(MySqlError::query(context))?;
    }
    tx.commit().await.map_err(MySqlError::query(context))?;
    Ok(())
}

/// For each table, the indexes of the sink's tables it references by foreign keys.
pub fn references_by_index(tables: &[MySqlTable]) -> Vec<Vec<usize>> {
    tables
        .iter()
        .map(|t| {
            t.references
                .iter()
                .filter_map(|r| {
                    tables
                        .iter()
                        .position(|o| o.id.name == r.name && o.db == r.schema)
                })
                .collect()
        })
        .collect()
}

/// A folded batch in the order target foreign keys need, when some tables are linked.
impl TargetWriter for MySqlSink {
    type Error = MySqlError;

    fn class(e: &MySqlError) -> ErrorClass {
        e.class()
    }

    /// Applies a batch in one transaction (see the module docs).
    async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyOutcome, MySqlError> {
        match self.apply_once(batch, false).await {
            Err(e) if e.is_data_error() => {
                tracing::debug!(error = %e, "batch refused; applying it event by event");
                self.reset();
                self.apply_once(batch, true).await
            }
            other => other,
        }
    }

    async fn load_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<HashMap<(Arc<str>, i32), (i64, Option<String>)>, MySqlError> {
        let sink = self.sink.clone();
        load_offsets(self.conn().await?, &sink, partitions).await
    }

    /// Handles a truncate that reached `progress.partition` (see the Postgres sink).
    async fn truncate_barrier(
        &mut self,
        topic: &str,
        position: &str,
        partition_count: i32,
        tables: &[usize],
        // MySQL targets have no blob columns (refused when the config loads).
        _blob_columns: &[sluice_core::target::BlobColumn],
        progress: &PartitionProgress,
    ) -> Result<BarrierOutcome, MySqlError> {
        let names: Vec<String> = tables
            .iter()
            .map(|t| self.tables[*t].quoted.clone())
            .collect();
        let mut tx = self.begin("recording a truncate barrier").await?;
        tx.empty = names;
        sink_tx::truncate_barrier(&mut tx, topic, position, partition_count, progress).await
    }

    /// Forgets the connection (after an error that may have broken it).
    fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_converted_for_their_columns() {
        assert_eq!(
            to_mysql(ColumnKind::Bytes, &json!("AP8=")),
            Value::Bytes(vec![0, 255])
        );
        assert_eq!(
            to_mysql(ColumnKind::DateTime, &json!("2024-05-01T12:00:00.000000Z")),
            Value::Bytes(b"2024-05-01 12:00:00.000000".to_vec())
        );
        assert_eq!(to_mysql(ColumnKind::Integer, &json!(true)), Value::Int(1));
        assert_eq!(
            to_mysql(ColumnKind::Json, &json!({"a": [1]})),
            Value::Bytes(b"{\"a\":[1]}".to_vec())
        );
        assert_eq!(to_mysql(ColumnKind::Text, &json!(null)), Value::NULL);
        assert_eq!(
            to_mysql(ColumnKind::Integer, &json!(u64::MAX)),
            Value::UInt(u64::MAX)
        );
    }
}
