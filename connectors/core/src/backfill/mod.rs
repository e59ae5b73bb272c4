//! Incremental backfill, the same for every source: the [`Driver`] reads a table in
//! key-ordered chunks and commits a marker after each; the stream session's [`Tracker`]
//! publishes each chunk when it decodes its marker, without the rows changes touched (see
//! [`tracker`] for why a chunk row never overwrites a newer change). Re-sync requests and the
//! durable record of backfills queued, finished and abandoned travel in the source checkpoint
//! ([`BackfillBook`]). A connector supplies only its chunk read and its marker
//! ([`ChunkReader`]): a WAL message for Postgres, a signal-table row for MySQL/MariaDB.

mod driver;
pub mod tracker;

pub use driver::{channels, ChunkChannel, ChunkRead, ChunkReader, Driver, RequestChannel};
pub use tracker::{Chunk, MarkerId, Released, Tracker};

use serde::{Deserialize, Serialize};

use crate::{AbandonedBackfill, BackfillState, Row, SourceCheckpoint, TableSchema};

/// A re-sync request (`sluice snapshot`), carried through the source's log to its stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub source: String,
    pub id: String,
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
}

impl SnapshotRequest {
    /// A new request with an id made of the time.
    pub fn new(source: &str, table: String, predicate: Option<String>) -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        SnapshotRequest {
            source: source.to_owned(),
            id: format!("resync-{micros:x}"),
            table,
            predicate,
        }
    }
}

/// The `where` clause of a chunk read: rows after the last key read (`after`, a condition in
/// the source's SQL) that match the backfill's predicate; empty when there is neither.
pub fn chunk_filter(after: Option<String>, predicate: Option<&str>) -> String {
    let predicate = predicate.map(|p| format!("({p})"));
    let conditions: Vec<String> = after.into_iter().chain(predicate).collect();
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" where {}", conditions.join(" and "))
    }
}

/// The key of a row as a comparable string (only equality matters).
pub fn key_text(table: &TableSchema, row: &Row) -> String {
    let mut key = String::new();
    for &i in table.key.iter() {
        use std::fmt::Write as _;
        let _ = write!(key, "{:?}\u{1f}", row.values.get(i));
    }
    key
}

/// A backfill's reading pace: rows read, the `backfill_max_rows_per_second` cap, and a
/// progress line every 5 s.
pub struct ReadPace<'a> {
    source: &'a str,
    table: &'a str,
    max_rows_per_second: u64,
    estimate: Option<i64>,
    started: std::time::Instant,
    last_log: std::time::Instant,
    read: u64,
}

impl<'a> ReadPace<'a> {
    /// Starts the clock; `estimate` is the table's row estimate, when the source has one.
    pub fn new(
        source: &'a str,
        table: &'a str,
        max_rows_per_second: u64,
        estimate: Option<i64>,
    ) -> Self {
        let now = std::time::Instant::now();
        ReadPace {
            source,
            table,
            max_rows_per_second,
            estimate,
            started: now,
            last_log: now,
            read: 0,
        }
    }

    /// Counts a chunk's rows.
    pub fn read(&mut self, rows: usize) {
        self.read += rows as u64;
    }

    /// Logs the end of the reading.
    pub fn complete(&self) {
        let labels = [
            ("source", self.source.to_string()),
            ("table", self.table.to_string()),
        ];
        metrics::gauge!("sluice_backfill_rows_read", &labels).set(self.read as f64);
        tracing::info!(
            source = %self.source,
            table = %self.table,
            rows_read = self.read,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "backfill read complete"
        );
    }

    /// Before the next chunk: waits until the rows read so far are due under the cap, and
    /// logs progress every 5 s.
    pub async fn next(&mut self) {
        if self.max_rows_per_second > 0 {
            let due = std::time::Duration::from_secs_f64(
                self.read as f64 / self.max_rows_per_second as f64,
            );
            tokio::time::sleep_until((self.started + due).into()).await;
        }
        let labels = [
            ("source", self.source.to_string()),
            ("table", self.table.to_string()),
        ];
        metrics::gauge!("sluice_backfill_rows_read", &labels).set(self.read as f64);
        if let Some(estimate) = self.estimate {
            metrics::gauge!("sluice_backfill_rows_estimate", &labels).set(estimate as f64);
        }
        if self.last_log.elapsed() >= std::time::Duration::from_secs(5) {
            let rate = self.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                source = %self.source,
                table = %self.table,
                rows_read = self.read,
                rows_estimate = self.estimate,
                rows_per_s = rate as u64,
                "backfill progress"
            );
            self.last_log = std::time::Instant::now();
        }
    }
}

/// Backfills queued or under way, tables complete, backfills abandoned: what the next
/// checkpoint records.
#[derive(Debug, Default, Clone)]
pub struct BackfillBook {
    pub state: Vec<BackfillState>,
    pub complete: Vec<String>,
    pub abandoned: Vec<AbandonedBackfill>,
}

impl BackfillBook {
    /// The book a resumed source starts with: the checkpoint's, less the tables no longer
    /// configured, plus a backfill for each configured table whose rows were never published
    /// (with `stream_only`, as for `snapshot = "never"`, such a table is only streamed).
    pub fn resume(
        source: &str,
        configured: &[String],
        resume: Option<&SourceCheckpoint>,
        stream_only: bool,
    ) -> BackfillBook {
        let mut complete: Vec<String> = match resume.and_then(|c| c.tables.clone()) {
            Some(done) => done
                .into_iter()
                .filter(|t| configured.contains(t))
                .collect(),
            // A checkpoint from before tables were tracked: what is configured now was there.
            None => configured.to_vec(),
        };
        let mut state: Vec<BackfillState> = Vec::new();
        for bf in resume.map(|c| c.backfills.clone()).unwrap_or_default() {
            if configured.contains(&bf.table) {
                state.push(bf);
            } else {
                tracing::warn!(source = %source, table = %bf.table, id = %bf.id, "backfill dropped: its table is no longer configured");
            }
        }
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        for table in configured {
            let queued = state
                .iter()
                .any(|b| &b.table == table && b.predicate.is_none());
            if complete.contains(table) || queued {
                continue;
            }
            if stream_only {
                tracing::info!(source = %source, table = %table, "table added to the source: only its changes from now on are captured (snapshot = \"never\")");
                complete.push(table.clone());
            } else {
                tracing::info!(source = %source, table = %table, "table added to the source: its existing rows will be backfilled");
                state.push(BackfillState::new(
                    format!("add-{table}-{micros:x}"),
                    table.clone(),
                    None,
                ));
            }
        }
        BackfillBook {
            state,
            complete,
            abandoned: resume.map(|c| c.abandoned.clone()).unwrap_or_default(),
        }
    }

    /// Takes up a request read from the source's log (JSON, see [`SnapshotRequest`]): the
    /// backfill to queue, unless it is unreadable, for another source, for a table the source
    /// does not capture (`captures`), or already known.
    pub fn request(
        &mut self,
        source: &str,
        content: &str,
        captures: impl Fn(&str) -> bool,
    ) -> Option<BackfillState> {
        let req: SnapshotRequest = match serde_json::from_str(content) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(source = %source, error = %e, "unreadable snapshot request in the log: ignored");
                return None;
            }
        };
        if req.source != source || self.state.iter().any(|b| b.id == req.id) {
            return None;
        }
        if !captures(&req.table) {
            tracing::warn!(source = %source, table = %req.table, "snapshot request for a table this source does not capture: ignored");
            return None;
        }
        tracing::info!(source = %source, table = %req.table, predicate = req.predicate.as_deref().unwrap_or("(all rows)"), id = %req.id, "snapshot request received");
        let state = BackfillState::new(req.id, req.table, req.predicate);
        self.state.push(state.clone());
        Some(state)
    }

    /// Whether a backfill of `table` is queued or under way.
    pub fn busy(&self, table: &str) -> bool {
        self.state.iter().any(|b| b.table == table)
    }

    /// Records a published chunk of backfill `id` of `source`: `published` of its `read` rows
    /// went out, the rest were superseded; `after` is the progress once it is published. The
    /// last chunk (`done`) finishes the backfill, or abandons it with `failed`'s reason.
    #[allow(clippy::too_many_arguments)]
    pub fn published(
        &mut self,
        source: &str,
        id: &str,
        table: &str,
        read: u64,
        published: u64,
        after: Option<Vec<String>>,
        done: bool,
        failed: Option<String>,
    ) {
        let at = self.state.iter().position(|b| b.id == id);
        if let Some(bf) = at.map(|i| &mut self.state[i]) {
            bf.rows += published;
            bf.superseded += read - published;
            if after.is_some() {
                bf.after = after;
            }
        }
        if !done {
            return;
        }
        let finished = at.map(|i| self.state.remove(i));
        match (failed, finished) {
            (Some(reason), _) => {
                tracing::error!(source = %source, table = %table, id = %id, reason = %reason, "backfill abandoned");
                if self.abandoned.len() >= AbandonedBackfill::KEPT {
                    self.abandoned.remove(0);
                }
                self.abandoned.push(AbandonedBackfill {
                    id: id.to_owned(),
                    table: table.to_owned(),
                    reason,
                });
            }
            (None, Some(bf)) => {
                tracing::info!(
                    source = %source,
                    table = %table,
                    id = %id,
                    rows = bf.rows,
                    superseded = bf.superseded,
                    "backfill finished"
                );
                if bf.predicate.is_none() && !self.complete.iter().any(|t| t == table) {
                    self.complete.push(table.to_owned());
                }
            }
            // A chunk of a backfill no longer recorded (dropped with its table).
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, table: &str, predicate: Option<&str>) -> BackfillState {
        BackfillState::new(id.into(), table.into(), predicate.map(str::to_owned))
    }

    #[test]
    fn chunks_count_rows_and_the_last_completes_the_table() {
        let mut book = BackfillBook {
            state: vec![state("b1", "db.t", None)],
            ..Default::default()
        };
        book.published(
            "app",
            "b1",
            "db.t",
            10,
            8,
            Some(vec!["10".into()]),
            false,
            None,
        );
        assert_eq!((book.state[0].rows, book.state[0].superseded), (8, 2));
        assert_eq!(book.state[0].after, Some(vec!["10".to_owned()]));
        book.published("app", "b1", "db.t", 3, 3, None, true, None);
        assert!(book.state.is_empty(), "finished");
        assert!(book.abandoned.is_empty());
        assert_eq!(book.complete, vec!["db.t".to_owned()]);
    }

    #[test]
    fn a_resync_does_not_complete_a_table_and_a_failure_is_remembered() {
        let mut book = BackfillBook {
            state: vec![
                state("r1", "db.t", Some("id < 5")),
                state("r2", "db.t", None),
            ],
            ..Default::default()
        };
        book.published("app", "r1", "db.t", 4, 4, None, true, None);
        assert_eq!(book.state.len(), 1, "r1 finished");
        assert!(
            book.complete.is_empty(),
            "a predicate re-sync is not the table"
        );
        book.published("app", "r2", "db.t", 0, 0, None, true, Some("gone".into()));
        assert_eq!(book.abandoned.len(), 1);
        assert_eq!(book.abandoned[0].reason, "gone");
        assert!(
            book.complete.is_empty(),
            "an abandoned backfill does not complete its table"
        );
        assert!(!book.busy("db.t"));
    }

    #[test]
    fn a_resumed_source_backfills_added_tables_and_forgets_removed_ones() {
        let cp = SourceCheckpoint {
            connector: "mysql".into(),
            position: "binlog.000001:4".into(),
            snapshot_done: true,
            slot: None,
            gtid: None,
            gtid_set: None,
            written_at_ms: 0,
            tables: Some(vec!["db.a".into(), "db.gone".into()]),
            backfills: vec![state("r", "db.gone", None)],
            abandoned: Vec::new(),
        };
        let configured = ["db.a".to_owned(), "db.new".to_owned()];
        let book = BackfillBook::resume("app", &configured, Some(&cp), false);
        assert_eq!(book.complete, vec!["db.a".to_owned()]);
        assert_eq!(book.state.len(), 1);
        assert_eq!(book.state[0].table, "db.new");
        let book = BackfillBook::resume("app", &configured, Some(&cp), true);
        assert_eq!(book.complete, configured.to_vec(), "streamed only");
        assert!(book.state.is_empty());
    }

    #[test]
    fn requests_for_other_sources_uncaptured_tables_or_known_ids_are_ignored() {
        let mut book = BackfillBook::default();
        let req = |source: &str, id: &str, table: &str| {
            serde_json::to_string(&SnapshotRequest {
                source: source.into(),
                id: id.into(),
                table: table.into(),
                predicate: None,
            })
            .expect("json")
        };
        let captures = |t: &str| t == "db.t";
        assert!(book
            .request("app", &req("other", "x", "db.t"), captures)
            .is_none());
        assert!(book
            .request("app", &req("app", "x", "db.u"), captures)
            .is_none());
        assert!(book.request("app", "not json", captures).is_none());
        assert!(book
            .request("app", &req("app", "x", "db.t"), captures)
            .is_some());
        assert!(book
            .request("app", &req("app", "x", "db.t"), captures)
            .is_none());
        assert!(book.busy("db.t"));
    }
}
