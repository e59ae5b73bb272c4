//! The initial snapshot: every row of every captured table, read through the replication slot's
//! exported snapshot.
//!
//! # Handover without gap or overlap
//!
//! `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')` returns the slot's *consistent point* and the
//! name of a snapshot that sees exactly the transactions committed before it. We read the tables
//! in one `REPEATABLE READ` transaction that adopts that snapshot (`SET TRANSACTION SNAPSHOT`),
//! and only then let the replication session send `START_REPLICATION` from the consistent point:
//! the stream carries exactly the transactions the snapshot did not see. (The export dies at the
//! replication session's next command, so the order matters.)
//!
//! Snapshot rows are `op = r` events positioned just below the consistent point, so every
//! streamed change sorts after every snapshot row.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use sluice_core::{Batch, ChangeEvent, Op, Position, Row, SourceInfo, Value};
use tokio::sync::mpsc;

use crate::client::{connect, quote_literal, quote_table};
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::table::CapturedTable;
use crate::types::decode_text;

/// Reads every table under `snapshot_name` and sends the rows as `op = r` batches.
/// Returns the number of rows read.
pub async fn read_snapshot(
    conn: &PostgresConnection,
    tables: &[Arc<CapturedTable>],
    snapshot_name: &str,
    consistent_point: u64,
    max_batch: usize,
    out: &mpsc::Sender<Batch>,
) -> Result<u64, PostgresError> {
    let client = connect(conn, "snapshot").await?;
    client
        .simple_query("begin transaction isolation level repeatable read, read only")
        .await
        .map_err(PostgresError::query("starting the snapshot transaction"))?;
    client
        .simple_query(&format!(
            "set transaction snapshot {}",
            quote_literal(snapshot_name)
        ))
        .await
        .map_err(PostgresError::query(
            "adopting the slot's exported snapshot",
        ))?;
    let read_at_us = now_us();
    let mut seq = 0u64;
    let position_lsn = consistent_point.saturating_sub(1);
    for table in tables {
        let cols = table.select_list();
        let sql = format!(
            "copy (select {cols} from {}) to stdout",
            quote_table(&table.schema.id)
        );
        let context = format!("reading the snapshot of {}", table.schema.id);
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(PostgresError::query(context.clone()))?;
        futures_util::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let mut batch = Vec::with_capacity(max_batch);
        let started = std::time::Instant::now();
        let mut rows = 0u64;
        let mut decoded: Vec<Vec<Option<Value>>> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(PostgresError::query(context.clone()))?;
            parser.push(&chunk, |fields| {
                decoded.push(decode_fields(table, fields)?);
                Ok::<(), PostgresError>(())
            })?;
            for values in decoded.drain(..) {
                batch.push(ChangeEvent {
                    op: Op::Read,
                    table: table.schema.clone(),
                    before: None,
                    after: Some(Row { values }),
                    source: SourceInfo {
                        connector: "postgres",
                        position: Position::Postgres {
                            commit_lsn: position_lsn,
                            seq,
                        },
                        tx_id: None,
                        commit_time_us: read_at_us,
                        snapshot: true,
                        binlog: None,
                    },
                });
                seq += 1;
                rows += 1;
                if batch.len() >= max_batch {
                    send(
                        out,
                        std::mem::replace(&mut batch, Vec::with_capacity(max_batch)),
                    )
                    .await?;
                }
            }
        }
        if !batch.is_empty() {
            send(out, batch).await?;
        }
        tracing::info!(
            table = %table.schema.id,
            rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot of table read"
        );
    }
    client
        .simple_query("commit")
        .await
        .map_err(PostgresError::query("ending the snapshot transaction"))?;
    Ok(seq)
}

/// Converts one COPY row of `table` (text fields, `None` = NULL) into values.
pub(crate) fn decode_fields(
    table: &CapturedTable,
    fields: Vec<Option<Cow<'_, str>>>,
) -> Result<Vec<Option<Value>>, PostgresError> {
    // A plain loop into an exact-size vector: collecting through `Result` gave the vector no
    // size hint (it grew twice per row) and its adapters were ~8 % of a backfill's CPU.
    let mut values = Vec::with_capacity(table.kinds.len());
    for (field, kind) in fields.iter().zip(table.kinds.iter()) {
        values.push(Some(match field {
            None => Value::Null,
            Some(text) => decode_text(kind, text).map_err(|e| {
                PostgresError::Setup(format!(
                    "cannot convert a value of {} ({:?}: {})",
                    table.schema.id, e.kind, e.reason
                ))
            })?,
        }));
    }
    if values.len() != table.schema.columns.len() {
        return Err(PostgresError::Setup(format!(
            "{} returned {} columns, expected {}",
            table.schema.id,
            values.len(),
            table.schema.columns.len()
        )));
    }
    Ok(values)
}

async fn send(out: &mpsc::Sender<Batch>, events: Vec<ChangeEvent>) -> Result<(), PostgresError> {
    out.send(Batch {
        events,
        checkpoint: None,
    })
    .await
    .map_err(|_| PostgresError::Closed)
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Splits `COPY … TO STDOUT` text-format output into rows of fields (`None` = NULL), undoing
/// the format's backslash escapes. Rows may span chunks. Fields borrow from the chunk when
/// they need no unescaping (most do), so a row costs one allocation, not one per field.
#[derive(Default)]
pub struct CopyParser {
    /// The start of a row whose end is in a later chunk.
    carry: Vec<u8>,
    /// The last row's field count: the next row's vector is allocated at that size.
    width: usize,
}

impl CopyParser {
    /// Calls `row` with the fields of each row that `chunk` completes, in order.
    pub fn push<E>(
        &mut self,
        chunk: &[u8],
        mut row: impl for<'a> FnMut(Vec<Option<Cow<'a, str>>>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut data = chunk;
        if !self.carry.is_empty() {
            // Only the row that straddles the chunks is copied, not the whole chunk.
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                self.carry.extend_from_slice(data);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&data[..nl]);
            let fields = parse_copy_line(&line, self.width);
            self.width = fields.len();
            row(fields)?;
            line.clear();
            self.carry = line;
            data = &data[nl + 1..];
        }
        let mut start = 0;
        while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
            let fields = parse_copy_line(&data[start..start + nl], self.width);
            self.width = fields.len();
            row(fields)?;
            start += nl + 1;
        }
        self.carry.extend_from_slice(&data[start..]);
        Ok(())
    }
}

fn parse_copy_line(line: &[u8], width: usize) -> Vec<Option<Cow<'_, str>>> {
    let mut fields = Vec::with_capacity(width);
    fields.extend(line.split(|&b| b == b'\t').map(|field| {
        if field == b"\\N" {
            return None;
        }
        if !field.contains(&b'\\') {
            // The server sends the database encoding, UTF-8: validation is all it costs
            // (the lossy path's chunked validator was ~3 % of a backfill's CPU).
            return Some(match std::str::from_utf8(field) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(field),
            });
        }
        let mut out = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let b = field[i];
            if b != b'\\' || i + 1 >= field.len() {
                out.push(b);
                i += 1;
                continue;
            }
            let c = field[i + 1];
            i += 2;
            match c {
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        match field.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                b'x' => {
                    let mut v = 0u32;
                    let mut n = 0;
                    while n < 2 {
                        match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                i += 1;
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(v as u8);
                }
                other => out.push(other),
            }
        }
        Some(Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| {
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        })))
    }));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `chunk` completes, as owned strings.
    fn rows(p: &mut CopyParser, chunk: &[u8]) -> Vec<Vec<Option<String>>> {
        let mut out = Vec::new();
        p.push(chunk, |fields| {
            out.push(fields.into_iter().map(|f| f.map(Cow::into_owned)).collect());
            Ok::<(), ()>(())
        })
        .expect("parse");
        out
    }

    #[test]
    fn copy_rows_split_across_chunks_and_unescape() {
        let mut p = CopyParser::default();
        let mut rows = rows(&mut p, b"1\ta\\tb\\\\c\t\\N\n2\tx");
        assert_eq!(rows.len(), 1);
        assert!(!p.carry.is_empty(), "the second row waits for its end");
        rows.extend(self::rows(&mut p, b"y"));
        rows.extend(self::rows(&mut p, b"\\nz\t\\101\n"));
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("a\tb\\c".into()), None],
                vec![Some("2".into()), Some("xy\nz".into()), Some("A".into())],
            ]
        );
        assert!(self::rows(&mut p, b"").is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut p = CopyParser::default();
        assert_eq!(
            rows(&mut p, b"a\xffb\tok\n"),
            vec![vec![Some("a\u{fffd}b".into()), Some("ok".into())]]
        );
    }

    #[test]
    fn empty_string_is_not_null() {
        let mut p = CopyParser::default();
        assert_eq!(
            rows(&mut p, b"\t\\N\n"),
            vec![vec![Some(String::new()), None]]
        );
    }
}
