//! The Postgres target: mapped row changes, Kafka progress and dead letters in one transaction.
//!
//! Over 700 lines: the Postgres target's migrations, table descriptions, statements and transaction calls.
//!
//! Rows travel to the server as one JSON array per statement and are turned into the target
//! table's row type there (`json_populate_recordset`), so a batch of thousands of rows is one
//! round trip and the server does the type conversion exactly as it does for any input.
//!
//! Within a batch, changes to the same key are folded in order (a later upsert overlays the
//! columns it carries, a delete wins over what came before), then each table gets one delete
//! statement and one upsert statement per set of carried columns. A batch the target refuses
//! for a data reason (SQLSTATE class 22 or 23) is retried event by event under savepoints, and
//! each refused event is written to `sluice.dead_letters` instead.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use sluice_core::sink_tx::{
    self, FoldPlan, Migration, Param, SinkTx, SqlError, SqlWriter, Statements,
};
use sluice_core::target::{DescribedTable, StoredOffsets, TruncateAt};
use sluice_core::{Classified, ErrorClass, FoldedTable, PartitionProgress, TableId};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};

use crate::catalog;
use crate::client::{connect, quote_ident, quote_table};
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::types::{TypeKind, TypeMap};

/// Sluice's own schema in a target database.
pub const SCHEMA: &str = "sluice";

/// The migrations of Sluice's schema, in order. Append-only.
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "0001_apply_state.sql",
        include_str!("../../../migrations/postgres/0001_apply_state.sql"),
    ),
    (
        2,
        "0002_blobs.sql",
        include_str!("../../../migrations/postgres/0002_blobs.sql"),
    ),
    (
        3,
        "0003_status.sql",
        include_str!("../../../migrations/postgres/0003_status.sql"),
    ),
];

/// Creates or upgrades Sluice's schema in the target. Safe to run from several processes at
/// once (an advisory lock serialises them).
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, PostgresError> {
    let ctx = "creating Sluice's schema `sluice` in the target (the role needs CREATE on the database, or create the schema for it)";
    let tx = client
        .transaction()
        .await
        .map_err(PostgresError::query(ctx))?;
    tx.batch_execute(
        "select pg_advisory_xact_lock(hashtext('sluice.schema_migrations'));
         create schema if not exists sluice;
         create table if not exists sluice.schema_migrations (
             version    integer     primary key,
             name       text        not null,
             applied_at timestamptz not null default now()
         );",
    )
    .await
    .map_err(PostgresError::query(ctx))?;
    let done: Vec<i32> = tx
        .query("select version from sluice.schema_migrations", &[])
        .await
        .map_err(PostgresError::query(ctx))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in sink_tx::pending(MIGRATIONS, &done) {
        tx.batch_execute(sql)
            .await
            .map_err(PostgresError::query(format!("applying migration {name}")))?;
        tx.execute(
            "insert into sluice.schema_migrations (version, name) values ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(PostgresError::query(ctx))?;
        applied.push((*name).to_owned());
    }
    tx.commit().await.map_err(PostgresError::query(ctx))?;
    Ok(applied)
}

/// A target column: its name and how JSON values are adjusted for it.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    pub name: String,
    pub kind: TypeKind,
    quoted: String,
    json_key: String,
}

pub use sluice_core::target::BlobColumn;

/// A target table as the sink writes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub id: TableId,
    pub columns: Vec<TargetColumn>,
    /// Indexes of the primary-key columns, in key order.
    pub key: Vec<usize>,
    /// The tables this one references by foreign keys.
    pub references: Vec<TableId>,
    quoted: String,
}

impl TargetTable {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl DescribedTable for TargetTable {
    fn id(&self) -> &TableId {
        &self.id
    }

    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    fn key(&self) -> &[usize] {
        &self.key
    }

    fn references(&self) -> &[TableId] {
        &self.references
    }
}

/// Reads the target tables' shapes. The inner `Err` is a configuration problem, with its fix.
pub async fn describe_targets(
    client: &Client,
    tables: &[TableId],
) -> Result<Vec<Result<TargetTable, String>>, PostgresError> {
    let types: TypeMap = catalog::load_types(client).await?;
    let mut out = Vec::with_capacity(tables.len());
    for id in tables {
        let Some(info) = catalog::describe_table(client, id).await? else {
            out.push(Err(format!(
                "target table {id} does not exist: create it in the target database (Sluice does not create target tables)"
            )));
            continue;
        };
        if info.primary_key.is_empty() {
            out.push(Err(format!(
                "target table {id} has no primary key: upserts and deletes need one (alter table {id} add primary key (…))"
            )));
            continue;
        }
        let columns: Vec<TargetColumn> = info
            .columns
            .iter()
            .map(|(name, oid)| TargetColumn {
                name: name.clone(),
                kind: types.kind(*oid),
                quoted: quote_ident(name),
                json_key: serde_json::to_string(name).unwrap_or_default(),
            })
            .collect();
        let key = info
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let references = client
            .query(
                "select distinct n.nspname::text, c.relname::text
                   from pg_constraint k
                   join pg_class c on c.oid = k.confrelid
                   join pg_namespace n on n.oid = c.relnamespace
                  where k.contype = 'f' and k.conrelid = $1::text::regclass",
                &[&quote_table(id)],
            )
            .await
            .map_err(PostgresError::query(format!(
                "reading the foreign keys of target table {id}"
            )))?
            .iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        out.push(Ok(TargetTable {
            quoted: quote_table(id),
            id: id.clone(),
            columns,
            key,
            references,
        }));
    }
    Ok(out)
}

/// Reads the stored progress of `partitions` for `sink`.
pub async fn load_offsets(
    client: &Client,
    sink: &str,
    partitions: &[(Arc<str>, i32)],
) -> Result<StoredOffsets, PostgresError> {
    let topics: Vec<&str> = partitions.iter().map(|(t, _)| &**t).collect();
    let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let rows = client
        .query(
            "select o.topic, o.partition, o.next_offset, o.source_position::text
               from sluice.apply_offsets o
               join unnest($2::text[], $3::int[]) as want(topic, partition)
                 on want.topic = o.topic and want.partition = o.partition
              where o.sink = $1",
            &[&sink, &topics, &parts],
        )
        .await
        .map_err(PostgresError::query("reading sluice.apply_offsets"))?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let topic: String = row.get(0);
        let Some(tp) = partitions.iter().find(|(t, _)| **t == *topic) else {
            continue;
        };
        out.insert((tp.0.clone(), row.get(1)), (row.get(2), row.get(3)));
    }
    Ok(out)
}

/// One sink's writer: a connection and its prepared statements.
pub struct PostgresSink {
    connection: PostgresConnection,
    client: Option<Client>,
    sink: String,
    tables: Vec<TargetTable>,
    plan: FoldPlan,
    statements: HashMap<StatementKey, Statement>,
    purpose: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StatementKey {
    Delete(usize),
    Upsert(usize, Vec<usize>),
    Update(usize, Vec<usize>),
}

impl PostgresSink {
    pub fn new(
        connection: PostgresConnection,
        sink: &str,
        tables: Vec<TargetTable>,
        worker: usize,
        purpose: String,
    ) -> Self {
        PostgresSink {
            connection,
            client: None,
            sink: sink.to_owned(),
            plan: FoldPlan::new(sink, worker, &tables),
            tables,
            statements: HashMap::new(),
            purpose,
        }
    }

    pub fn tables(&self) -> &[TargetTable] {
        &self.tables
    }

    /// The connection, (re)opened when needed.
    async fn client(&mut self) -> Result<&mut Client, PostgresError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.statements.clear();
            self.client = Some(connect(&self.connection, &self.purpose).await?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| PostgresError::Setup("target connection unavailable".into()))
    }

    /// Whether some of the sink's target tables reference others by foreign keys.
    pub fn has_foreign_keys(&self) -> bool {
        self.plan.has_foreign_keys()
    }

    /// Prepares (once per connection) every statement the folded changes need.
    async fn prepare_statements(
        &mut self,
        groups: &[Vec<FoldedTable>],
    ) -> Result<(), PostgresError> {
        let mut wanted = Vec::new();
        for f in groups.iter().flatten() {
            if !f.deletes.is_empty() {
                wanted.push(StatementKey::Delete(f.table));
            }
            for (shape, _) in &f.upserts {
                wanted.push(StatementKey::Upsert(f.table, shape.clone()));
            }
            for (shape, _) in &f.updates {
                wanted.push(StatementKey::Update(f.table, shape.clone()));
            }
        }
        self.client().await?;
        for key in wanted {
            if self.statements.contains_key(&key) {
                continue;
            }
            let sql = match &key {
                StatementKey::Delete(t) => delete_sql(&self.tables[*t]),
                StatementKey::Upsert(t, shape) => upsert_sql(&self.tables[*t], shape),
                StatementKey::Update(t, shape) => update_sql(&self.tables[*t], shape),
            };
            let client = self.client().await?;
            let stmt = client
                .prepare(&sql)
                .await
                .map_err(PostgresError::query(format!(
                    "preparing a statement for target table {}",
                    self.tables[key_table(&key)].id
                )))?;
            self.statements.insert(key, stmt);
        }
        Ok(())
    }
}

impl SqlWriter for PostgresSink {
    type Error = PostgresError;
    type Tx<'a> = PgTx<'a, 'a>;

    /// A refused batch's transaction is rolled back; the connection and its prepared
    /// statements serve the retry.
    const RECONNECT_AFTER_REFUSAL: bool = false;

    fn plan(&self) -> &FoldPlan {
        &self.plan
    }

    async fn prepare(&mut self, groups: &[Vec<FoldedTable>]) -> Result<(), PostgresError> {
        // Outside the transaction's borrow of the client.
        self.prepare_statements(groups).await
    }

    async fn begin<'s>(
        &'s mut self,
        context: &'static str,
        truncate: Option<&TruncateAt<'_>>,
    ) -> Result<PgTx<'s, 's>, PostgresError> {
        self.client().await?;
        let PostgresSink {
            client,
            sink,
            tables,
            statements,
            ..
        } = self;
        let truncate = truncate.map(|truncate| {
            let names = truncate
                .tables
                .iter()
                .map(|t| tables[*t].quoted.clone())
                .collect();
            let released = truncate
                .blob_columns
                .iter()
                .map(|b| {
                    let state = if b.delete_objects { "released" } else { "kept" };
                    (tables[b.table].id.to_string(), b.url_column.clone(), state)
                })
                .collect();
            (names, released)
        });
        let tx = client
            .as_mut()
            .ok_or_else(|| PostgresError::Setup("target connection unavailable".into()))?
            .transaction()
            .await
            .map_err(PostgresError::query(context))?;
        Ok(PgTx {
            tx: Some(tx),
            sink,
            tables,
            statements,
            truncate,
        })
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<StoredOffsets, PostgresError> {
        let sink = self.sink.clone();
        let client = self.client().await?;
        load_offsets(client, &sink, partitions).await
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.statements.clear();
    }
}

/// Truncated tables (quoted) and their blob columns' ledger release: (table, URL column, new
/// state).
type Truncate = (Vec<String>, Vec<(String, String, &'static str)>);

/// A target transaction with what the shared body needs to write into it.
pub struct PgTx<'a, 'b> {
    tx: Option<Transaction<'a>>,
    sink: &'b str,
    tables: &'b [TargetTable],
    statements: &'b HashMap<StatementKey, Statement>,
    truncate: Option<Truncate>,
}

impl PgTx<'_, '_> {
    fn tx(&self) -> Result<&Transaction<'_>, PostgresError> {
        self.tx
            .as_ref()
            .ok_or_else(|| PostgresError::Setup("target transaction already ended".into()))
    }
}

/// The shared body's statements in Postgres' dialect.
const STATEMENTS: Statements = Statements {
    dead_letter_table: "sluice.dead_letters",
    dead_letter: "insert into sluice.dead_letters (sink, topic, partition, \"offset\", key, value, error, sqlstate)
                  values ($1, $2, $3, $4, $5, $6, $7, $8)",
    barrier_lock: Some("select pg_advisory_xact_lock(hashtext($1 || '/' || $2))"),
    barrier_done: "select count(*) from sluice.truncates_done where sink = $1 and topic = $2 and position = $3",
    barrier_arrive: "insert into sluice.truncate_barriers (sink, topic, position, partition)
                     values ($1, $2, $3, $4) on conflict do nothing",
    barrier_arrived: "select count(*) from sluice.truncate_barriers where sink = $1 and topic = $2 and position = $3",
    barrier_mark_done: "insert into sluice.truncates_done (sink, topic, position) values ($1, $2, $3)",
    barrier_forget: "delete from sluice.truncate_barriers where sink = $1 and topic = $2 and position = $3",
    table_status: "insert into sluice.table_status as s (sink, worker, target_table, upserts, updates,
                     deletes, dead_letters, state, last_error, last_position, last_source_commit, updated_at)
                   values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb,
                           to_timestamp($11::bigint / 1000.0), now())
                   on conflict (sink, worker, target_table) do update set
                     upserts = s.upserts + excluded.upserts, updates = s.updates + excluded.updates,
                     deletes = s.deletes + excluded.deletes,
                     dead_letters = s.dead_letters + excluded.dead_letters, state = excluded.state,
                     last_error = coalesce(excluded.last_error, s.last_error),
                     last_position = coalesce(excluded.last_position, s.last_position),
                     last_source_commit = greatest(s.last_source_commit, excluded.last_source_commit),
                     updated_at = now()",
    history: "insert into sluice.sync_history as h (sink, worker, minute, events, dead_letters, batches, max_lag_ms)
              values ($1, $2, date_trunc('minute', now()), $3, $4, 1,
                      greatest(0, (extract(epoch from clock_timestamp()) * 1000)::bigint - $5::bigint))
              on conflict (sink, worker, minute) do update set
                events = h.events + excluded.events, dead_letters = h.dead_letters + excluded.dead_letters,
                batches = h.batches + 1, max_lag_ms = greatest(h.max_lag_ms, excluded.max_lag_ms)",
};

fn pg_params<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &'a (dyn ToSql + Sync) {
            match p {
                Param::Text(s) => s,
                Param::OptText(s) => s,
                Param::Int(i) => i,
                Param::BigInt(i) => i,
                Param::OptBigInt(i) => i,
            }
        })
        .collect()
}

impl SinkTx for PgTx<'_, '_> {
    type Error = PostgresError;

    const STATEMENTS: &'static Statements = &STATEMENTS;

    async fn run(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> Result<Option<i64>, PostgresError> {
        let tx = self.tx()?;
        let row = match params {
            // Savepoint commands: the simple query protocol.
            [] => tx.batch_execute(sql).await.map(|()| None),
            _ => tx.query_opt(sql, &pg_params(params)).await,
        }
        .map_err(PostgresError::query(context))?;
        Ok(row.and_then(|r| r.try_get::<_, i64>(0).ok()))
    }

    async fn write(&mut self, folded: &[FoldedTable]) -> Result<(), PostgresError> {
        write_folded(self.tx()?, self.tables, self.statements, folded).await
    }

    async fn progress(
        &mut self,
        progress: &[PartitionProgress],
    ) -> Result<Vec<(Arc<str>, i32)>, PostgresError> {
        write_progress(self.tx()?, self.sink, progress).await
    }

    async fn empty_tables(&mut self) -> Result<(), PostgresError> {
        let tx = self.tx()?;
        let Some((names, released)) = &self.truncate else {
            return Ok(());
        };
        if !names.is_empty() {
            tx.batch_execute(&format!("truncate table {}", names.join(", ")))
                .await
                .map_err(PostgresError::query(format!(
                    "truncating {} in the target",
                    names.join(", ")
                )))?;
        }
        // The truncated rows' objects: released (deleted by the next sweep once no live row
        // references them) or kept, as their blob column says, in the same transaction as
        // the truncate.
        for (table, column, state) in released {
            tx.execute(
                "update sluice.blobs set state = $4, updated_at = now()
                  where sink = $1 and target_table = $2 and url_column = $3 and state = 'live'",
                &[&self.sink, table, column, state],
            )
            .await
            .map_err(PostgresError::query(
                "releasing the truncated rows' objects in the blob ledger",
            ))?;
        }
        Ok(())
    }

    async fn finish(&mut self, commit: bool) -> Result<(), PostgresError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if commit {
            tx.commit()
                .await
                .map_err(PostgresError::query("committing a target transaction"))
        } else {
            tx.rollback()
                .await
                .map_err(PostgresError::query("rolling back a target transaction"))
        }
    }
}

fn key_table(key: &StatementKey) -> usize {
    match key {
        StatementKey::Delete(t) | StatementKey::Upsert(t, _) | StatementKey::Update(t, _) => *t,
    }
}

fn sqlstate(e: &PostgresError) -> Option<&str> {
    match e {
        PostgresError::Query { source, .. } | PostgresError::Connect { source, .. } => {
            source.code().map(|c| c.code())
        }
        _ => None,
    }
}

impl SqlError for PostgresError {
    /// SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
    /// Anything else is about the connection or the setup.
    fn is_data_error(&self) -> bool {
        sqlstate(self).is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    }

    fn is_foreign_key_error(&self) -> bool {
        sqlstate(self) == Some("23503")
    }

    /// The server's message and detail (the detail may quote the row: it goes only to the
    /// dead-letter table).
    fn refusal(&self) -> (String, Option<String>) {
        let message = match self {
            PostgresError::Query { source, .. } => source
                .as_db_error()
                .map(|db| match db.detail() {
                    Some(d) => format!("{}: {d}", db.message()),
                    None => db.message().to_owned(),
                })
                .unwrap_or_else(|| source.to_string()),
            other => other.to_string(),
        };
        (message, sqlstate(self).map(str::to_owned))
    }

    /// Everything but a refused configuration (missing table or column, privileges) is worth
    /// retrying; data errors never reach the caller.
    fn apply_class(&self) -> ErrorClass {
        match sqlstate(self) {
            Some(c) if c.starts_with("42") || c.starts_with("28") || c == "3D000" => {
                ErrorClass::Definite
            }
            _ => self.class(),
        }
    }
}

/// A row as a JSON object of `columns` (the values in the same order).
fn row_json(t: &TargetTable, columns: &[usize], values: &[serde_json::Value], out: &mut String) {
    out.push('{');
    for (n, (c, v)) in columns.iter().zip(values).enumerate() {
        if n > 0 {
            out.push(',');
        }
        let col = &t.columns[*c];
        out.push_str(&col.json_key);
        out.push(':');
        push_value(&col.kind, v, out);
    }
    out.push('}');
}

/// The rows of a statement as one JSON array.
fn rows_json(t: &TargetTable, columns: &[usize], rows: &[Vec<serde_json::Value>]) -> String {
    let mut out = String::from("[");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        row_json(t, columns, r, &mut out);
    }
    out.push(']');
    out
}

/// Writes `v` as JSON for a column of `kind`, adjusted to what Postgres' input functions read:
/// bytea from base64 to `\x` hex, astronomical BC years back to `… BC`.
fn push_value(kind: &TypeKind, v: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match (kind, v) {
        (TypeKind::Bytea, J::String(b64)) => {
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => {
                    out.push_str("\"\\\\x");
                    for b in bytes {
                        let _ = write!(out, "{b:02x}");
                    }
                    out.push('"');
                }
                // Not base64: let the server refuse it (the event becomes a dead letter).
                Err(_) => push_json(v, out),
            }
        }
        (TypeKind::Timestamp | TypeKind::TimestampTz | TypeKind::Date, J::String(s)) => {
            match bc_timestamp(s) {
                Some(fixed) => push_json(&J::String(fixed), out),
                None => push_json(v, out),
            }
        }
        (TypeKind::Array(inner), J::Array(items))
            if matches!(
                **inner,
                TypeKind::Bytea
                    | TypeKind::Timestamp
                    | TypeKind::TimestampTz
                    | TypeKind::Date
                    | TypeKind::Array(_)
            ) =>
        {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(inner, item, out);
            }
            out.push(']');
        }
        _ => push_json(v, out),
    }
}

fn push_json(v: &serde_json::Value, out: &mut String) {
    // Writing a Value into a String cannot fail.
    out.push_str(&v.to_string());
}

/// `-0043-03-15T12:00:00.000000` (astronomical year −43) → `0044-03-15T12:00:00.000000 BC`;
/// year `0000` is 1 BC. `None`: the text needs no change.
fn bc_timestamp(s: &str) -> Option<String> {
    if let Some(tail) = s.strip_prefix("0000-") {
        return Some(format!("0001-{tail} BC"));
    }
    let rest = s.strip_prefix('-')?;
    let (year, tail) = rest.split_at(rest.find('-')?);
    let y: i64 = year.parse().ok()?;
    Some(format!("{:04}{tail} BC", y + 1))
}

/// `t.k1 = d.k1 and …`: a target row (`t`) and a JSON row (`d`) with the same key.
fn key_match(t: &TargetTable) -> String {
    t.key
        .iter()
        .map(|k| {
            let q = &t.columns[*k].quoted;
            format!("t.{q} = d.{q}")
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn delete_sql(t: &TargetTable) -> String {
    let cond = key_match(t);
    format!(
        "delete from {table} as t using json_populate_recordset(null::{table}, $1::text::json) as d where {cond}",
        table = t.quoted
    )
}

fn upsert_sql(t: &TargetTable, shape: &[usize]) -> String {
    let cols = shape
        .iter()
        .map(|c| t.columns[*c].quoted.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let key = t
        .key
        .iter()
        .map(|c| t.columns[*c].quoted.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let updates: Vec<String> = shape
        .iter()
        .filter(|c| !t.key.contains(c))
        .map(|c| {
            let q = &t.columns[*c].quoted;
            format!("{q} = excluded.{q}")
        })
        .collect();
    let action = if updates.is_empty() {
        "nothing".to_owned()
    } else {
        format!("update set {}", updates.join(", "))
    };
    format!(
        "insert into {table} ({cols}) select {cols} from json_populate_recordset(null::{table}, $1::text::json) on conflict ({key}) do {action}",
        table = t.quoted
    )
}

/// Sets the shape's non-key columns of existing rows; rows whose key is absent stay absent.
fn update_sql(t: &TargetTable, shape: &[usize]) -> String {
    let sets = shape
        .iter()
        .filter(|c| !t.key.contains(c))
        .map(|c| {
            let q = &t.columns[*c].quoted;
            format!("{q} = d.{q}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let cond = key_match(t);
    format!(
        "update {table} as t set {sets} from json_populate_recordset(null::{table}, $1::text::json) as d where {cond}",
        table = t.quoted
    )
}

async fn write_folded(
    tx: &impl GenericClient,
    tables: &[TargetTable],
    statements: &HashMap<StatementKey, Statement>,
    folded: &[FoldedTable],
) -> Result<(), PostgresError> {
    for f in folded {
        let table = &tables[f.table];
        // Each statement takes its rows as one JSON array.
        let mut work = Vec::new();
        if !f.deletes.is_empty() {
            let json = rows_json(table, &table.key, &f.deletes);
            work.push((StatementKey::Delete(f.table), json, "deleting rows from"));
        }
        for (shape, rows) in &f.upserts {
            let key = StatementKey::Upsert(f.table, shape.clone());
            work.push((key, rows_json(table, shape, rows), "upserting rows into"));
        }
        for (shape, rows) in &f.updates {
            if shape.iter().all(|c| table.key.contains(c)) {
                continue; // nothing to set
            }
            let key = StatementKey::Update(f.table, shape.clone());
            work.push((key, rows_json(table, shape, rows), "updating rows of"));
        }
        for (key, json, what) in work {
            let stmt = statements
                .get(&key)
                .ok_or_else(|| PostgresError::Setup("statement not prepared".into()))?;
            tx.execute(stmt, &[&json])
                .await
                .map_err(PostgresError::query(format!("{what} {}", table.id)))?;
        }
    }
    Ok(())
}

/// Writes each partition's progress if the stored offset is still the expected one; returns
/// the partitions where it was not.
async fn write_progress(
    tx: &Transaction<'_>,
    sink: &str,
    progress: &[PartitionProgress],
) -> Result<Vec<(Arc<str>, i32)>, PostgresError> {
    let mut fenced = Vec::new();
    for p in progress {
        let n = tx
            .execute(
                "insert into sluice.apply_offsets as o (sink, topic, partition, next_offset, source_position)
                 values ($1, $2, $3, $4, $5::text::jsonb)
                 on conflict (sink, topic, partition) do update
                    set next_offset = excluded.next_offset,
                        source_position = coalesce(excluded.source_position, o.source_position),
                        updated_at = now()
                  where o.next_offset = $6",
                &[
                    &sink,
                    &&*p.topic,
                    &p.partition,
                    &p.next_offset,
                    &p.position,
                    &p.expected,
                ],
            )
            .await
            .map_err(PostgresError::query("writing sluice.apply_offsets"))?;
        if n == 0 {
            fenced.push((p.topic.clone(), p.partition));
        }
    }
    Ok(fenced)
}

/// Moves `sink`'s stored offsets (a replay): each (topic, partition) reads again from the
/// given offset, and its last applied source position is forgotten so that nothing is skipped
/// as already applied. One transaction.
pub async fn move_offsets(
    client: &mut Client,
    sink: &str,
    moves: &[(String, i32, i64)],
) -> Result<(), PostgresError> {
    let topics: Vec<&str> = moves.iter().map(|m| m.0.as_str()).collect();
    let partitions: Vec<i32> = moves.iter().map(|m| m.1).collect();
    let offsets: Vec<i64> = moves.iter().map(|m| m.2).collect();
    client
        .execute(
            "insert into sluice.apply_offsets (sink, topic, partition, next_offset, source_position, updated_at)
             select $1, t, p, o, null, now() from unnest($2::text[], $3::int[], $4::bigint[]) as m(t, p, o)
             on conflict (sink, topic, partition) do update
               set next_offset = excluded.next_offset, source_position = null, updated_at = now()",
            &[&sink, &topics, &partitions, &offsets],
        )
        .await
        .map_err(PostgresError::query("moving the sink's offsets in sluice.apply_offsets"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TargetTable {
        let col = |name: &str, kind: TypeKind| TargetColumn {
            name: name.into(),
            kind,
            quoted: quote_ident(name),
            json_key: serde_json::to_string(name).unwrap_or_default(),
        };
        TargetTable {
            id: TableId::new("public", "t"),
            columns: vec![
                col("id", TypeKind::Int),
                col("name", TypeKind::Text),
                col("doc", TypeKind::Text),
                col("data", TypeKind::Bytea),
            ],
            key: vec![0],
            references: Vec::new(),
            quoted: "\"public\".\"t\"".into(),
        }
    }

    #[test]
    fn bytea_and_bc_timestamps_are_adjusted() {
        let mut out = String::new();
        push_value(&TypeKind::Bytea, &serde_json::json!("AP8="), &mut out);
        assert_eq!(out, "\"\\\\x00ff\"");
        assert_eq!(
            bc_timestamp("-0043-03-15T12:00:00.000000").as_deref(),
            Some("0044-03-15T12:00:00.000000 BC")
        );
        assert_eq!(bc_timestamp("2024-01-01T00:00:00.000000"), None);
        assert_eq!(
            bc_timestamp("-0043-03-15").as_deref(),
            Some("0044-03-15 BC")
        );
        assert_eq!(bc_timestamp("0000-01-01").as_deref(), Some("0001-01-01 BC"));
    }

    #[test]
    fn upsert_sql_updates_only_carried_columns() {
        let sql = upsert_sql(&table(), &[0, 1]);
        assert!(
            sql.contains("on conflict (\"id\") do update set \"name\" = excluded.\"name\""),
            "{sql}"
        );
        assert!(!sql.contains("\"doc\" ="), "{sql}");
        assert!(upsert_sql(&table(), &[0]).ends_with("do nothing"));
    }
}
