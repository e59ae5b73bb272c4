//! Incremental backfill of a MySQL/MariaDB source: the existing rows of a table added to a
//! running source, those `sluice snapshot` asks for, and MySQL's initial snapshot, read in
//! key-ordered chunks while the binlog stream goes on. The driver, the tracker and why a chunk
//! row never overwrites a newer change are the same for every source
//! ([`sluice_core::backfill`]); this module supplies the chunk read (one key-ordered `SELECT …
//! LIMIT n`) and the marker.
//!
//! The binlog has no logical messages, so markers are rows of a *signal table* in the source
//! (`signal_table`, created when first needed): a row per source that each marker rewrites, in
//! its own transaction, after its chunk is read. A change the read saw was written to the
//! binlog before it became visible (two-phase commit: the binlog, then the engine), so before
//! the marker, which was written after the read. Requests of `sluice snapshot` travel the same
//! way: a `snapshot` row of the signal table, read by the stream in order. Progress (the last
//! key read, as SQL literals) is part of the source checkpoint, so a restart resumes after the
//! last published chunk.

use std::sync::Arc;

use futures_util::StreamExt as _;
use mysql_async::prelude::*;
use mysql_async::Conn;
use sluice_core::backfill::{chunk_filter, ChunkReader, MarkerId, Released, Tracker};
use sluice_core::{
    BackfillState, Classified, ErrorClass, Row, SnapshotRequest, TableId, TableSchema,
};

use crate::client::{connect, quote_ident, quote_table};
use crate::config::MySqlConnection;
use crate::error::MySqlError;
use crate::table::CapturedTable;

/// The id of each backfill that reads a table for the initial snapshot of a server without
/// a snapshot point in the binlog (MySQL), followed by the table and the start time.
pub const SNAPSHOT_ID_PREFIX: &str = "snapshot-";

/// `kind` of a watermark row of the signal table.
pub const MARKER_KIND: &str = "marker";
/// `kind` of a re-sync request row; its content is a [`SnapshotRequest`] in JSON.
pub const REQUEST_KIND: &str = "snapshot";

/// A chunk's marker, the content of a marker row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    source: String,
    run: String,
    n: u64,
    /// `high`: the chunk was read. (Earlier versions also wrote a `low` watermark before each
    /// read; such rows, still in an older binlog, are ignored.)
    edge: String,
    /// `database.table` read.
    table: String,
}

/// Creates the signal table if it is missing; the error says what to run instead.
pub async fn ensure_signal_table(
    conn: &mut Conn,
    signal: &TableId,
    source: &str,
) -> Result<(), MySqlError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(191) NOT NULL PRIMARY KEY, \
         kind VARCHAR(16) NOT NULL, content TEXT NOT NULL) ENGINE=InnoDB",
        quote_table(signal)
    );
    conn.query_drop(&sql).await.map_err(|e| {
        MySqlError::Setup(format!(
            "source {source}: cannot create the signal table {signal} that backfills and \
             `sluice snapshot` write their watermarks into ({e}): create it as `{sql}` and \
             grant the capture user INSERT and UPDATE on it, or name another in \
             sources.{source}.signal_table"
        ))
    })
}

/// Writes `content` into the source's row of `kind` in the signal table (its own transaction).
pub async fn write_signal(
    conn: &mut Conn,
    signal: &TableId,
    source: &str,
    kind: &str,
    content: &str,
) -> Result<(), MySqlError> {
    conn.exec_drop(
        format!(
            "INSERT INTO {} (id, kind, content) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE kind = VALUES(kind), content = VALUES(content)",
            quote_table(signal)
        ),
        (format!("{source}/{kind}"), kind, content),
    )
    .await
    .map_err(MySqlError::query(format!(
        "writing a {kind} row into the signal table {signal}"
    )))
}

/// Queues a re-sync of `source` (`sluice snapshot`): checks the predicate by counting the rows
/// it matches, writes the request into the signal table and returns the count and the binlog
/// position after the request (the capture has taken it up once its checkpoint passes it).
pub async fn queue_snapshot(
    settings: &crate::MySqlSourceSettings,
    request: &SnapshotRequest,
    table: &TableId,
) -> Result<(i64, crate::table::BinlogPos), MySqlError> {
    let mut conn = connect(&settings.connection).await?;
    let total = count_matching(&mut conn, table, request.predicate.as_deref()).await?;
    ensure_signal_table(&mut conn, &settings.signal_table, &settings.name).await?;
    let body = serde_json::to_string(request).unwrap_or_default();
    write_signal(
        &mut conn,
        &settings.signal_table,
        &settings.name,
        REQUEST_KIND,
        &body,
    )
    .await?;
    let at = crate::table::current_position(&mut conn).await?;
    let _ = conn.disconnect().await;
    Ok((total, at))
}

/// How many rows of `table` match `predicate` (all rows without one), on a new connection.
pub async fn count_rows(
    connection: &MySqlConnection,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, MySqlError> {
    let mut conn = connect(connection).await?;
    let n = count_matching(&mut conn, table, predicate).await;
    let _ = conn.disconnect().await;
    n
}

/// How many rows of `table` match `predicate` (all rows without one).
pub async fn count_matching(
    conn: &mut Conn,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, MySqlError> {
    let mut sql = format!("SELECT COUNT(*) FROM {}", quote_table(table));
    if let Some(p) = predicate {
        sql.push_str(&format!(" WHERE ({p})"));
    }
    let n: Option<i64> = conn
        .query_first(sql)
        .await
        .map_err(MySqlError::query(format!("counting the rows of {table}")))?;
    Ok(n.unwrap_or(0))
}

/// Hands a row written into the signal table to the tracker; returns the rows a marker of
/// this source releases.
pub fn signal(tracker: &mut Tracker, kind: &str, content: &str) -> Option<Released> {
    match kind {
        MARKER_KIND => {
            let marker: Marker = serde_json::from_str(content).ok()?;
            if marker.source != tracker.source() || marker.edge == "low" {
                return None;
            }
            tracker.marker(&MarkerId {
                run: marker.run,
                n: marker.n,
            })
        }
        REQUEST_KIND => {
            tracker.request(content);
            None
        }
        _ => None,
    }
}

/// A query the table refuses (a predicate naming a missing column, a syntax error): retrying
/// cannot help.
fn refused(e: &MySqlError) -> bool {
    e.sqlstate()
        .is_some_and(|s| s.starts_with("42") || s.starts_with("22"))
}

/// MySQL's and MariaDB's chunk reads and markers for the backfill driver.
pub struct MySqlChunks {
    pub conn: MySqlConnection,
    pub source: String,
    pub signal: TableId,
}

impl ChunkReader for MySqlChunks {
    type Table = CapturedTable;
    type Conn = Conn;
    type Error = MySqlError;

    fn schema(table: &CapturedTable) -> &Arc<TableSchema> {
        &table.schema
    }

    fn retryable(e: &MySqlError) -> bool {
        e.class() == ErrorClass::Transient && !refused(e)
    }

    async fn open(&self) -> Result<Conn, MySqlError> {
        let mut conn = connect(&self.conn).await?;
        ensure_signal_table(&mut conn, &self.signal, &self.source).await?;
        Ok(conn)
    }

    async fn estimate(&self, _conn: &mut Conn, _table: &CapturedTable) -> Option<i64> {
        None
    }

    async fn mark(
        &self,
        conn: &mut Conn,
        table: &TableId,
        marker: &MarkerId,
    ) -> Result<(), MySqlError> {
        let content = Marker {
            source: self.source.clone(),
            run: marker.run.clone(),
            n: marker.n,
            edge: "high".to_owned(),
            table: table.to_string(),
        };
        let content = serde_json::to_string(&content).unwrap_or_default();
        write_signal(conn, &self.signal, &self.source, MARKER_KIND, &content).await
    }

    async fn close(&self, conn: Conn) {
        let _ = conn.disconnect().await;
    }

    /// The next chunk: rows after `bf.after` by primary key, matching the predicate, and the
    /// last row's key as SQL literals.
    async fn read(
        &self,
        conn: &mut Conn,
        table: &CapturedTable,
        bf: &BackfillState,
        limit: usize,
    ) -> Result<(Vec<Row>, Option<Vec<String>>), MySqlError> {
        let context = || format!("reading a backfill chunk of {}", table.schema.id);
        let keys: Vec<String> = table.key_names.iter().map(|k| quote_ident(k)).collect();
        let after = bf.after.as_ref().map(|after| after_condition(&keys, after));
        let filter = chunk_filter(after, bf.predicate.as_deref());
        let sql = format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
            table.select_list(),
            quote_table(&table.schema.id),
            keys.join(", "),
        );
        // A SELECT: exactly one result set.
        let mut stream = conn
            .exec_stream::<mysql_async::Row, _, _>(sql, ())
            .await
            .map_err(MySqlError::query(context()))?;
        let mut rows = Vec::with_capacity(limit);
        let mut last = None;
        while let Some(row) = stream.next().await {
            let values = row.map_err(MySqlError::query(context()))?.unwrap();
            last = Some(
                table
                    .schema
                    .key
                    .iter()
                    .map(|&k| values.get(k).map(|v| v.as_sql(false)).unwrap_or_default())
                    .collect(),
            );
            rows.push(table.row(values));
        }
        Ok((rows, last))
    }
}

/// `(k1, k2, …) > (v1, v2, …)` spelled out as `k1 > v1 OR (k1 = v1 AND k2 > v2) OR …`, which
/// the range optimizer of every MySQL and MariaDB version reads as an index range.
fn after_condition(keys: &[String], literals: &[String]) -> String {
    let mut alternatives = Vec::new();
    for i in 0..keys.len().min(literals.len()) {
        let mut terms: Vec<String> = (0..i)
            .map(|j| format!("{} = {}", keys[j], literals[j]))
            .collect();
        terms.push(format!("{} > {}", keys[i], literals[i]));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    format!("({})", alternatives.join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keys_resume_with_a_range_condition() {
        let keys = ["`a`".to_owned(), "`b`".to_owned()];
        assert_eq!(
            after_condition(&keys, &["1".into(), "'x'".into()]),
            "((`a` > 1) OR (`a` = 1 AND `b` > 'x'))"
        );
    }
}
