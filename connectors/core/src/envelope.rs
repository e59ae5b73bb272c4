//! The Debezium-style JSON envelope Sluice publishes for each change.
//!
//! ```json
//! {"before": null,
//!  "after": {"id": 1, "name": "Ada"},
//!  "op": "c",
//!  "source": {"connector": "postgres", "name": "app", "db": "appdb", "schema": "public",
//!             "table": "users", "commit_lsn": "0/16B3748", "seq": 0, "tx_id": 731,
//!             "ts_us": 1716811200123456, "ts_ms": 1716811200123, "snapshot": false},
//!  "ts_ms": 1716811200150}
//! ```
//!
//! * `before` is the old row when the source sent one: always for deletes (for Postgres under
//!   the DEFAULT replica identity it holds only the key columns), and for updates under
//!   `REPLICA IDENTITY FULL` or when the key changed.
//! * `after` is the new row for `r`, `c` and `u`. A column missing from it was not sent by the
//!   source (an unchanged TOASTed value): the consumer must keep what it has.
//! * `source.commit_lsn` + `source.seq` is the event's position (see [`crate::Position`]);
//!   for MySQL/MariaDB it is `source.file` + `source.pos` + `source.row`, next to the
//!   transaction's `source.gtid`.
//! * `ts_ms` at the top level is when Sluice handled the event.
//! * `op = "t"` (truncate) has neither `before` nor `after`.

use crate::event::{ChangeEvent, Position};
use crate::json::{write_hex, write_i64, write_json_str, write_u64};

/// Appends the event's message key (its key columns as a JSON object) to `out`.
/// Returns false when the event has no row to take a key from (a truncate).
pub fn write_key(event: &ChangeEvent, out: &mut Vec<u8>) -> bool {
    match event.key_row() {
        Some(row) => {
            row.write_json_subset(&event.table.json_keys, &event.table.key, out);
            true
        }
        None => false,
    }
}

/// Appends the event's envelope to `out`. `now_ms` is the handling time.
pub fn write_envelope(event: &ChangeEvent, now_ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"before\":");
    match &event.before {
        Some(row) => row.write_json(&event.table.json_keys, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"after\":");
    match &event.after {
        Some(row) => row.write_json(&event.table.json_keys, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(event.op.code().as_bytes());
    out.extend_from_slice(b"\",");
    write_source_and_time(&event.table, &event.source, now_ms, out);
}

/// Appends the envelope of the delete of one key: `before` holds the key's columns (the
/// message key as published, `key_json`), as a delete under Postgres' default replica
/// identity does. Capture writes these for rows an abandoned snapshot published that the
/// source no longer has.
pub fn write_key_delete(
    table: &crate::event::TableSchema,
    key_json: &[u8],
    source: &crate::event::SourceInfo,
    now_ms: i64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"before\":");
    out.extend_from_slice(key_json);
    out.extend_from_slice(b",\"after\":null,\"op\":\"d\",");
    write_source_and_time(table, source, now_ms, out);
}

/// Appends the envelope that stands in for an event too large to publish: `before` holds the
/// key (`key_json`), `after` is null, and `too_large` says how large the event was and the
/// limit it broke. A sink makes it a dead letter naming both; the row is re-read with
/// `sluice snapshot --where` once the limit is raised.
pub fn write_too_large(
    event: &ChangeEvent,
    key_json: &[u8],
    bytes: usize,
    limit: u64,
    now_ms: i64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"before\":");
    out.extend_from_slice(key_json);
    out.extend_from_slice(b",\"after\":null,\"op\":\"");
    out.extend_from_slice(event.op.code().as_bytes());
    out.extend_from_slice(b"\",\"too_large\":{\"bytes\":");
    write_u64(bytes as u64, out);
    out.extend_from_slice(b",\"max_message_bytes\":");
    write_u64(limit, out);
    out.extend_from_slice(b"},");
    write_source_and_time(&event.table, &event.source, now_ms, out);
}

/// `"source":{…},"ts_ms":…}`: the end of every envelope.
fn write_source_and_time(
    table: &crate::event::TableSchema,
    s: &crate::event::SourceInfo,
    now_ms: i64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"\"source\":{\"connector\":");
    write_json_str(s.connector, out);
    out.extend_from_slice(&table.source_names);
    match s.position {
        Position::Postgres { commit_lsn, seq } => {
            out.extend_from_slice(b",\"commit_lsn\":\"");
            write_hex(commit_lsn >> 32, out);
            out.push(b'/');
            write_hex(commit_lsn & 0xffff_ffff, out);
            out.extend_from_slice(b"\",\"seq\":");
            write_u64(seq, out);
        }
        Position::MySql { file, pos, seq } => {
            out.extend_from_slice(b",\"file\":");
            match &s.binlog {
                Some(txn) => write_json_str(&txn.file, out),
                None => write_json_str(&format!("binlog.{file:06}"), out),
            }
            out.extend_from_slice(b",\"pos\":");
            write_u64(pos, out);
            out.extend_from_slice(b",\"row\":");
            write_u64(seq, out);
            out.extend_from_slice(b",\"gtid\":");
            match s.binlog.as_ref().and_then(|t| t.gtid.as_deref()) {
                Some(g) => write_json_str(g, out),
                None => out.extend_from_slice(b"null"),
            }
        }
    }
    out.extend_from_slice(b",\"tx_id\":");
    match s.tx_id {
        Some(x) => write_u64(x, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts_us\":");
    write_i64(s.commit_time_us, out);
    out.extend_from_slice(b",\"ts_ms\":");
    write_i64(s.commit_time_us.div_euclid(1000), out);
    out.extend_from_slice(if s.snapshot {
        b",\"snapshot\":true},\"ts_ms\":"
    } else {
        b",\"snapshot\":false},\"ts_ms\":"
    });
    write_i64(now_ms, out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Op, SourceInfo, TableId, TableSchema};
    use crate::value::{Row, Value};

    fn event(op: Op) -> ChangeEvent {
        let columns: Arc<[Arc<str>]> = vec![Arc::from("id"), Arc::from("doc")].into();
        let table = Arc::new(TableSchema::new(
            Arc::from("app"),
            Arc::from("db"),
            TableId::new("public", "t"),
            columns,
            vec![0],
            Arc::from("p.public.t"),
        ));
        let row = Row {
            values: vec![Some(Value::Int(7)), None],
        };
        ChangeEvent {
            op,
            table,
            before: (op == Op::Delete).then(|| row.clone()),
            after: (op != Op::Delete).then_some(row),
            source: SourceInfo {
                connector: "postgres",
                position: Position::Postgres {
                    commit_lsn: 0x1_0000_0010,
                    seq: 2,
                },
                tx_id: Some(9),
                commit_time_us: 1_500_999,
                snapshot: false,
                binlog: None,
            },
        }
    }

    #[test]
    fn envelope_is_valid_json_with_position() {
        let mut out = Vec::new();
        write_envelope(&event(Op::Update), 42, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"], serde_json::Value::Null);
        assert_eq!(v["after"], serde_json::json!({"id": 7}));
        assert_eq!(v["source"]["commit_lsn"], "1/10");
        assert_eq!(v["source"]["seq"], 2);
        assert_eq!(v["source"]["ts_ms"], 1500);
        assert_eq!(v["source"]["table"], "t");
        assert_eq!(v["source"]["schema"], "public");
        assert_eq!(v["source"]["db"], "db");
        assert_eq!(v["source"]["name"], "app");
        assert_eq!(v["source"]["connector"], "postgres");
        assert_eq!(v["ts_ms"], 42);
    }

    #[test]
    fn integers_and_lsns_match_their_display_forms() {
        for v in [
            0i64,
            9,
            10,
            99,
            100,
            101,
            1000,
            -1,
            -10,
            i64::MIN,
            i64::MAX,
            1_716_811_200_123_456,
        ] {
            let mut out = Vec::new();
            write_i64(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap_or_default(), v.to_string());
        }
        for lsn in [0u64, 0x10, 0x16_B374_D848, u64::MAX] {
            let mut out = Vec::new();
            write_hex(lsn >> 32, &mut out);
            out.push(b'/');
            write_hex(lsn & 0xffff_ffff, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap_or_default(),
                crate::event::format_lsn(lsn)
            );
        }
    }

    #[test]
    fn delete_key_comes_from_before() {
        let mut out = Vec::new();
        assert!(write_key(&event(Op::Delete), &mut out));
        assert_eq!(out, br#"{"id":7}"#);
    }
}
