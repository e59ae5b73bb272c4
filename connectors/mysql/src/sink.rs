//! The MySQL/MariaDB target: mapped row changes, Kafka progress and dead letters in one
//! transaction, like the Postgres target (see `sluice_postgres::sink`).
//!
//! Over 700 lines: the MySQL target's migrations, table descriptions, statements and transaction calls.
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
use sluice_core::sink_tx::{self, FoldPlan, Migration, Param, SinkTx, SqlWriter, Statements};
use sluice_core::target::{DescribedTable, StoredOffsets, TruncateAt};
use sluice_core::{FoldedTable, PartitionProgress, TableId};

use crate::client::{connect, quote_ident};
use crate::config::MySqlConnection;
use crate::error::MySqlError;

const MIGRATIONS: &[Migration] = &[
    (
        1,
        "0001_apply_state.sql",
        include_str!("../../../migrations/mysql/0001_apply_state.sql"),
    ),
    (
        2,
        "0002_status.sql",
        include_str!("../../../migrations/mysql/0002_status.sql"),
    ),
];

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
        for (version, name, sql) in sink_tx::pending(MIGRATIONS, &done) {
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
    /// BIT(n): values arrive as bit strings (`"0101"`, as both sources publish them).
    Bit,
    Float,
    Bytes,
    DateTime,
    Json,
    Text,
}

fn kind_of(data_type: &str) -> ColumnKind {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => ColumnKind::Integer,
        "bit" => ColumnKind::Bit,
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

impl DescribedTable for MySqlTable {
    fn id(&self) -> &TableId {
        &self.id
    }

    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _)| n.clone()).collect()
    }

    fn key(&self) -> &[usize] {
        &self.key
    }

    fn references(&self) -> &[TableId] {
        &self.references
    }

    /// A foreign key names the database; the mapping may not.
    fn is(&self, other: &TableId) -> bool {
        self.id.name == other.name && self.db == other.schema
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
) -> Result<StoredOffsets, MySqlError> {
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
    plan: FoldPlan,
}

impl MySqlSink {
    pub fn new(
        connection: MySqlConnection,
        sink: &str,
        worker: usize,
        tables: Vec<MySqlTable>,
    ) -> Self {
        MySqlSink {
            connection,
            conn: None,
            sink: sink.to_owned(),
            plan: FoldPlan::new(sink, worker, &tables),
            tables,
        }
    }
}

/// The open connection in `slot`, opened first when there is none.
async fn connected<'c>(
    slot: &'c mut Option<Conn>,
    connection: &MySqlConnection,
) -> Result<&'c mut Conn, MySqlError> {
    if slot.is_none() {
        *slot = Some(connect(connection).await?);
    }
    slot.as_mut()
        .ok_or_else(|| MySqlError::Setup("target connection unavailable".into()))
}

impl SqlWriter for MySqlSink {
    type Error = MySqlError;
    type Tx<'a> = MyTx<'a, 'a>;

    /// A refused batch may leave mysql_async's connection with the transaction's rollback
    /// still pending: the retry starts on a new one.
    const RECONNECT_AFTER_REFUSAL: bool = true;

    fn plan(&self) -> &FoldPlan {
        &self.plan
    }

    async fn prepare(&mut self, _groups: &[Vec<FoldedTable>]) -> Result<(), MySqlError> {
        connected(&mut self.conn, &self.connection)
            .await
            .map(|_| ())
    }

    async fn begin<'s>(
        &'s mut self,
        context: &'static str,
        truncate: Option<&TruncateAt<'_>>,
    ) -> Result<MyTx<'s, 's>, MySqlError> {
        // MySQL targets have no blob columns (refused when the config loads).
        let empty = truncate
            .map(|truncate| {
                let name = |t: &usize| self.tables[*t].quoted.clone();
                truncate.tables.iter().map(name).collect()
            })
            .unwrap_or_default();
        let tx = connected(&mut self.conn, &self.connection)
            .await?
            .start_transaction(TxOpts::default())
            .await
            .map_err(MySqlError::query(context))?;
        Ok(MyTx {
            tx: Some(tx),
            sink: &self.sink,
            tables: &self.tables,
            empty,
        })
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<StoredOffsets, MySqlError> {
        let conn = connected(&mut self.conn, &self.connection).await?;
        load_offsets(conn, &self.sink, partitions).await
    }

    fn disconnect(&mut self) {
        self.conn = None;
    }
}

/// A target transaction with what the shared body needs to write into it.
pub struct MyTx<'a, 'b> {
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
    table_status: "insert into sluice_table_status (sink, worker, target_table, upserts, updates, deletes,
                     dead_letters, state, last_error, last_position, last_source_commit, updated_at)
                   values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, from_unixtime(? / 1000), current_timestamp(6))
                   on duplicate key update upserts = upserts + values(upserts),
                     updates = updates + values(updates), deletes = deletes + values(deletes),
                     dead_letters = dead_letters + values(dead_letters), state = values(state),
                     last_error = coalesce(values(last_error), last_error),
                     last_position = coalesce(values(last_position), last_position),
                     last_source_commit = greatest(coalesce(last_source_commit, values(last_source_commit)),
                                                   coalesce(values(last_source_commit), last_source_commit)),
                     updated_at = current_timestamp(6)",
    history: "insert into sluice_sync_history (sink, worker, minute, events, dead_letters, batches, max_lag_ms)
              values (?, ?, from_unixtime(floor(unix_timestamp() / 60) * 60), ?, ?, 1,
                      greatest(0, round(unix_timestamp(current_timestamp(3)) * 1000) - ?))
              on duplicate key update events = events + values(events),
                dead_letters = dead_letters + values(dead_letters), batches = batches + 1,
                max_lag_ms = greatest(coalesce(max_lag_ms, values(max_lag_ms)),
                                      coalesce(values(max_lag_ms), max_lag_ms))",
};

fn my_params(params: &[Param<'_>]) -> Vec<Value> {
    params
        .iter()
        .map(|p| match *p {
            Param::Text(s) | Param::OptText(Some(s)) => Value::from(s),
            Param::OptText(None) => Value::NULL,
            Param::Int(i) => Value::from(i),
            Param::BigInt(i) | Param::OptBigInt(Some(i)) => Value::from(i),
            Param::OptBigInt(None) => Value::NULL,
        })
        .collect()
}

impl SinkTx for MyTx<'_, '_> {
    type Error = MySqlError;

    const STATEMENTS: &'static Statements = &STATEMENTS;

    async fn run(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> Result<Option<i64>, MySqlError> {
        let tx = self.tx()?;
        if params.is_empty() {
            // Savepoint commands: the text protocol.
            tx.query_drop(sql)
                .await
                .map_err(MySqlError::query(context))?;
            return Ok(None);
        }
        tx.exec_first(sql, my_params(params))
            .await
            .map_err(MySqlError::query(context))
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
        match self.tx.take() {
            Some(tx) if commit => tx
                .commit()
                .await
                .map_err(MySqlError::query("committing a target transaction")),
            Some(tx) => tx
                .rollback()
                .await
                .map_err(MySqlError::query("rolling back a target transaction")),
            None => Ok(()),
        }
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
            } else if kind == ColumnKind::Float {
                Value::Double(n.as_f64().unwrap_or(f64::NAN))
            } else {
                // Every digit, as text: the server converts it exactly for a DECIMAL column
                // (a double would round it).
                Value::Bytes(n.to_string().into_bytes())
            }
        }
        (ColumnKind::Bit, J::String(s))
            if (1..=64).contains(&s.len()) && s.bytes().all(|b| b == b'0' || b == b'1') =>
        {
            Value::UInt(u64::from_str_radix(s, 2).unwrap_or_default())
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

/// How many rows of `per_row` placeholders one statement takes.
fn rows_per_statement(per_row: usize) -> usize {
    (MAX_PLACEHOLDERS / per_row.max(1)).max(1)
}

/// `(?,?,…)` for `n` rows of `per_row` values.
fn tuples(per_row: usize, n: usize) -> String {
    let tuple = format!("({})", vec!["?"; per_row].join(","));
    vec![tuple.as_str(); n].join(",")
}

/// The quoted names of `columns`, joined by `sep`.
fn names(t: &MySqlTable, columns: &[usize], sep: &str) -> String {
    let quoted: Vec<String> = columns
        .iter()
        .map(|c| quote_ident(&t.columns[*c].0))
        .collect();
    quoted.join(sep)
}

/// Deletes `n` keys: `delete … where (k1, k2) in ((?,?), …)`.
fn delete_sql(t: &MySqlTable, n: usize) -> String {
    let keys = names(t, &t.key, ",");
    let tuples = tuples(t.key.len(), n);
    format!("delete from {} where ({keys}) in ({tuples})", t.quoted)
}

/// Inserts `n` rows of the columns in `shape`, updating the non-key ones of rows that exist.
fn upsert_sql(t: &MySqlTable, shape: &[usize], n: usize) -> String {
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
        let q = quote_ident(&t.columns[shape[0]].0);
        format!("{q} = {q}")
    } else {
        updates.join(", ")
    };
    format!(
        "insert into {} ({}) values {} on duplicate key update {on_duplicate}",
        t.quoted,
        names(t, shape, ", "),
        tuples(shape.len(), n)
    )
}

/// Sets `sets` of the row with a key (parameters: `sets`, then the key columns).
fn update_sql(t: &MySqlTable, sets: &[usize]) -> String {
    let assign = |c: &usize| format!("{} = ?", quote_ident(&t.columns[*c].0));
    let sets: Vec<String> = sets.iter().map(assign).collect();
    let key: Vec<String> = t.key.iter().map(assign).collect();
    format!(
        "update {} set {} where {}",
        t.quoted,
        sets.join(", "),
        key.join(" and ")
    )
}

/// The values of `rows` (each holding `columns`, in order) as statement parameters.
fn row_params(t: &MySqlTable, columns: &[usize], rows: &[Vec<serde_json::Value>]) -> Vec<Value> {
    let value = |(c, v): (&usize, &serde_json::Value)| to_mysql(t.columns[*c].1, v);
    rows.iter()
        .flat_map(|row| columns.iter().zip(row).map(value))
        .collect()
}

/// The statements that write one table's folded changes: SQL, parameters, and what it does
/// (for errors).
fn statements_for(t: &MySqlTable, f: &FoldedTable) -> Vec<(String, Vec<Value>, &'static str)> {
    let mut out = Vec::new();
    for chunk in f.deletes.chunks(rows_per_statement(t.key.len())) {
        let params = row_params(t, &t.key, chunk);
        out.push((delete_sql(t, chunk.len()), params, "deleting rows from"));
    }
    for (shape, rows) in &f.upserts {
        for chunk in rows.chunks(rows_per_statement(shape.len())) {
            let params = row_params(t, shape, chunk);
            out.push((
                upsert_sql(t, shape, chunk.len()),
                params,
                "upserting rows into",
            ));
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
        let sql = update_sql(t, &sets);
        for row in rows {
            let value_of = |c: &usize| {
                let at = shape.iter().position(|s| s == c);
                at.and_then(|i| row.get(i))
                    .map_or(Value::NULL, |v| to_mysql(t.columns[*c].1, v))
            };
            let params = sets.iter().chain(&t.key).map(value_of).collect();
            out.push((sql.clone(), params, "updating rows of"));
        }
    }
    out
}

async fn write_folded(
    tx: &mut mysql_async::Transaction<'_>,
    tables: &[MySqlTable],
    folded: &[FoldedTable],
) -> Result<(), MySqlError> {
    for f in folded {
        let t = &tables[f.table];
        for (sql, params, what) in statements_for(t, f) {
            let context = format!("{what} {}", t.quoted);
            tx.exec_drop(sql, params)
                .await
                .map_err(MySqlError::query(context))?;
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
        assert_eq!(to_mysql(ColumnKind::Bit, &json!("0101")), Value::UInt(5));
        assert_eq!(
            to_mysql(ColumnKind::Bit, &json!("1".repeat(64))),
            Value::UInt(u64::MAX)
        );
        let big: serde_json::Value =
            serde_json::from_str("123456789012345678901234567890.5").expect("a number");
        assert_eq!(
            to_mysql(ColumnKind::Text, &big),
            Value::Bytes(b"123456789012345678901234567890.5".to_vec())
        );
    }
}
