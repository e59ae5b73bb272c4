//! What a source hands to the capture pipeline.

use serde::{Deserialize, Serialize};

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::event::ChangeEvent;

/// What a source run is handed by the capture pipeline: where batches go, which checkpoint is
/// durable, and when to stop.
pub struct RunHandles {
    pub out: mpsc::Sender<Batch>,
    pub durable: watch::Receiver<Option<SourceCheckpoint>>,
    pub stop: watch::Receiver<bool>,
}

/// A run of change events in source order, optionally closing at a resumable point.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ChangeEvent>,
    /// Set when the batch ends at a transaction boundary: once every event of this batch and
    /// of all earlier batches is confirmed by Kafka, the source may resume from here.
    pub checkpoint: Option<SourceCheckpoint>,
}

/// A durable resume point of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCheckpoint {
    /// `postgres` or `mysql`.
    pub connector: String,
    /// Connector-specific resume position: the end of the last transaction whose events are
    /// all in Kafka; for Postgres its end LSN, `16/B374D848`, for MySQL/MariaDB its binlog
    /// `file:pos`, `binlog.000007:4711`.
    pub position: String,
    /// Whether the initial snapshot finished (all its rows are in Kafka).
    pub snapshot_done: bool,
    /// The replication slot (Postgres) the position belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// MySQL/MariaDB: the GTID of the last transaction whose events are all in Kafka (the
    /// `position` is its binlog `file:pos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// MySQL: every transaction up to `position` as a GTID set (`uuid:1-42,uuid:1-7`); a
    /// resume asks the server for the transactions not in it (`COM_BINLOG_DUMP_GTID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_set: Option<String>,
    /// When the checkpoint was written, milliseconds since the Unix epoch.
    pub written_at_ms: i64,
    /// Tables (`schema.table`) whose existing rows are all in Kafka: by the initial snapshot
    /// or by a finished backfill. `None` in checkpoints written before Sluice tracked this:
    /// every configured table then counts as complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// Backfills queued or under way (a table added at runtime, or `sluice snapshot`), with
    /// how far each got: a restart resumes them after their last published chunk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backfills: Vec<BackfillState>,
    /// The last backfills given up on (a predicate the table refused when read), with why:
    /// `sluice snapshot --wait` reports them instead of a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned: Vec<AbandonedBackfill>,
}

impl SourceCheckpoint {
    /// Whether every event at `position` is in Kafka by this checkpoint: its transaction ended
    /// at or before the checkpoint's position (a snapshot row, at the snapshot's position, is
    /// covered once a checkpoint reaches that position). A position of another kind of source,
    /// or a checkpoint position that does not parse, covers nothing.
    pub fn covers(&self, position: &crate::Position) -> bool {
        use crate::Position;
        match (position, self.position_with_seq(0)) {
            (
                Position::Postgres { commit_lsn, .. },
                Some(Position::Postgres {
                    commit_lsn: end, ..
                }),
            ) => *commit_lsn <= end,
            (
                Position::MySql { file, pos, .. },
                Some(Position::MySql {
                    file: f, pos: p, ..
                }),
            ) => (*file, *pos) <= (f, p),
            _ => false,
        }
    }

    /// The checkpoint's position (an end LSN, or a binlog `file:pos`) as an event position
    /// with sequence number `seq`; `None` if it does not parse.
    pub fn position_with_seq(&self, seq: u64) -> Option<crate::Position> {
        use crate::event::{binlog_file_seq, parse_lsn};
        match self.connector.as_str() {
            "postgres" => Some(crate::Position::Postgres {
                commit_lsn: parse_lsn(&self.position)?,
                seq,
            }),
            _ => {
                let (file, pos) = self.position.rsplit_once(':')?;
                Some(crate::Position::MySql {
                    file: binlog_file_seq(file)?,
                    pos: pos.parse().ok()?,
                    seq,
                })
            }
        }
    }
}

/// A backfill given up on, as the checkpoint remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbandonedBackfill {
    pub id: String,
    /// `schema.table`.
    pub table: String,
    pub reason: String,
}

impl AbandonedBackfill {
    /// How many a checkpoint keeps (the oldest go first).
    pub const KEPT: usize = 16;
}

/// One incremental backfill's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillState {
    /// Identifies the backfill in logs and markers.
    pub id: String,
    /// `schema.table`.
    pub table: String,
    /// A SQL predicate limiting the rows read (`sluice snapshot --where`); `None` reads all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
    /// The primary key (its columns' text forms) of the last row read; `None` before the
    /// first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Rows published so far.
    #[serde(default)]
    pub rows: u64,
    /// Rows read but not published because a change newer than the read was in the stream.
    #[serde(default)]
    pub superseded: u64,
}

impl BackfillState {
    /// A backfill not started yet: nothing read, nothing published.
    pub fn new(id: String, table: String, predicate: Option<String>) -> Self {
        BackfillState {
            id,
            table,
            predicate,
            after: None,
            rows: 0,
            superseded: 0,
        }
    }
}

/// Whether a batch being gathered is handed on now: it holds `max` events, or its first
/// event came in `max_delay` ago or more (`since`, set to now when unset).
pub fn batch_due(
    len: usize,
    since: &mut Option<Instant>,
    (max, max_delay): (usize, Duration),
) -> bool {
    let since = since.get_or_insert_with(Instant::now);
    len >= max || since.elapsed() >= max_delay
}
