//! Change events and their provenance.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::value::Row;

/// What happened to a row. Wire codes follow Debezium: `r c u d t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row read by the initial snapshot.
    Read,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }

    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Insert,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table`, or `table` in `default_schema`. A part that holds a `.` (or
    /// starts with `"`) is written in double quotes, with `""` for a quote inside it:
    /// `"eu.sales"."orders.2024"`. `None` when the text is not such a name.
    pub fn parse(text: &str, default_schema: &str) -> Option<TableId> {
        let (first, rest) = Self::part(text)?;
        let (schema, name) = match rest {
            None => (default_schema.to_owned(), first),
            Some(rest) => match Self::part(rest)? {
                (name, None) => (first, name),
                (_, Some(_)) => return None,
            },
        };
        if schema.is_empty() || name.is_empty() {
            return None;
        }
        Some(TableId { schema, name })
    }

    /// One part of a name and what follows its `.`, if one does.
    fn part(text: &str) -> Option<(String, Option<&str>)> {
        let Some(mut rest) = text.strip_prefix('"') else {
            return Some(match text.split_once('.') {
                Some((part, rest)) => (part.to_owned(), Some(rest)),
                None => (text.to_owned(), None),
            });
        };
        let mut part = String::new();
        loop {
            let end = rest.find('"')?; // no closing quote
            part.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix('"') {
                part.push('"');
                rest = r;
                continue;
            }
            return match rest {
                "" => Some((part, None)),
                _ => rest.strip_prefix('.').map(|r| (part, Some(r))),
            };
        }
    }
}

/// A part of a table name as [`TableId::parse`] reads it back: quoted when it holds a `.` or
/// starts with `"`.
fn write_part(part: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if part.contains('.') || part.starts_with('"') {
        write!(f, "\"{}\"", part.replace('"', "\"\""))
    } else {
        f.write_str(part)
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_part(&self.schema, f)?;
        f.write_str(".")?;
        write_part(&self.name, f)
    }
}

/// The shape of a captured table as the source currently describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// The source's name in the Sluice config.
    pub source: Arc<str>,
    /// The database the table lives in.
    pub db: Arc<str>,
    pub id: TableId,
    pub columns: Arc<[Arc<str>]>,
    /// Indexes into `columns` of the key (primary key, or the replica-identity index).
    pub key: Vec<usize>,
    /// The Kafka topic the table's events go to.
    pub topic: Arc<str>,
    /// Each column's JSON object key, `"name":`, rendered once (see [`TableSchema::new`]).
    pub json_keys: Arc<[Box<[u8]>]>,
    /// The envelope's `source` fields that name the table,
    /// `,"name":…,"db":…,"schema":…,"table":…`, rendered once: every event carries them.
    pub source_names: Box<[u8]>,
}

impl TableSchema {
    pub fn new(
        source: Arc<str>,
        db: Arc<str>,
        id: TableId,
        columns: Arc<[Arc<str>]>,
        key: Vec<usize>,
        topic: Arc<str>,
    ) -> TableSchema {
        let json_keys = columns
            .iter()
            .map(|c| {
                let mut k = Vec::with_capacity(c.len() + 3);
                crate::json::write_json_str(c, &mut k);
                k.push(b':');
                k.into_boxed_slice()
            })
            .collect();
        let mut source_names = Vec::new();
        for (name, value) in [
            (&b",\"name\":"[..], &*source),
            (b",\"db\":", &*db),
            (b",\"schema\":", &*id.schema),
            (b",\"table\":", &*id.name),
        ] {
            source_names.extend_from_slice(name);
            crate::json::write_json_str(value, &mut source_names);
        }
        TableSchema {
            source,
            db,
            id,
            columns,
            key,
            topic,
            json_keys,
            source_names: source_names.into_boxed_slice(),
        }
    }
}

impl TableSchema {
    /// The columns, each quoted by `quote` (the database's identifier quoting), joined by
    /// `, `: a select list.
    pub fn select_list(&self, quote: impl Fn(&str) -> String) -> String {
        self.columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether two row images of this table have different keys: an update that changes the
    /// key is published as a delete of the old key and a create of the new one, so that each
    /// key's partition sees its own history in order.
    pub fn key_differs(&self, before: &crate::value::Row, after: &crate::value::Row) -> bool {
        self.key
            .iter()
            .any(|&i| before.values.get(i) != after.values.get(i))
    }
}

/// A resumable position, totally ordered within one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Postgres: the commit LSN of the transaction and the change's sequence number in it.
    /// Snapshot rows carry the slot's consistent point and their read order.
    Postgres { commit_lsn: u64, seq: u64 },
    /// MySQL/MariaDB: the binlog file's sequence number (`binlog.000007` → 7), the position in
    /// it where the transaction's events start (just after its GTID or BEGIN), and the change's
    /// sequence number in the transaction. Snapshot rows carry the snapshot's binlog position
    /// (which is before any transaction that follows it) and their read order.
    MySql { file: u32, pos: u64, seq: u64 },
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Position::Postgres { commit_lsn, seq },
                Position::Postgres {
                    commit_lsn: l2,
                    seq: s2,
                },
            ) => (commit_lsn, seq).cmp(&(l2, s2)),
            (
                Position::MySql { file, pos, seq },
                Position::MySql {
                    file: f2,
                    pos: p2,
                    seq: s2,
                },
            ) => (file, pos, seq).cmp(&(f2, p2, s2)),
            // Positions of different connectors never meet in one source; order them anyway.
            (Position::Postgres { .. }, Position::MySql { .. }) => Ordering::Less,
            (Position::MySql { .. }, Position::Postgres { .. }) => Ordering::Greater,
        }
    }
}

impl Position {
    /// Reads the position out of an envelope's `source` object (`None` if it has none).
    pub fn from_envelope_source(source: &serde_json::Value) -> Option<Position> {
        match source.get("connector")?.as_str()? {
            "postgres" => Some(Position::Postgres {
                commit_lsn: parse_lsn(source.get("commit_lsn")?.as_str()?)?,
                seq: source.get("seq")?.as_u64()?,
            }),
            "mysql" => Some(Position::MySql {
                file: binlog_file_seq(source.get("file")?.as_str()?)?,
                pos: source.get("pos")?.as_u64()?,
                seq: source.get("row")?.as_u64()?,
            }),
            _ => None,
        }
    }

    /// The position as a JSON object, the form stored next to apply offsets:
    /// `{"connector":"postgres","commit_lsn":"0/16B3748","seq":3}` or
    /// `{"connector":"mysql","file":"binlog.000007","pos":4711,"row":3}` (only the file's
    /// number is kept, so the stored name is `binlog.<number>` whatever the server's base name).
    pub fn to_json(&self) -> String {
        match self {
            Position::Postgres { commit_lsn, seq } => format!(
                "{{\"connector\":\"postgres\",\"commit_lsn\":\"{}\",\"seq\":{seq}}}",
                format_lsn(*commit_lsn)
            ),
            Position::MySql { file, pos, seq } => format!(
                "{{\"connector\":\"mysql\",\"file\":\"binlog.{file:06}\",\"pos\":{pos},\"row\":{seq}}}"
            ),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Postgres { commit_lsn, seq } => {
                write!(f, "{}:{seq}", format_lsn(*commit_lsn))
            }
            Position::MySql { file, pos, seq } => write!(f, "{file:06}:{pos}:{seq}"),
        }
    }
}

/// The sequence number of a binlog file name, the digits after its last dot
/// (`mysql-bin.000042` → 42).
pub fn binlog_file_seq(file: &str) -> Option<u32> {
    let (_, digits) = file.rsplit_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Formats an LSN the way Postgres does, `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses an LSN in Postgres' `16/B374D848` form.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return None;
    }
    Some((hi << 32) | lo)
}

/// Where and when an event happened (the source's name and database are in its
/// [`TableSchema`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// `postgres` or `mysql`.
    pub connector: &'static str,
    pub position: Position,
    /// The source transaction id, when the source has one.
    pub tx_id: Option<u64>,
    /// Commit time of the transaction (read time for snapshot rows), microseconds since the Unix
    /// epoch.
    pub commit_time_us: i64,
    pub snapshot: bool,
    /// MySQL/MariaDB: the binlog file and the transaction's GTID, shared by the events of one
    /// transaction.
    pub binlog: Option<Arc<BinlogTxn>>,
}

/// Where a MySQL/MariaDB transaction sits in the server's binlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogTxn {
    /// The binlog file name, `binlog.000007`.
    pub file: String,
    /// The transaction's GTID (`0-1-42` on MariaDB, `uuid:42` on MySQL), when it has one.
    pub gtid: Option<String>,
}

/// One row change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub op: Op,
    pub table: Arc<TableSchema>,
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub source: SourceInfo,
}

impl ChangeEvent {
    /// The row image that identifies the row: `after`, or `before` for a delete.
    pub fn key_row(&self) -> Option<&Row> {
        match self.op {
            Op::Delete => self.before.as_ref(),
            _ => self.after.as_ref().or(self.before.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        for lsn in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/100000000"), None);
    }

    #[test]
    fn position_json_round_trips() {
        let p = Position::Postgres {
            commit_lsn: 0x16_B374_D848,
            seq: 7,
        };
        let json: serde_json::Value = serde_json::from_str(&p.to_json()).expect("json");
        assert_eq!(json["commit_lsn"], "16/B374D848");
        assert_eq!(Position::from_envelope_source(&json), Some(p));
        assert_eq!(p.to_string(), "16/B374D848:7");
    }

    #[test]
    fn mysql_positions_round_trip_and_order() {
        let p = Position::MySql {
            file: 7,
            pos: 4711,
            seq: 3,
        };
        let json: serde_json::Value = serde_json::from_str(&p.to_json()).expect("json");
        assert_eq!(json["file"], "binlog.000007");
        assert_eq!(Position::from_envelope_source(&json), Some(p));
        let later_file = Position::MySql {
            file: 8,
            pos: 4,
            seq: 0,
        };
        assert!(p < later_file);
        assert_eq!(binlog_file_seq("mysql-bin.000042"), Some(42));
        assert_eq!(binlog_file_seq("binlog"), None);
        assert_eq!(binlog_file_seq("binlog.x1"), None);
    }

    #[test]
    fn positions_order_by_lsn_then_seq() {
        let a = Position::Postgres {
            commit_lsn: 10,
            seq: 5,
        };
        let b = Position::Postgres {
            commit_lsn: 11,
            seq: 0,
        };
        let c = Position::Postgres {
            commit_lsn: 11,
            seq: 1,
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn table_ids_parse() {
        assert_eq!(
            TableId::parse("orders", "public"),
            Some(TableId::new("public", "orders"))
        );
        assert_eq!(
            TableId::parse("s.t", "public"),
            Some(TableId::new("s", "t"))
        );
        assert_eq!(TableId::parse("a.b.c", "public"), None);
        assert_eq!(TableId::parse(".t", "public"), None);
        // Quoted parts hold dots and quotes; an unquoted part may hold a quote inside.
        let dotted = TableId::new("eu.sales", "orders \"2024\".v2");
        assert_eq!(
            TableId::parse(r#""eu.sales"."orders ""2024"".v2""#, "public"),
            Some(dotted.clone())
        );
        assert_eq!(
            TableId::parse(r#""a.b""#, "public"),
            Some(TableId::new("public", "a.b"))
        );
        assert_eq!(
            TableId::parse(r#"s.Order "Lines""#, "public"),
            Some(TableId::new("s", "Order \"Lines\""))
        );
        for bad in [r#""a.b"#, r#""a"b.c"#, r#""a".b.c"#, r#""".t"#] {
            assert_eq!(TableId::parse(bad, "public"), None, "{bad}");
        }
        // Display writes what parse reads back.
        for id in [dotted, TableId::new("\"q", "t"), TableId::new("s", "t")] {
            assert_eq!(TableId::parse(&id.to_string(), "x"), Some(id));
        }
    }
}
