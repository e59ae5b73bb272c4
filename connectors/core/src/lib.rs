//! The contract every Sluice connector speaks.
//!
//! A *source* (Postgres logical replication, MySQL/MariaDB binlog) turns row changes into
//! [`ChangeEvent`]s. The capture side publishes them to Kafka as a Debezium-style JSON envelope
//! ([`envelope`]); the apply side reads that envelope back and writes mapped rows into targets.
//!
//! # Delivery contract
//!
//! * **Topics.** One topic per source table, named `<prefix>.<schema>.<table>`
//!   ([`topic_name`]). The message key is the table's primary-key columns as a JSON object; the
//!   value is the envelope `{before, after, op, source, ts_ms}`. A delete may be followed by a
//!   tombstone (same key, null value) so that compacted topics forget the row. A truncate is
//!   published to every partition of the table's topic, so that it is ordered with respect to
//!   every key.
//! * **Positions.** Every event carries a [`Position`] that is totally ordered within its source:
//!   for Postgres the commit LSN of its transaction plus a sequence number within that
//!   transaction. A consumer that remembers the highest position it applied can drop any event at
//!   or below it: that is how re-publication after a crash is made harmless.
//! * **Acknowledgement.** Capture acknowledges a source position (and records it in its durable
//!   checkpoint) only after Kafka confirmed every event up to and including it. After a crash,
//!   capture resumes from the checkpoint, so Kafka may hold *duplicates* of events published after
//!   the last checkpoint, never *gaps*.
//! * **Values.** [`Value`] is a lossless, documented encoding (see [`value`]): exact decimals as
//!   strings, non-finite floats as strings, timestamps as ISO-8601 with microseconds, bytes as
//!   base64, JSON embedded as JSON. A column that the source did not send (an unchanged TOASTed
//!   value in Postgres) is *absent* from `after`; `null` always means SQL NULL.
//!
//! # Errors
//!
//! Every error a connector raises knows its [`ErrorClass`]: transient errors are retried with
//! capped backoff, definite ones stop the affected pipeline with an explanation.

pub mod apply;
pub mod backfill;
pub mod batch;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod event;
pub mod json;
pub mod secret;
pub mod sink_tx;
pub mod source;
pub mod target;
pub mod tls;
pub mod value;

pub use apply::{
    fold, ApplyBatch, ApplyOutcome, BarrierOutcome, ColumnClass, ColumnDesc, DeadLetter,
    FoldedTable, MappedEvent, PartitionProgress, RecordRef, TableShape, TargetChange,
};
pub use backfill::{key_text, BackfillBook, ReadPace, SnapshotRequest};
pub use batch::{AbandonedBackfill, BackfillState, Batch, RunHandles, SourceCheckpoint};
pub use error::{error_chain, Backoff, Classified, ErrorClass, Problem};
pub use event::{BinlogTxn, ChangeEvent, Op, Position, SourceInfo, TableId, TableSchema};
pub use value::{Row, Value};

/// The Kafka topic that carries the changes of `table`, `<prefix>.<schema>.<table>`.
///
/// Characters Kafka does not accept in topic names (anything but ASCII letters, digits, `.`,
/// `_` and `-`) are replaced by `_`.
pub fn topic_name(prefix: &str, table: &TableId) -> String {
    let mut out = String::with_capacity(prefix.len() + table.schema.len() + table.name.len() + 2);
    for (i, part) in [prefix, &table.schema, &table.name].into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_sanitised() {
        let t = TableId::new("public", "order lines");
        assert_eq!(topic_name("sluice", &t), "sluice.public.order_lines");
        let t = TableId::new("Sales", "Ünits");
        assert_eq!(topic_name("p", &t), "p.Sales._nits");
    }
}
