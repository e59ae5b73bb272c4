//! Postgres as a target of apply: [`sluice_core::target::Target`] over a connection, and
//! [`PostgresSink`] as each worker's writer.

use std::sync::Arc;

use sluice_core::target::{StoredOffsets, Target};
use sluice_core::TableId;

use crate::client::connect;
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::sink::{self, PostgresSink, TargetTable};

/// A Postgres target database.
#[derive(Debug, Clone)]
pub struct PostgresTarget(pub PostgresConnection);

impl Target for PostgresTarget {
    type Table = TargetTable;
    type Writer = PostgresSink;
    type Error = PostgresError;

    const KIND: &'static str = "postgres";
    const DEAD_LETTER_TABLE: &'static str = "sluice.dead_letters";

    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn prepare(
        &self,
        tables: &[TableId],
        migrate: bool,
    ) -> Result<Vec<Result<TargetTable, String>>, PostgresError> {
        let mut client = connect(&self.0, "apply").await?;
        if migrate {
            let applied = sink::migrate(&mut client).await?;
            if !applied.is_empty() {
                tracing::info!(migrations = %applied.join(", "), "sluice schema migrated");
            }
        }
        sink::describe_targets(&client, tables).await
    }

    async fn load_offsets(
        &self,
        sink: &str,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<StoredOffsets, PostgresError> {
        let client = connect(&self.0, "apply offsets").await?;
        sink::load_offsets(&client, sink, partitions).await
    }

    async fn move_offsets(
        &self,
        sink: &str,
        moves: &[(String, i32, i64)],
    ) -> Result<(), PostgresError> {
        let mut client = connect(&self.0, "replay").await?;
        sink::move_offsets(&mut client, sink, moves).await
    }

    fn writer(&self, sink: &str, tables: Vec<TargetTable>, id: usize) -> PostgresSink {
        PostgresSink::new(
            self.0.clone(),
            sink,
            tables,
            id,
            format!("apply {sink} #{id}"),
        )
    }
}
