//! The stream side of a backfill: it notes the keys changes touch while a table is backfilled
//! and, when the stream decodes a chunk's marker, publishes that chunk without those rows.
//!
//! # Why a chunk row never overwrites a newer change
//!
//! The [`Driver`](super::Driver) reads a chunk in one statement, hands it to this tracker and
//! then commits a *marker* into the source's log (a logical decoding message in Postgres, a
//! row of the signal table in MySQL/MariaDB). The stream decodes the marker in commit order
//! like any change, and the chunk's rows are published at the marker's position.
//!
//! - A change the read saw committed before the read began, so before the marker: the stream
//!   decodes it before the marker. (Postgres and InnoDB write a transaction's commit record
//!   before making it visible.)
//! - A change decoded after the marker was not seen by the read and follows the chunk in the
//!   topic: the chunk's row is older and comes first, as it should.
//! - So every change that could make a chunk row stale is decoded before the chunk's marker.
//!   The tracker keeps the keys of *every* change to a table from the moment it knows of the
//!   table's backfill (the session's start for a queued one, the request for
//!   `sluice snapshot`) until the backfill ends, and drops a chunk's rows with those keys.
//!   Those changes are in the stream with the row's whole state (Postgres reads unchanged
//!   TOASTed values back; MySQL runs with `binlog_row_image = FULL`), so a dropped chunk row
//!   is never lost: it would only publish a state the stream already has, or an older one.
//!   This is Netflix DBLog's watermark rule with the window stretched back to the backfill's
//!   start, which also covers Postgres making a commit visible a moment after writing its
//!   record (a change decoded before an earlier marker can still be unseen by a read).
//! - A truncate of the table while it is backfilled drops every later chunk's rows: the rows
//!   the read saw were either truncated or inserted since, and the inserts are in the stream.
//!
//! The cost is memory: the changed keys of a table are held until its backfill ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{key_text, BackfillBook};
use crate::{BackfillState, Row, TableId, TableSchema};

/// A marker's identity: the driver run that wrote it (a new one each session) and its number
/// within the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerId {
    pub run: String,
    pub n: u64,
}

/// One chunk on its way from the driver to the stream session.
pub struct Chunk {
    pub(super) marker: MarkerId,
    pub(super) backfill: String,
    pub(super) table: Arc<TableSchema>,
    pub(super) rows: Vec<Row>,
    /// The backfill's progress once this chunk is published.
    pub(super) after: Option<Vec<String>>,
    /// The last chunk: the backfill is finished (or, with `failed`, abandoned).
    pub(super) done: bool,
    pub(super) failed: Option<String>,
}

/// What a marker released: rows to publish as reads of `table`.
pub struct Released {
    pub table: Arc<TableSchema>,
    pub rows: Vec<Row>,
}

/// What changed in a table since its backfill became known to this session.
#[derive(Default)]
struct Changed {
    keys: HashSet<String>,
    truncated: bool,
}

/// The stream session's side: notes changed keys and publishes chunks at their markers.
pub struct Tracker {
    source: String,
    /// The schema a table name without one is in (`public` for Postgres).
    default_schema: &'static str,
    captured: HashSet<TableId>,
    chunks: mpsc::Receiver<Chunk>,
    requests: mpsc::UnboundedSender<BackfillState>,
    pending: VecDeque<Chunk>,
    changed: HashMap<TableId, Changed>,
    /// Backfills queued, under way, finished and abandoned, as the next checkpoint records them.
    pub book: BackfillBook,
}

impl Tracker {
    pub fn new(
        source: String,
        default_schema: &'static str,
        captured: HashSet<TableId>,
        chunks: mpsc::Receiver<Chunk>,
        requests: mpsc::UnboundedSender<BackfillState>,
        book: BackfillBook,
    ) -> Self {
        let mut t = Tracker {
            source,
            default_schema,
            captured,
            chunks,
            requests,
            pending: VecDeque::new(),
            changed: HashMap::new(),
            book,
        };
        t.follow_book();
        t
    }

    /// Keeps [`Self::changed`] to the captured tables the book has a backfill of.
    fn follow_book(&mut self) {
        let tables: HashSet<TableId> = self
            .book
            .state
            .iter()
            .filter_map(|b| TableId::parse(&b.table, self.default_schema))
            .filter(|id| self.captured.contains(id))
            .collect();
        self.changed.retain(|t, _| tables.contains(t));
        for t in tables {
            self.changed.entry(t).or_default();
        }
    }

    /// The source whose markers this tracker takes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether any table is being backfilled (changes must then be noted).
    pub fn active(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Notes a change of `row` (its key columns at least) in `table`.
    pub fn touched(&mut self, table: &TableSchema, row: &Row) {
        if let Some(c) = self.changed.get_mut(&table.id) {
            c.keys.insert(key_text(table, row));
        }
    }

    /// Notes a truncate of `table`.
    pub fn truncated(&mut self, table: &TableId) {
        if let Some(c) = self.changed.get_mut(table) {
            c.truncated = true;
        }
    }

    /// Takes up a `sluice snapshot` request read from the source's log (JSON, see
    /// [`super::SnapshotRequest`]) and hands the new backfill to the driver.
    pub fn request(&mut self, content: &str) {
        let (captured, schema) = (&self.captured, self.default_schema);
        let captures = |t: &str| TableId::parse(t, schema).is_some_and(|id| captured.contains(&id));
        if let Some(state) = self.book.request(&self.source, content, captures) {
            let _ = self.requests.send(state);
            self.follow_book();
        }
    }

    /// The stream decoded marker `marker` of this source: returns the rows its chunk releases
    /// (`None` for a marker of an earlier run, whose chunk went with it).
    pub fn marker(&mut self, marker: &MarkerId) -> Option<Released> {
        while let Ok(chunk) = self.chunks.try_recv() {
            self.pending.push_back(chunk);
        }
        // Chunks of this run before this marker lost their marker (its commit failed).
        self.pending
            .retain(|c| c.marker.run != marker.run || c.marker.n >= marker.n);
        let at = self.pending.iter().position(|c| c.marker == *marker)?;
        let chunk = self.pending.remove(at)?;
        let read = chunk.rows.len() as u64;
        let rows: Vec<Row> = match self.changed.get(&chunk.table.id) {
            Some(c) if c.truncated => Vec::new(),
            Some(c) if !c.keys.is_empty() => chunk
                .rows
                .into_iter()
                .filter(|r| !c.keys.contains(&key_text(&chunk.table, r)))
                .collect(),
            _ => chunk.rows,
        };
        let table_name = chunk.table.id.to_string();
        self.book.published(
            &self.source,
            &chunk.backfill,
            &table_name,
            read,
            rows.len() as u64,
            chunk.after.clone(),
            chunk.done,
            chunk.failed.clone(),
        );
        self.follow_book();
        Some(Released {
            table: chunk.table,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AbandonedBackfill, Value};

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            Arc::from("app"),
            Arc::from("app"),
            TableId::new("public", "t"),
            vec![Arc::from("id"), Arc::from("v")].into(),
            vec![0],
            Arc::from("sluice.public.t"),
        ))
    }

    fn row(id: i64, v: &str) -> Row {
        Row {
            values: vec![Some(Value::Int(id)), Some(Value::Text(v.into()))],
        }
    }

    fn tracker(backfills: &[&str]) -> (Tracker, mpsc::Sender<Chunk>) {
        let (tx, rx) = mpsc::channel(8);
        let (req_tx, _req_rx) = mpsc::unbounded_channel();
        let book = BackfillBook {
            state: backfills
                .iter()
                .map(|id| BackfillState::new((*id).into(), "public.t".into(), None))
                .collect(),
            ..Default::default()
        };
        let captured = [TableId::new("public", "t")].into_iter().collect();
        (
            Tracker::new("app".into(), "public", captured, rx, req_tx, book),
            tx,
        )
    }

    fn marker(run: &str, n: u64) -> MarkerId {
        MarkerId { run: run.into(), n }
    }

    fn chunk(run: &str, n: u64, rows: Vec<Row>, done: bool) -> Chunk {
        Chunk {
            marker: marker(run, n),
            backfill: "b1".into(),
            table: schema(),
            after: rows.last().map(|r| vec![format!("{:?}", r.values[0])]),
            rows,
            done,
            failed: None,
        }
    }

    fn ids(released: Option<Released>) -> Vec<i64> {
        released
            .expect("released")
            .rows
            .iter()
            .map(|r| match r.values[0] {
                Some(Value::Int(i)) => i,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_row_changed_at_any_time_since_the_backfill_was_known_is_dropped() {
        let (mut t, tx) = tracker(&["b1"]);
        assert!(t.active());
        // Changed before the first chunk was even read, then again between two chunks.
        t.touched(&schema(), &row(2, "new"));
        tx.try_send(chunk("r", 1, vec![row(1, "a"), row(2, "b")], false))
            .ok();
        assert_eq!(ids(t.marker(&marker("r", 1))), vec![1]);
        t.touched(&schema(), &row(4, "new"));
        tx.try_send(chunk("r", 2, vec![row(3, "c"), row(4, "d")], true))
            .ok();
        assert_eq!(ids(t.marker(&marker("r", 2))), vec![3]);
        assert!(t.book.state.is_empty(), "finished");
        assert_eq!(t.book.complete, vec!["public.t".to_owned()]);
        assert!(
            !t.active(),
            "its changed keys are forgotten with the backfill"
        );
        // Another table's changes, or changes after the end, are not noted.
        t.touched(&schema(), &row(5, "x"));
        assert!(t.changed.is_empty());
    }

    #[test]
    fn a_truncate_drops_every_later_chunk_and_foreign_or_old_markers_release_nothing() {
        let (mut t, tx) = tracker(&["b1"]);
        tx.try_send(chunk("r", 1, vec![row(1, "a")], false)).ok();
        assert!(t.marker(&marker("old-run", 1)).is_none());
        t.truncated(&TableId::new("public", "t"));
        assert!(ids(t.marker(&marker("r", 1))).is_empty());
        tx.try_send(chunk("r", 2, vec![row(2, "b")], true)).ok();
        assert!(ids(t.marker(&marker("r", 2))).is_empty());
        let bf_done = t.book.state.is_empty();
        assert!(bf_done);
    }

    #[test]
    fn a_chunk_whose_marker_was_lost_is_dropped_at_the_next() {
        let (mut t, tx) = tracker(&["b1"]);
        tx.try_send(chunk("r", 1, vec![row(1, "a")], false)).ok();
        tx.try_send(chunk("r", 2, vec![row(1, "a"), row(2, "b")], false))
            .ok();
        // Marker 1's commit failed: the driver read chunk 1 again as chunk 2.
        assert_eq!(ids(t.marker(&marker("r", 2))), vec![1, 2]);
        assert!(t.marker(&marker("r", 1)).is_none(), "gone");
        assert_eq!(t.book.state[0].rows, 2);
    }

    #[test]
    fn an_abandoned_backfill_is_remembered_not_completed() {
        let (mut t, tx) = tracker(&["b1"]);
        let mut c = chunk("r", 1, Vec::new(), true);
        c.failed = Some("column \"x\" does not exist".into());
        tx.try_send(c).ok();
        assert!(ids(t.marker(&marker("r", 1))).is_empty());
        assert!(t.book.state.is_empty());
        assert!(t.book.complete.is_empty());
        let AbandonedBackfill { id, reason, .. } = &t.book.abandoned[0];
        assert_eq!(
            (id.as_str(), reason.as_str()),
            ("b1", "column \"x\" does not exist")
        );
    }

    #[test]
    fn a_request_opens_the_table_to_change_notes_and_reaches_the_driver() {
        let (tx, rx) = mpsc::channel(8);
        let (req_tx, mut req_rx) = mpsc::unbounded_channel();
        let captured = [TableId::new("public", "t")].into_iter().collect();
        let mut t = Tracker::new(
            "app".into(),
            "public",
            captured,
            rx,
            req_tx,
            Default::default(),
        );
        drop(tx);
        assert!(!t.active());
        t.request(r#"{"source":"app","id":"resync-1","table":"t"}"#);
        t.request(r#"{"source":"app","id":"resync-2","table":"public.other"}"#);
        t.request(r#"{"source":"other","id":"resync-3","table":"t"}"#);
        assert!(t.active());
        assert_eq!(
            req_rx.try_recv().map(|b| b.id).ok().as_deref(),
            Some("resync-1")
        );
        assert!(
            req_rx.try_recv().is_err(),
            "only the request for a captured table"
        );
    }
}
