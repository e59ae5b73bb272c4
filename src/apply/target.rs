//! The target databases a sink can write to. Apply is generic over
//! [`sluice_core::target::Target`]; [`on_target!`] is the one place that picks the
//! implementation a sink's config names (a new target kind is one arm there and one in
//! [`TargetConnection`]).

use std::collections::HashSet;
use std::sync::Arc;

use sluice_core::target::{
    references_by_index, DescribedTable, StoredOffsets, TableShapeOf, Target, TargetWriter,
};
use sluice_core::{ErrorClass, TableId};
use sluice_mysql::MySqlConnection;
use sluice_postgres::PostgresConnection;

use crate::config::SinkConfig;
use crate::telemetry::error_chain;

/// Where a sink writes, as its config says.
#[derive(Debug, Clone)]
pub enum TargetConnection {
    Postgres(PostgresConnection),
    MySql(MySqlConnection),
}

/// Evaluates `$body` with `$t` bound to the [`Target`] implementation of `$connection` (a
/// [`TargetConnection`]).
macro_rules! on_target {
    ($connection:expr, $t:ident => $body:expr) => {
        match $connection {
            $crate::apply::target::TargetConnection::Postgres(c) => {
                let $t = sluice_postgres::PostgresTarget(c.clone());
                $body
            }
            $crate::apply::target::TargetConnection::MySql(c) => {
                let $t = sluice_mysql::MySqlTarget(c.clone());
                $body
            }
        }
    };
}
pub(crate) use on_target;

impl TargetConnection {
    pub fn of(sink: &SinkConfig) -> Option<TargetConnection> {
        match (&sink.postgres, &sink.mysql) {
            (Some(pg), None) => Some(TargetConnection::Postgres(pg.clone())),
            (None, Some(my)) => Some(TargetConnection::MySql(my.clone())),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        fn kind_of<T: Target>(_: &T) -> &'static str {
            T::KIND
        }
        on_target!(self, t => kind_of(&t))
    }

    pub fn describe(&self) -> String {
        let target = on_target!(self, t => t.describe());
        format!("{} {target}", self.kind())
    }

    /// The config section that holds the connection, for messages.
    pub fn section(&self, sink: &str) -> String {
        format!("[sinks.{sink}.{}]", self.kind())
    }

    /// Where the dead letters of this target go.
    pub fn dead_letter_table(&self) -> &'static str {
        fn table_of<T: Target>(_: &T) -> &'static str {
            T::DEAD_LETTER_TABLE
        }
        on_target!(self, t => table_of(&t))
    }
}

/// The tables (indexes) that reference, or are referenced by, another table of the sink
/// through a foreign key.
pub fn linked_tables<T: Target>(tables: &[T::Table]) -> HashSet<usize> {
    let mut linked = HashSet::new();
    for (t, parents) in references_by_index(tables).iter().enumerate() {
        for &p in parents.iter().filter(|p| **p != t) {
            linked.insert(t);
            linked.insert(p);
        }
    }
    linked
}

/// (table, column names, key column indexes) for each table, in order.
pub fn shapes<T: Target>(tables: &[T::Table]) -> Vec<TableShapeOf> {
    tables.iter().map(DescribedTable::shape_of).collect()
}

/// An error of the target or of the blob stage, with its class.
#[derive(Debug)]
pub enum SinkError {
    Target(ErrorClass, Box<dyn std::error::Error + Send + Sync>),
    Blob(crate::blobs::stage::StageError),
}

impl SinkError {
    /// A writer's error, classed by its target.
    pub fn of<W: TargetWriter>(e: W::Error) -> SinkError {
        SinkError::Target(W::class(&e), Box::new(e))
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Target(class, _) => *class,
            // A store or ledger that fails is waited for, never a reason to drop a row.
            SinkError::Blob(_) => ErrorClass::Transient,
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Target(_, e) => e.fmt(f),
            SinkError::Blob(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SinkError::Target(_, e) => e.source(),
            SinkError::Blob(e) => e.source(),
        }
    }
}

/// Connects, creates or upgrades Sluice's own tables (`migrate`), and reads the target tables'
/// shapes. `Ok(Err(problems))` lists configuration problems.
pub async fn prepare<T: Target>(
    target: &T,
    tables: &[TableId],
    migrate: bool,
) -> Result<Result<Vec<T::Table>, Vec<String>>, T::Error> {
    let described = target.prepare(tables, migrate).await?;
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for d in described {
        match d {
            Ok(t) => ok.push(t),
            Err(p) => problems.push(p),
        }
    }
    Ok(if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    })
}

/// Reads stored offsets over a fresh connection.
pub async fn load_offsets(
    connection: &TargetConnection,
    sink: &str,
    partitions: &[(Arc<str>, i32)],
) -> Result<StoredOffsets, String> {
    on_target!(connection, t => t
        .load_offsets(sink, partitions)
        .await
        .map_err(|e| error_chain(&e)))
}

/// Moves a sink's stored offsets (see `sluice replay`); returns the offsets stored before.
pub async fn move_offsets(
    connection: &TargetConnection,
    sink: &str,
    moves: &[(String, i32, i64)],
) -> Result<StoredOffsets, String> {
    let partitions: Vec<(Arc<str>, i32)> = moves
        .iter()
        .map(|(t, p, _)| (Arc::from(t.as_str()), *p))
        .collect();
    let before = load_offsets(connection, sink, &partitions).await?;
    on_target!(connection, t => t
        .move_offsets(sink, moves)
        .await
        .map_err(|e| error_chain(&e)))?;
    Ok(before)
}
