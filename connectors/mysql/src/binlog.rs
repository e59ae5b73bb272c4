//! Binlog decoding on top of mysql_common: table maps into table shapes, row images into
//! [`Row`]s, and the MariaDB events mysql_common does not know.
//!
//! Rows are decoded by our own loop over the row image, calling mysql_common's per-value
//! parser: its `rows()` iterator builds a column description per value and cost 4–5x more CPU.
//! The loop also repairs what the value parser gets wrong for us: negative MEDIUMINT (no sign
//! extension), BINARY(n) (trailing zero bytes dropped in the binlog), YEAR 0000 (read as 1900),
//! ENUM and SET (indexes and bitmasks, turned into their labels from the table map).

use std::collections::HashMap;
use std::io;

use mysql_common::binlog::consts::EventType;
use mysql_common::binlog::events::{Event, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::value::Value as MyValue;
use sluice_core::{Row, Value};

use crate::types::{set_labels, utc_timestamp, Charset, Kind};

/// MariaDB event types (mysql_common knows MySQL's only). Its others (annotate rows 0xa0,
/// binlog checkpoint 0xa1, GTID list 0xa3) carry nothing capture needs.
pub const MARIADB_GTID: u8 = 0xa2;
/// 0xa4 is START_ENCRYPTION; 0xa5–0xab are compressed query and rows events.
pub const MARIADB_COMPRESSED_FIRST: u8 = 0xa5;
pub const MARIADB_COMPRESSED_LAST: u8 = 0xab;

/// A MySQL GTID set: per server UUID, the transaction numbers (gno) executed, as sorted,
/// disjoint, inclusive ranges. Its text is MySQL's: `uuid:1-5:7,uuid:1-3`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet(std::collections::BTreeMap<String, Vec<(u64, u64)>>);

impl GtidSet {
    /// Reads MySQL's text form (`@@gtid_executed`, which may hold newlines after commas).
    /// `None` for anything else, a MariaDB GTID position included; `Some` of an empty set for
    /// an empty text (a server that never wrote a GTID).
    pub fn parse(text: &str) -> Option<GtidSet> {
        let mut set = GtidSet::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut pieces = part.split(':');
            let uuid = pieces.next()?.to_ascii_lowercase();
            let shaped = uuid.len() == 36
                && uuid.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !shaped {
                return None;
            }
            let mut ranges = 0;
            for range in pieces {
                let (first, last) = match range.split_once('-') {
                    Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                    None => {
                        let n: u64 = range.parse().ok()?;
                        (n, n)
                    }
                };
                if first == 0 || last < first {
                    return None;
                }
                set.insert(&uuid, first, last);
                ranges += 1;
            }
            if ranges == 0 {
                return None;
            }
        }
        Some(set)
    }

    /// Whether the set holds no transaction (a server that never wrote a GTID).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds transaction `gno` of server `uuid`.
    pub fn add(&mut self, uuid: &str, gno: u64) {
        if let Some(last) = self.0.get_mut(uuid).and_then(|r| r.last_mut()) {
            // The common case: the next transaction of the same server.
            if last.1 + 1 == gno {
                last.1 = gno;
                return;
            }
        }
        self.insert(&uuid.to_ascii_lowercase(), gno, gno);
    }

    /// Adds the GTID `uuid:gno` as a transaction's GTID event names it; false if it is not one.
    pub fn add_gtid(&mut self, gtid: &str) -> bool {
        match gtid
            .rsplit_once(':')
            .and_then(|(u, n)| Some((u, n.parse().ok()?)))
        {
            Some((uuid, gno)) if gno > 0 => {
                self.add(uuid, gno);
                true
            }
            _ => false,
        }
    }

    fn insert(&mut self, uuid: &str, first: u64, last: u64) {
        let ranges = self.0.entry(uuid.to_owned()).or_default();
        ranges.push((first, last));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(a, b) in ranges.iter() {
            match merged.last_mut() {
                Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *ranges = merged;
    }

    /// The set as `COM_BINLOG_DUMP_GTID` takes it.
    pub fn sids(&self) -> Vec<mysql_async::Sid<'static>> {
        self.0
            .iter()
            .filter_map(|(uuid, ranges)| {
                let text = format!("{uuid}:{}", Self::ranges_text(ranges));
                text.parse().ok()
            })
            .collect()
    }

    fn ranges_text(ranges: &[(u64, u64)]) -> String {
        ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Display for GtidSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(uuid, ranges)| format!("{uuid}:{}", Self::ranges_text(ranges)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A MariaDB GTID event: the start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    /// FL_STANDALONE: a statement (DDL) that is a transaction by itself, no XID follows.
    pub standalone: bool,
}

impl MariaGtid {
    pub fn parse(data: &[u8], server: u32) -> Option<MariaGtid> {
        let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
        let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
        let flags = *data.get(12)?;
        Some(MariaGtid {
            domain,
            server,
            seq,
            standalone: flags & 1 != 0,
        })
    }
}

impl std::fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// One column as the table map describes it.
#[derive(Debug, Clone)]
pub struct BinColumn {
    pub name: String,
    ty: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
    pub kind: Kind,
}

/// A table map turned into what the row loop needs.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub db: String,
    pub table: String,
    pub columns: Vec<BinColumn>,
    /// Primary-key column indexes, when the metadata carries them.
    pub key: Vec<usize>,
}

impl TableMap {
    /// Reads the table map. `json_columns` names the columns MariaDB declares JSON (they are
    /// LONGTEXT in the binlog).
    ///
    /// mysql_common's reader of the optional metadata panics on some malformed events (a
    /// count of values it reserves room for before reading them): that is caught here and
    /// becomes an error like any other unreadable table map.
    ///
    /// `ev` is the event itself: the counts of its SET and ENUM value lists are checked
    /// against its bytes first, as mysql_common reserves room for a count before reading the values
    /// (a corrupt count would make it allocate without bound, which no guard can catch).
    pub fn from_event(
        tme: &TableMapEvent<'_>,
        ev: &Event,
        json_columns: &[String],
    ) -> Result<TableMap, String> {
        // A server of the old format (a table-map post-header of 6 bytes) writes 4-byte ids.
        let old_ids = ev
            .fde()
            .get_event_type_header_length(EventType::TABLE_MAP_EVENT)
            == 6;
        check_value_lists(ev.data(), if old_ids { 4 } else { 6 })?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::read(tme, json_columns)
        }))
        .unwrap_or_else(|_| Err("unreadable table-map metadata: its reader failed".into()))
    }

    fn read(tme: &TableMapEvent<'_>, json_columns: &[String]) -> Result<TableMap, String> {
        let n = tme.columns_count() as usize;
        let mut names: Vec<String> = Vec::new();
        let mut signedness: Vec<bool> = Vec::new();
        let mut default_charset: Option<u16> = None;
        let mut non_default: HashMap<u64, u16> = HashMap::new();
        let mut column_charsets: Vec<u16> = Vec::new();
        let mut enum_default: Option<u16> = None;
        let mut enum_non_default: HashMap<u64, u16> = HashMap::new();
        let mut enum_charsets: Vec<u16> = Vec::new();
        let mut enums: Vec<Vec<String>> = Vec::new();
        let mut sets: Vec<Vec<String>> = Vec::new();
        let mut key: Vec<usize> = Vec::new();
        let bad = |e: io::Error| format!("unreadable table-map metadata: {e}");
        for field in tme.iter_optional_meta() {
            match field.map_err(bad)? {
                OptionalMetadataField::Signedness(bits) => {
                    signedness = bits.iter().map(|b| *b).collect();
                }
                OptionalMetadataField::DefaultCharset(d) => {
                    default_charset = Some(d.default_charset());
                    for c in d.iter_non_default() {
                        let c = c.map_err(bad)?;
                        non_default.insert(c.column_index(), c.charset());
                    }
                }
                OptionalMetadataField::ColumnCharset(c) => {
                    for x in c.iter_charsets() {
                        column_charsets.push(x.map_err(bad)?);
                    }
                }
                OptionalMetadataField::EnumAndSetDefaultCharset(d) => {
                    enum_default = Some(d.default_charset());
                    for c in d.iter_non_default() {
                        let c = c.map_err(bad)?;
                        enum_non_default.insert(c.column_index(), c.charset());
                    }
                }
                OptionalMetadataField::EnumAndSetColumnCharset(c) => {
                    for x in c.iter_charsets() {
                        enum_charsets.push(x.map_err(bad)?);
                    }
                }
                OptionalMetadataField::ColumnName(c) => {
                    for name in c.iter_names() {
                        names.push(name.map_err(bad)?.name().into_owned());
                    }
                }
                OptionalMetadataField::EnumStrValue(v) => {
                    for values in v.iter_values() {
                        let values = values.map_err(bad)?;
                        enums.push(values.values().iter().map(|s| s.value().into()).collect());
                    }
                }
                OptionalMetadataField::SetStrValue(v) => {
                    for members in v.iter_values() {
                        let members = members.map_err(bad)?;
                        let names = members.values().iter().map(|s| s.value().into());
                        sets.push(names.collect());
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(k) => {
                    for i in k.iter_indexes() {
                        key.push(i.map_err(bad)? as usize);
                    }
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(k) => {
                    for i in k.iter_keys() {
                        key.push(i.map_err(bad)?.column_index() as usize);
                    }
                }
                _ => {}
            }
        }
        if names.len() != n {
            return Err(format!(
                "the table map of {}.{} carries no column names: set binlog_row_metadata = FULL on the server",
                tme.database_name(),
                tme.table_name()
            ));
        }
        let (mut numeric_i, mut char_i, mut enum_set_i, mut enum_i, mut set_i) = (0, 0, 0, 0, 0);
        let mut columns = Vec::with_capacity(n);
        for (i, name) in names.into_iter().enumerate() {
            let ty = tme
                .get_column_type(i)
                .map_err(|e| format!("column {name}: {e}"))?
                .ok_or_else(|| format!("column {name}: no type in the table map"))?;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
            if meta.len() < metadata_bytes(ty) {
                return Err(format!(
                    "column {name}: its table-map metadata is too short for its type ({} of {} bytes)",
                    meta.len(),
                    metadata_bytes(ty)
                ));
            }
            let unsigned = if ty.is_numeric_type() {
                numeric_i += 1;
                signedness.get(numeric_i - 1).copied().unwrap_or(false)
            } else {
                false
            };
            let charset = if ty.is_character_type() {
                char_i += 1;
                let c = char_i - 1;
                column_charsets
                    .get(c)
                    .copied()
                    .or_else(|| non_default.get(&(c as u64)).copied())
                    .or(default_charset)
            } else if ty.is_enum_or_set_type() {
                enum_set_i += 1;
                let c = enum_set_i - 1;
                enum_charsets
                    .get(c)
                    .copied()
                    .or_else(|| enum_non_default.get(&(c as u64)).copied())
                    .or(enum_default)
            } else {
                None
            };
            let charset = charset.map(Charset::of_collation).unwrap_or(Charset::Utf8);
            use ColumnType::*;
            let kind = match ty {
                MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG => {
                    Kind::Int
                }
                MYSQL_TYPE_INT24 => Kind::MediumInt { unsigned },
                MYSQL_TYPE_FLOAT => Kind::Float,
                MYSQL_TYPE_DOUBLE => Kind::Double,
                MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => Kind::Decimal,
                MYSQL_TYPE_YEAR => Kind::Year,
                MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Kind::Date,
                MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::DateTime,
                MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp,
                MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Kind::Time,
                MYSQL_TYPE_BIT => Kind::Bit {
                    bits: meta.get(1).copied().unwrap_or(0) as u32 * 8
                        + meta.first().copied().unwrap_or(0) as u32,
                },
                MYSQL_TYPE_ENUM => {
                    enum_i += 1;
                    Kind::Enum(enums.get(enum_i - 1).cloned().unwrap_or_default().into())
                }
                MYSQL_TYPE_SET => {
                    set_i += 1;
                    Kind::Set(sets.get(set_i - 1).cloned().unwrap_or_default().into())
                }
                MYSQL_TYPE_JSON => Kind::Json,
                MYSQL_TYPE_STRING if charset == Charset::Binary => Kind::FixedBinary {
                    len: string_length(&meta),
                },
                MYSQL_TYPE_STRING
                | MYSQL_TYPE_VARCHAR
                | MYSQL_TYPE_VAR_STRING
                | MYSQL_TYPE_BLOB
                | MYSQL_TYPE_TINY_BLOB
                | MYSQL_TYPE_MEDIUM_BLOB
                | MYSQL_TYPE_LONG_BLOB => {
                    if charset == Charset::Binary {
                        Kind::Bytes
                    } else if json_columns.contains(&name) {
                        Kind::Json
                    } else {
                        Kind::Text(charset)
                    }
                }
                _ => Kind::Bytes,
            };
            columns.push(BinColumn {
                name,
                ty,
                meta,
                unsigned,
                kind,
            });
        }
        Ok(TableMap {
            db: tme.database_name().into_owned(),
            table: tme.table_name().into_owned(),
            columns,
            key,
        })
    }

    /// Decodes one row image: `present` says which columns the image holds (all of them with
    /// `binlog_row_image = FULL`); the others are absent from the row.
    pub fn read_image<'a>(&'a self, buf: &mut ParseBuf<'a>, present: &[bool]) -> io::Result<Row> {
        let count = present.iter().filter(|p| **p).count();
        let nulls: &[u8] = buf.parse(count.div_ceil(8))?;
        let mut values = Vec::with_capacity(self.columns.len());
        let mut k = 0;
        for (i, col) in self.columns.iter().enumerate() {
            if !present.get(i).copied().unwrap_or(false) {
                values.push(None);
                continue;
            }
            let null = nulls[k / 8] & (1 << (k % 8)) != 0;
            k += 1;
            values.push(Some(if null { Value::Null } else { col.decode(buf)? }));
        }
        Ok(Row { values })
    }
}

/// Which row images each row of a rows event holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// An insert: the new row.
    After,
    /// A delete: the old row.
    Before,
    /// An update: the old row, then the new.
    Both,
}

impl Images {
    pub fn of(rows: &RowsEventData<'_>) -> Images {
        match rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Images::After,
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => Images::Both,
            _ => Images::Before,
        }
    }
}

/// The rows of one rows event, decoded one at a time as `(before, after)`. After an error it
/// ends: the rest of the event cannot be located.
pub struct RowImages<'a> {
    map: &'a TableMap,
    buf: ParseBuf<'a>,
    images: Images,
    before: Vec<bool>,
    after: Vec<bool>,
}

impl<'a> RowImages<'a> {
    pub fn new(map: &'a TableMap, rows: &'a RowsEventData<'a>) -> RowImages<'a> {
        RowImages {
            map,
            buf: ParseBuf(rows.rows_data()),
            images: Images::of(rows),
            before: rows
                .columns_before_image()
                .map(|b| b.iter().map(|x| *x).collect())
                .unwrap_or_default(),
            after: rows
                .columns_after_image()
                .map(|b| b.iter().map(|x| *x).collect())
                .unwrap_or_default(),
        }
    }

    pub fn images(&self) -> Images {
        self.images
    }

    fn next_row(&mut self) -> io::Result<(Option<Row>, Option<Row>)> {
        let map = self.map;
        Ok(match self.images {
            Images::After => (None, Some(map.read_image(&mut self.buf, &self.after)?)),
            Images::Before => (Some(map.read_image(&mut self.buf, &self.before)?), None),
            Images::Both => {
                let before = map.read_image(&mut self.buf, &self.before)?;
                let after = map.read_image(&mut self.buf, &self.after)?;
                (Some(before), Some(after))
            }
        })
    }
}

impl Iterator for RowImages<'_> {
    type Item = io::Result<(Option<Row>, Option<Row>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let before = self.buf.len();
        let mut row = self.next_row();
        if row.is_ok() && self.buf.len() == before {
            // An image with no column in it takes no bytes: the same bytes would be read as
            // rows forever.
            row = Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a rows event whose images hold no column",
            ));
        }
        if row.is_err() {
            self.buf = ParseBuf(&[]);
        }
        Some(row)
    }
}

impl BinColumn {
    fn decode<'a>(&'a self, buf: &mut ParseBuf<'a>) -> io::Result<Value> {
        if self.ty == ColumnType::MYSQL_TYPE_YEAR {
            let raw: &[u8] = buf.parse(1)?;
            return Ok(Value::Int(if raw[0] == 0 {
                0
            } else {
                1900 + raw[0] as i64
            }));
        }
        if self.ty == ColumnType::MYSQL_TYPE_NEWDECIMAL {
            check_decimal(&self.meta, buf.0).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("column {}: {e}", self.name),
                )
            })?;
        }
        let parsed: BinlogValue<'_> = buf.parse((self.ty, &self.meta[..], self.unsigned, false))?;
        Ok(match parsed {
            BinlogValue::Value(v) => match (&self.kind, v) {
                (_, MyValue::NULL) => Value::Null,
                (Kind::Enum(labels), MyValue::Int(i)) => Value::Text(
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| labels.get(i))
                        .cloned()
                        .unwrap_or_default(),
                ),
                (Kind::Set(labels), MyValue::Bytes(mask)) => Value::Text(set_labels(&mask, labels)),
                (Kind::Timestamp, MyValue::Bytes(b)) => timestamp_from_epoch_text(&b),
                (Kind::Timestamp, MyValue::Int(secs)) => {
                    if secs == 0 {
                        Value::Null
                    } else {
                        Value::Text(utc_timestamp(secs, 0))
                    }
                }
                (kind, v) => kind.convert(v),
            },
            BinlogValue::Jsonb(doc) => match serde_json::Value::try_from(doc) {
                Ok(json) => Value::Json(json.to_string()),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("column {}: undecodable binary JSON: {e}", self.name),
                    ))
                }
            },
            BinlogValue::JsonDiff(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "partial JSON updates cannot be captured: set binlog_row_value_options = '' on the server",
                ))
            }
        })
    }
}

/// How many metadata bytes a column of `ty` has in a table map: the row-value reader
/// (mysql_common's) indexes them without checking.
fn metadata_bytes(ty: ColumnType) -> usize {
    use ColumnType::*;
    match ty {
        MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_VECTOR => 1,
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_TYPED_ARRAY => 2,
        _ => 0,
    }
}

/// A length-encoded integer from the front of `b`, read as mysql_common reads it (`0xfb`
/// and `0xff`, NULL and error in the protocol, are 0).
fn lenenc(b: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = b.split_first()?;
    let width = match first {
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        0xfb | 0xff => {
            *b = rest;
            return Some(0);
        }
        n => {
            *b = rest;
            return Some(u64::from(n));
        }
    };
    let bytes = rest.get(..width)?;
    *b = &rest[width..];
    Some(bytes.iter().rev().fold(0, |v, x| v << 8 | u64::from(*x)))
}

/// `n` bytes from the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (b.get(..n)?, b.get(n..)?);
    *b = rest;
    Some(head)
}

/// Walks a table map's body (`raw`) to its optional metadata and checks that each SET and
/// ENUM value list claims no more values than its bytes can hold. Only that is refused: a
/// body this walk cannot follow is left to mysql_common's reader (`Ok(None)`); otherwise
/// `Ok(Some(lists checked))`.
fn check_value_lists(raw: &[u8], id_bytes: usize) -> Result<Option<usize>, String> {
    const SET_STR_VALUE: u8 = 5;
    const ENUM_STR_VALUE: u8 = 6;
    let optional = (|| {
        let mut b = raw;
        take(&mut b, id_bytes + 2)?; // table id, flags
        let db = *take(&mut b, 1)?.first()? as usize;
        take(&mut b, db + 1)?;
        let table = *take(&mut b, 1)?.first()? as usize;
        take(&mut b, table + 1)?;
        let columns = usize::try_from(lenenc(&mut b)?).ok()?;
        take(&mut b, columns)?;
        let meta = usize::try_from(lenenc(&mut b)?).ok()?;
        take(&mut b, meta)?;
        take(&mut b, columns.div_ceil(8))?;
        Some(b)
    })();
    let Some(mut b) = optional else {
        return Ok(None);
    };
    let mut lists = 0;
    while let Some(&ty) = b.first() {
        b = &b[1..];
        let Some(value) = lenenc(&mut b)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| take(&mut b, n))
        else {
            return Ok(None);
        };
        if ty != SET_STR_VALUE && ty != ENUM_STR_VALUE {
            continue;
        }
        let mut v = value;
        while !v.is_empty() {
            let Some(count) = lenenc(&mut v) else {
                return Ok(None);
            };
            // Each value takes at least its length byte.
            if count > v.len() as u64 {
                return Err(format!(
                    "unreadable table-map metadata: a list of {count} SET or ENUM values in {} bytes",
                    v.len()
                ));
            }
            lists += 1;
            for _ in 0..count {
                let Some(len) = lenenc(&mut v).and_then(|n| usize::try_from(n).ok()) else {
                    return Ok(None);
                };
                if take(&mut v, len).is_none() {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(lists))
}

/// Checks that `bytes` start with a DECIMAL(precision, scale) in the binlog's binary form
/// (`meta` = [precision, scale]): groups of nine digits in four bytes, shorter groups at both
/// ends, the sign in the top bit, negative numbers with every bit inverted. mysql_common's
/// reader trusts them: bytes that are no decimal overflow its arithmetic into a wrong number.
fn check_decimal(meta: &[u8], bytes: &[u8]) -> Result<(), String> {
    const BYTES_FOR_DIGITS: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let (&precision, &scale) = match meta {
        [p, s, ..] => (p, s),
        _ => return Err("DECIMAL without its precision and scale".into()),
    };
    if precision == 0 || precision > 65 || scale > 30 || scale > precision {
        return Err(format!(
            "DECIMAL({precision},{scale}) is not a decimal MySQL has"
        ));
    }
    let (intg, frac) = (usize::from(precision - scale), usize::from(scale));
    // The digits of each group, in order (at most 1 + 3 + 3 + 1 for 65 digits).
    let groups = std::iter::once(intg % 9)
        .chain(std::iter::repeat_n(9, intg / 9 + frac / 9))
        .chain(std::iter::once(frac % 9))
        .filter(|d| *d > 0);
    let size: usize = groups.clone().map(|d| BYTES_FOR_DIGITS[d]).sum();
    let Some(raw) = bytes.get(..size) else {
        return Err("a DECIMAL value cut short".into());
    };
    let mask = if raw.first().is_some_and(|b| b & 0x80 != 0) {
        0
    } else {
        0xff
    };
    let mut at = 0;
    for digits in groups {
        let n = BYTES_FOR_DIGITS[digits];
        let mut value: u64 = 0;
        for (i, b) in raw[at..at + n].iter().enumerate() {
            let b = if at + i == 0 { b ^ 0x80 } else { *b };
            value = value << 8 | u64::from(b ^ mask);
        }
        if value >= 10u64.pow(digits as u32) {
            return Err(format!(
                "DECIMAL({precision},{scale}) bytes that are no decimal"
            ));
        }
        at += n;
    }
    Ok(())
}

/// mysql_common renders TIMESTAMP2 as `seconds[.micros]` since the epoch.
fn timestamp_from_epoch_text(text: &[u8]) -> Value {
    let text = String::from_utf8_lossy(text);
    let (secs, micros) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (&*text, "0"),
    };
    let secs: i64 = secs.parse().unwrap_or(0);
    let micros: u32 = micros.parse().unwrap_or(0);
    if secs == 0 && micros == 0 {
        return Value::Null; // the zero timestamp
    }
    Value::Text(utc_timestamp(secs, micros))
}

/// The declared byte length of a CHAR/BINARY column from its table-map metadata.
fn string_length(meta: &[u8]) -> usize {
    match meta {
        [b0, b1, ..] => {
            let (b0, b1) = (*b0 as usize, *b1 as usize);
            if (b0 & 0x30) != 0x30 {
                b1 | (((b0 & 0x30) ^ 0x30) << 4)
            } else {
                b1
            }
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_gtid_parses() {
        let mut data = Vec::new();
        data.extend_from_slice(&42u64.to_le_bytes());
        data.extend_from_slice(&3u32.to_le_bytes());
        data.push(1);
        let g = MariaGtid::parse(&data, 7).expect("gtid");
        assert_eq!(g.to_string(), "3-7-42");
        assert!(g.standalone);
        assert_eq!(MariaGtid::parse(&data[..5], 7), None);
    }

    #[test]
    fn mysql_gtid_sets_parse_grow_and_print() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let b = "9f0b6c3a-0000-11ee-8000-000000000001";
        let mut set = GtidSet::parse(&format!("{b}:1-3:7,\n{a}:1-5")).expect("set");
        assert_eq!(set.to_string(), format!("{a}:1-5,{b}:1-3:7"));
        set.add(a, 6);
        assert!(set.add_gtid(&format!("{b}:4")));
        assert!(set.add_gtid(&format!("{b}:6")));
        assert_eq!(set.to_string(), format!("{a}:1-6,{b}:1-4:6-7"));
        assert!(set.add_gtid(&format!("{b}:5")));
        assert_eq!(set.to_string(), format!("{a}:1-6,{b}:1-7"));
        assert_eq!(set.sids().len(), 2);
        assert!(!set.add_gtid("0-1-42"), "a MariaDB GTID is not a MySQL one");
        assert_eq!(GtidSet::parse(""), Some(GtidSet::default()));
        for bad in [
            "0-1-42",
            "0-1-42,1-2-7",
            a,
            &format!("{a}:0"),
            &format!("{a}:5-3"),
            "x:1",
        ] {
            assert_eq!(GtidSet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn fixed_string_lengths() {
        // BINARY(16): real type 0xfe, length 16.
        assert_eq!(string_length(&[0xfe, 16]), 16);
        // CHAR(255) in utf8mb4 is 1020 bytes: the high bits of the length live in byte 0.
        assert_eq!(string_length(&[0xce, 0xfc]), 1020);
    }

    #[test]
    fn set_and_enum_value_counts_are_checked_against_their_bytes() {
        use super::check_value_lists;
        // table id, flags, db "d", table "t", 1 column (ENUM), 2 metadata bytes, null bits.
        let head = [
            &[1, 0, 0, 0, 0, 0, 0, 0][..],
            &[1, b'd', 0, 1, b't', 0],
            &[1, 247, 2, 1, 0, 0],
        ]
        .concat();
        // ENUM_STR_VALUE: one list of two values, "a" and "bc".
        let good = [&head[..], &[6, 6, 2, 1, b'a', 2, b'b', b'c']].concat();
        assert_eq!(check_value_lists(&good, 6), Ok(Some(1)));
        // A list claiming 2^32 values in two bytes.
        let bad = [&head[..], &[6, 11, 0xfe, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'a']].concat();
        assert!(check_value_lists(&bad, 6).is_err());
        // A body this walk cannot follow is left alone.
        assert_eq!(check_value_lists(&[1, 2, 3], 6), Ok(None));
        // Real table maps (MariaDB's and MySQL 8's, of the type matrix with its ENUM and SET
        // columns) are walked to their value lists.
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/binlog");
        for flavor in ["mariadb", "mysql8"] {
            let all = std::fs::read(format!("{seeds}/{flavor}-all")).expect("a seed");
            let (mut at, mut lists) = (0, 0);
            while at + 19 <= all.len() {
                let size = u32::from_le_bytes(all[at + 9..at + 13].try_into().expect("4"));
                let end = at + size as usize;
                if all[at + 4] == 19 {
                    // The body, without its header and CRC32 checksum.
                    let walked = check_value_lists(&all[at + 19..end - 4], 6);
                    lists += walked.expect("not refused").expect("walked");
                }
                at = end;
            }
            assert!(lists >= 2, "{flavor}: {lists} value lists");
        }
    }

    #[test]
    fn decimal_bytes_are_checked_before_they_are_read() {
        use super::check_decimal;
        // DECIMAL(5,2): three integer digits in two bytes, two fraction digits in one.
        assert_eq!(check_decimal(&[5, 2], &[0x80, 0x7b, 0x2d]), Ok(())); // 123.45
        assert_eq!(check_decimal(&[5, 2], &[0x7f, 0x84, 0xd2]), Ok(())); // -123.45
        assert_eq!(check_decimal(&[5, 2], &[0x80, 0x7b, 0x2d, 0xff]), Ok(())); // more follows
        assert!(check_decimal(&[5, 2], &[0x80, 0x7b, 0x64]).is_err()); // .100
        assert!(check_decimal(&[5, 2], &[0x83, 0xe8, 0x00]).is_err()); // 1000.
        assert!(check_decimal(&[5, 2], &[0x80, 0x7b]).is_err()); // cut short
        assert!(check_decimal(&[66, 2], &[0x80; 40]).is_err());
        assert!(check_decimal(&[5, 6], &[0x80; 8]).is_err());
        // DECIMAL(65,30), the largest: 8 + 3×9 integer digits, 3×9 + 3 fraction digits.
        let mut max = vec![0x85, 0xf5, 0xe0, 0xff]; // 99999999, the sign bit set
        for _ in 0..6 {
            max.extend_from_slice(&999_999_999u32.to_be_bytes());
        }
        max.extend_from_slice(&[0x03, 0xe7]); // 999
        assert_eq!(check_decimal(&[65, 30], &max), Ok(()));
    }
}
