//! MySQL/MariaDB as a target of apply: [`sluice_core::target::Target`] over a connection, and
//! [`MySqlSink`] as each worker's writer.

use std::sync::Arc;

use sluice_core::target::{StoredOffsets, Target};
use sluice_core::TableId;

use crate::client::connect;
use crate::config::MySqlConnection;
use crate::error::MySqlError;
use crate::sink::{self, MySqlSink, MySqlTable};

/// A MySQL or MariaDB target database.
#[derive(Debug, Clone)]
pub struct MySqlTarget(pub MySqlConnection);

impl Target for MySqlTarget {
    type Table = MySqlTable;
    type Writer = MySqlSink;
    type Error = MySqlError;

    const KIND: &'static str = "mysql";
    const DEAD_LETTER_TABLE: &'static str = "sluice_dead_letters";

    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn prepare(
        &self,
        tables: &[TableId],
        migrate: bool,
    ) -> Result<Vec<Result<MySqlTable, String>>, MySqlError> {
        let mut conn = connect(&self.0).await?;
        if migrate {
            let applied = sink::migrate(&mut conn).await?;
            if !applied.is_empty() {
                tracing::info!(migrations = %applied.join(", "), "sluice tables migrated");
            }
        }
        let described = sink::describe_targets(&mut conn, &self.0, tables).await;
        let _ = conn.disconnect().await;
        described
    }

    async fn load_offsets(
        &self,
        sink: &str,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<StoredOffsets, MySqlError> {
        let mut conn = connect(&self.0).await?;
        let out = sink::load_offsets(&mut conn, sink, partitions).await;
        let _ = conn.disconnect().await;
        out
    }

    async fn move_offsets(
        &self,
        sink: &str,
        moves: &[(String, i32, i64)],
    ) -> Result<(), MySqlError> {
        let mut conn = connect(&self.0).await?;
        let out = sink::move_offsets(&mut conn, sink, moves).await;
        let _ = conn.disconnect().await;
        out
    }

    fn writer(&self, sink: &str, tables: Vec<MySqlTable>, id: usize) -> MySqlSink {
        MySqlSink::new(self.0.clone(), sink, id, tables)
    }
}
