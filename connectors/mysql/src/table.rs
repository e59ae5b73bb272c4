//! What a MySQL/MariaDB source knows of its tables and of binlog positions: the captured
//! tables' shapes, binlog coordinates and the server's current one. Shared by the source, its
//! stream and its backfill.

use std::sync::Arc;

use mysql_async::prelude::*;
use mysql_async::Conn;
use sluice_core::event::binlog_file_seq;
use sluice_core::{Row, TableSchema};

use crate::binlog::GtidSet;
use crate::client::quote_ident;
use crate::error::MySqlError;
use crate::types::Kind;

/// A captured table as `information_schema` describes it at start.
#[derive(Debug)]
pub struct CapturedTable {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<Kind>,
    pub key_names: Vec<String>,
    /// Columns MariaDB declares JSON (LONGTEXT with a `json_valid` check).
    pub json_columns: Vec<String>,
}

impl CapturedTable {
    /// The table's columns, quoted and comma-separated, for a select list.
    pub fn select_list(&self) -> String {
        self.schema.select_list(quote_ident)
    }

    /// A row of a select of [`CapturedTable::select_list`] (binary protocol), converted.
    pub fn row(&self, values: Vec<mysql_async::Value>) -> Row {
        Row {
            values: values
                .into_iter()
                .zip(&self.kinds)
                .map(|(v, k)| Some(k.convert(v)))
                .collect(),
        }
    }
}

/// A binlog coordinate, `file:pos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl BinlogPos {
    pub fn parse(text: &str) -> Option<BinlogPos> {
        let (file, pos) = text.rsplit_once(':')?;
        binlog_file_seq(file)?;
        Some(BinlogPos {
            file: file.to_owned(),
            pos: pos.parse().ok()?,
        })
    }
}

impl std::fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// The end of the server's binlog now.
pub(crate) async fn current_position(conn: &mut Conn) -> Result<BinlogPos, MySqlError> {
    Ok(current_position_and_gtids(conn).await?.0)
}

/// The end of the server's binlog now, and on MySQL the GTID set executed up to it (the same
/// `SHOW MASTER STATUS` row: the two agree).
pub(crate) async fn current_position_and_gtids(
    conn: &mut Conn,
) -> Result<(BinlogPos, Option<GtidSet>), MySqlError> {
    let row: Option<mysql_async::Row> = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .map_err(MySqlError::query("reading the binlog position"))?;
    let row = row.ok_or_else(|| {
        MySqlError::Setup("SHOW MASTER STATUS is empty: the binary log is off".into())
    })?;
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    // MySQL's fifth column; MariaDB has four.
    let gtids = (row.len() > 4)
        .then(|| row.get::<Option<String>, usize>(4).flatten())
        .flatten()
        .and_then(|text| GtidSet::parse(&text));
    match (file, pos) {
        (Some(file), Some(pos)) => Ok((BinlogPos { file, pos }, gtids)),
        _ => Err(MySqlError::Setup(
            "SHOW MASTER STATUS returned no file and position".into(),
        )),
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
