//! Incremental backfill of a Postgres source: the existing rows of a table added to a running
//! source, or those `sluice snapshot` asks for, read in key-ordered chunks while the stream
//! goes on. The driver, the tracker and why a chunk row never overwrites a newer change are
//! the same for every source ([`sluice_core::backfill`]); this module supplies Postgres'
//! chunk read (one `COPY (select … order by key limit n)`) and its marker: a transactional
//! logical decoding message (`pg_logical_emit_message`, prefix [`MARKER_PREFIX`], content
//! `SOURCE/RUN/N`) that the stream decodes in commit order like any change.
//!
//! Progress (the last key read) travels in the source checkpoint, so a restart resumes after
//! the last chunk whose rows are in Kafka. Markers of an earlier run, whose chunks are gone
//! with it, are ignored.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use sluice_core::backfill::{chunk_filter, ChunkReader, MarkerId, Released, Tracker};
use sluice_core::{BackfillState, Classified, ErrorClass, Row, TableId, TableSchema};

use crate::client::{connect, quote_ident, quote_literal, quote_table};
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::snapshot::{decode_fields, CopyParser};
use crate::table::CapturedTable;

/// Prefix of the marker messages; the content is `SOURCE/RUN/N`.
pub const MARKER_PREFIX: &str = "sluice.marker";
/// Prefix of `sluice snapshot` requests; the content is a [`sluice_core::SnapshotRequest`] in
/// JSON.
pub const REQUEST_PREFIX: &str = "sluice.snapshot";

/// Hands a logical decoding message the stream decoded to the tracker; returns the rows a
/// marker of this source releases.
pub fn message(tracker: &mut Tracker, prefix: &str, content: &[u8]) -> Option<Released> {
    let content = std::str::from_utf8(content).ok()?;
    match prefix {
        MARKER_PREFIX => {
            let mut parts = content.rsplitn(3, '/');
            let (n, run, source) = (parts.next()?, parts.next()?, parts.next()?);
            if source != tracker.source() {
                return None;
            }
            tracker.marker(&MarkerId {
                run: run.to_owned(),
                n: n.parse().ok()?,
            })
        }
        REQUEST_PREFIX => {
            tracker.request(content);
            None
        }
        _ => None,
    }
}

/// Writes a transactional logical decoding message into the WAL (its own transaction), and
/// waits until that WAL is flushed: a walsender sends only flushed WAL, so under
/// `synchronous_commit = off` a marker would otherwise wait for the WAL writer (up to
/// `wal_writer_delay`, 200 ms by default), and with it every chunk the stream holds for it.
/// Only `off` is raised (to `local`): any other level is kept, so with synchronous standbys a
/// marker waits for them as other commits do, and a transaction committed before it is past
/// its own wait for them (and visible) by the time the next chunk is read. One round trip.
pub async fn emit_message(
    client: &tokio_postgres::Client,
    prefix: &str,
    content: &str,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "begin; \
         select set_config('synchronous_commit', 'local', true) \
           where current_setting('synchronous_commit') = 'off'; \
         select pg_logical_emit_message(true, {}, {}); commit",
        quote_literal(prefix),
        quote_literal(content)
    );
    match client.simple_query(&sql).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // A failed statement leaves the transaction block open and aborted.
            let _ = client.batch_execute("rollback").await;
            Err(e)
        }
    }
}

/// How many rows of `table` match `predicate` (all rows without one).
pub async fn count_matching(
    client: &tokio_postgres::Client,
    table: &TableId,
    predicate: Option<&str>,
) -> Result<i64, tokio_postgres::Error> {
    let sql = match predicate {
        Some(p) => format!("select count(*) from {} where ({p})", quote_table(table)),
        None => format!("select count(*) from {}", quote_table(table)),
    };
    Ok(client.query_one(sql.as_str(), &[]).await?.get(0))
}

/// Postgres' chunk reads and markers for the backfill driver.
pub struct PgChunks {
    pub conn: PostgresConnection,
    pub source: String,
}

impl ChunkReader for PgChunks {
    type Table = CapturedTable;
    type Conn = tokio_postgres::Client;
    type Error = PostgresError;

    fn schema(table: &CapturedTable) -> &Arc<TableSchema> {
        &table.schema
    }

    fn retryable(e: &PostgresError) -> bool {
        e.class() == ErrorClass::Transient && !e.refused_query()
    }

    async fn open(&self) -> Result<tokio_postgres::Client, PostgresError> {
        connect(&self.conn, "backfill").await
    }

    async fn estimate(
        &self,
        client: &mut tokio_postgres::Client,
        table: &CapturedTable,
    ) -> Option<i64> {
        client
            .query_one(
                "select greatest(reltuples, 0)::int8 from pg_class where oid = ($1::text)::regclass",
                &[&quote_table(&table.schema.id)],
            )
            .await
            .ok()
            .map(|row| row.get(0))
    }

    async fn mark(
        &self,
        client: &mut tokio_postgres::Client,
        _table: &TableId,
        marker: &MarkerId,
    ) -> Result<(), PostgresError> {
        let content = format!("{}/{}/{}", self.source, marker.run, marker.n);
        emit_message(client, MARKER_PREFIX, &content)
            .await
            .map_err(PostgresError::query("writing a backfill marker"))
    }

    async fn close(&self, _client: tokio_postgres::Client) {}

    /// The next chunk, in one statement: rows after `bf.after` by primary key, matching the
    /// predicate, and the text form of the last row's key.
    async fn read(
        &self,
        client: &mut tokio_postgres::Client,
        table: &CapturedTable,
        bf: &BackfillState,
        limit: usize,
    ) -> Result<(Vec<Row>, Option<Vec<String>>), PostgresError> {
        let context = format!("reading a backfill chunk of {}", table.schema.id);
        let context = context.as_str();
        let cols = table.select_list();
        let keys = table
            .key_names
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let after = bf.after.as_ref().map(|after| {
            let lits: Vec<String> = after.iter().map(|v| quote_literal(v)).collect();
            format!("({keys}) > ({})", lits.join(", "))
        });
        let filter = chunk_filter(after, bf.predicate.as_deref());
        let sql = format!(
            "copy (select {cols} from {}{filter} order by {keys} limit {}) to stdout",
            quote_table(&table.schema.id),
            limit
        );
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(PostgresError::query(context))?;
        futures_util::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let mut rows = Vec::with_capacity(limit);
        // The last row's key, in text form (its buffers reused from row to row).
        let mut last_key: Vec<String> = vec![String::new(); table.schema.key.len()];
        let mut any = false;
        while let Some(bytes) = stream.next().await {
            let bytes: Bytes = bytes.map_err(PostgresError::query(context))?;
            parser.push(&bytes, |fields| {
                for (slot, &k) in last_key.iter_mut().zip(table.schema.key.iter()) {
                    slot.clear();
                    if let Some(Some(text)) = fields.get(k) {
                        slot.push_str(text);
                    }
                }
                any = true;
                rows.push(Row {
                    values: decode_fields(table, fields)?,
                });
                Ok::<(), PostgresError>(())
            })?;
        }
        Ok((rows, any.then_some(last_key)))
    }
}
