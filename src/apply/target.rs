//! The target databases a sink can write to, behind one type the workers use.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::{
    ApplyBatch, ApplyOutcome, BarrierOutcome, ErrorClass, PartitionProgress, TableId,
};
use sluice_mysql::{MySqlConnection, MySqlError, MySqlSink, MySqlTable};
use sluice_postgres::{BlobColumn, PostgresConnection, PostgresError, PostgresSink, TargetTable};

use crate::config::SinkConfig;
use crate::telemetry::error_chain;

/// Where a sink writes.
#[derive(Debug, Clone)]
pub enum TargetConnection {
    Postgres(PostgresConnection),
    MySql(MySqlConnection),
}

impl TargetConnection {
    pub fn of(sink: &SinkConfig) -> Option<TargetConnection> {
        match (&sink.postgres, &sink.mysql) {
            (Some(pg), None) => Some(TargetConnection::Postgres(pg.clone())),
            (None, Some(my)) => Some(TargetConnection::MySql(my.clone())),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TargetConnection::Postgres(c) => format!("postgres {}", c.describe()),
            TargetConnection::MySql(c) => format!("mysql {}", c.describe()),
        }
    }

    /// The config section that holds the connection, for messages.
    pub fn section(&self, sink: &str) -> String {
        match self {
            TargetConnection::Postgres(_) => format!("[sinks.{sink}.postgres]"),
            TargetConnection::MySql(_) => format!("[sinks.{sink}.mysql]"),
        }
    }

    /// Where the dead letters of this target go.
    pub fn dead_letter_table(&self) -> &'static str {
        match self {
            TargetConnection::Postgres(_) => "sluice.dead_letters",
            TargetConnection::MySql(_) => "sluice_dead_letters",
        }
    }
}

/// A target database and its tables' shapes, as read at start.
#[derive(Debug, Clone)]
pub enum Target {
    Postgres(PostgresConnection, Vec<TargetTable>),
    MySql(MySqlConnection, Vec<MySqlTable>),
}

impl Target {
    /// The tables (indexes) that reference, or are referenced by, another table of the sink
    /// through a foreign key.
    pub fn linked_tables(&self) -> std::collections::HashSet<usize> {
        let refs = match self {
            Target::Postgres(_, t) => sluice_postgres::sink::references_by_index(t),
            Target::MySql(_, t) => sluice_mysql::sink::references_by_index(t),
        };
        let mut linked = std::collections::HashSet::new();
        for (t, parents) in refs.iter().enumerate() {
            for &p in parents.iter().filter(|p| **p != t) {
                linked.insert(t);
                linked.insert(p);
            }
        }
        linked
    }

    /// (table, column names, key column indexes) for each table, in order.
    pub fn shapes(&self) -> Vec<(TableId, Vec<String>, Vec<usize>)> {
        match self {
            Target::Postgres(_, t) => t
                .iter()
                .map(|t| (t.id.clone(), t.column_names(), t.key.clone()))
                .collect(),
            Target::MySql(_, t) => t
                .iter()
                .map(|t| (t.id.clone(), t.column_names(), t.key.clone()))
                .collect(),
        }
    }
}

/// Errors of either target, with their class.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    MySql(#[from] MySqlError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::stage::StageError),
}

impl SinkError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Postgres(e) => sluice_postgres::sink::apply_error_class(e),
            SinkError::MySql(e) => e.class(),
            // A store or ledger that fails is waited for, never a reason to drop a row.
            SinkError::Blob(_) => ErrorClass::Transient,
        }
    }
}

/// Connects, creates or upgrades Sluice's own tables, and reads the target tables' shapes.
/// `Ok(Err(problems))` lists configuration problems.
pub async fn prepare(
    connection: &TargetConnection,
    tables: &[TableId],
    migrate: bool,
) -> Result<Result<Target, Vec<String>>, SinkError> {
    match connection {
        TargetConnection::Postgres(c) => {
            let mut client = sluice_postgres::client::connect(c, "apply").await?;
            if migrate {
                let applied = sluice_postgres::sink::migrate(&mut client).await?;
                if !applied.is_empty() {
                    tracing::info!(migrations = %applied.join(", "), "sluice schema migrated");
                }
            }
            let described = sluice_postgres::sink::describe_targets(&client, tables).await?;
            Ok(split(described).map(|t| Target::Postgres(c.clone(), t)))
        }
        TargetConnection::MySql(c) => {
            let mut conn = sluice_mysql::client::connect(c).await?;
            if migrate {
                let applied = sluice_mysql::sink::migrate(&mut conn).await?;
                if !applied.is_empty() {
                    tracing::info!(migrations = %applied.join(", "), "sluice tables migrated");
                }
            }
            let described = sluice_mysql::sink::describe_targets(&mut conn, c, tables).await?;
            Ok(split(described).map(|t| Target::MySql(c.clone(), t)))
        }
    }
}

fn split<T>(described: Vec<Result<T, String>>) -> Result<Vec<T>, Vec<String>> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for d in described {
        match d {
            Ok(t) => ok.push(t),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}

/// Reads stored offsets over a fresh connection (for the consumer's rebalance callback).
pub async fn load_offsets(
    connection: &TargetConnection,
    sink: &str,
    partitions: &[(Arc<str>, i32)],
) -> Result<HashMap<(Arc<str>, i32), (i64, Option<String>)>, String> {
    match connection {
        TargetConnection::Postgres(c) => {
            let client = sluice_postgres::client::connect(c, "apply offsets")
                .await
                .map_err(|e| error_chain(&e))?;
            sluice_postgres::sink::load_offsets(&client, sink, partitions)
                .await
                .map_err(|e| error_chain(&e))
        }
        TargetConnection::MySql(c) => {
            let mut conn = sluice_mysql::client::connect(c)
                .await
                .map_err(|e| error_chain(&e))?;
            let out = sluice_mysql::sink::load_offsets(&mut conn, sink, partitions)
                .await
                .map_err(|e| error_chain(&e));
            let _ = conn.disconnect().await;
            out
        }
    }
}

/// Moves a sink's stored offsets (see `sluice replay`); returns the offsets stored before.
pub async fn move_offsets(
    connection: &TargetConnection,
    sink: &str,
    moves: &[(String, i32, i64)],
) -> Result<HashMap<(Arc<str>, i32), (i64, Option<String>)>, String> {
    let partitions: Vec<(Arc<str>, i32)> = moves
        .iter()
        .map(|(t, p, _)| (Arc::from(t.as_str()), *p))
        .collect();
    let before = load_offsets(connection, sink, &partitions).await?;
    match connection {
        TargetConnection::Postgres(c) => {
            let mut client = sluice_postgres::client::connect(c, "replay")
                .await
                .map_err(|e| error_chain(&e))?;
            sluice_postgres::sink::move_offsets(&mut client, sink, moves)
                .await
                .map_err(|e| error_chain(&e))?;
        }
        TargetConnection::MySql(c) => {
            let mut conn = sluice_mysql::client::connect(c)
                .await
                .map_err(|e| error_chain(&e))?;
            let r = sluice_mysql::sink::move_offsets(&mut conn, sink, moves)
                .await
                .map_err(|e| error_chain(&e));
            let _ = conn.disconnect().await;
            r?;
        }
    }
    Ok(before)
}

/// One worker's writer (one per worker, so the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum TargetSink {
    Postgres(PostgresSink),
    MySql(MySqlSink),
}

impl TargetSink {
    pub fn new(target: &Target, sink: &str, id: usize) -> Self {
        match target {
            Target::Postgres(c, t) => TargetSink::Postgres(PostgresSink::new(
                c.clone(),
                sink,
                t.clone(),
                format!("apply {sink} #{id}"),
            )),
            Target::MySql(c, t) => TargetSink::MySql(MySqlSink::new(c.clone(), sink, t.clone())),
        }
    }

    pub async fn apply(&mut self, batch: &ApplyBatch) -> Result<ApplyOutcome, SinkError> {
        Ok(match self {
            TargetSink::Postgres(s) => s.apply(batch).await?,
            TargetSink::MySql(s) => s.apply(batch).await?,
        })
    }

    pub async fn load_offsets(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<HashMap<(Arc<str>, i32), (i64, Option<String>)>, SinkError> {
        Ok(match self {
            TargetSink::Postgres(s) => s.load_offsets(partitions).await?,
            TargetSink::MySql(s) => s.load_offsets(partitions).await?,
        })
    }

    pub async fn truncate_barrier(
        &mut self,
        topic: &str,
        position: &str,
        partition_count: i32,
        tables: &[usize],
        blob_columns: &[BlobColumn],
        progress: &PartitionProgress,
    ) -> Result<BarrierOutcome, SinkError> {
        Ok(match self {
            TargetSink::Postgres(s) => {
                s.truncate_barrier(
                    topic,
                    position,
                    partition_count,
                    tables,
                    blob_columns,
                    progress,
                )
                .await?
            }
            // MySQL targets have no blob columns (refused when the config loads).
            TargetSink::MySql(s) => {
                s.truncate_barrier(topic, position, partition_count, tables, progress)
                    .await?
            }
        })
    }

    pub fn reset(&mut self) {
        match self {
            TargetSink::Postgres(s) => s.reset(),
            TargetSink::MySql(s) => s.reset(),
        }
    }
}
