//! MySQL/MariaDB column kinds and their conversion into Sluice's lossless [`Value`]s.
//!
//! A column's [`Kind`] is read from two places that must agree: the binlog's table-map event
//! (column type, type metadata and, with `binlog_row_metadata = FULL`, signedness, charsets and
//! ENUM/SET labels) for streamed changes, and `information_schema.columns` for snapshot rows.
//! Both paths end in [`Kind::convert`], so a row reads the same whichever way it arrived.
//!
//! | MySQL type                         | JSON                                                 |
//! |------------------------------------|------------------------------------------------------|
//! | TINYINT…BIGINT (signed, unsigned)  | number                                               |
//! | FLOAT / DOUBLE                     | number (FLOAT in its shortest single-precision form) |
//! | DECIMAL(p,s)                       | string, scale kept: `"12.340"`                       |
//! | BIT(1) … BIT(64)                   | string of `0`/`1`, declared width: `"00101"`         |
//! | YEAR                               | number                                               |
//! | DATE                               | `"2024-05-01"`                                       |
//! | DATETIME(n)                        | `"2024-05-01T12:00:00.000000"`                       |
//! | TIMESTAMP(n)                       | `"2024-05-01T12:00:00.000000Z"` (UTC)                |
//! | TIME(n)                            | `"-838:59:59.000000"` (sign and hours beyond 24 kept)|
//! | zero dates (`0000-00-00…`)         | `null` (they name no instant; MySQL's own "no date") |
//! | CHAR/VARCHAR/TEXT (utf8, latin1)   | string                                               |
//! | BINARY/VARBINARY/BLOB              | base64 string (BINARY(n) padded to n bytes)          |
//! | ENUM / SET                         | string (`"a,c"` for a SET)                           |
//! | JSON                               | the document itself                                  |
//! | GEOMETRY                           | base64 of MySQL's internal form (SRID + WKB)         |

use std::sync::Arc;

use mysql_common::value::Value as MyValue;
use sluice_core::Value;

/// How the bytes of a character column are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Latin1,
    Binary,
}

impl Charset {
    /// From a collation id (table-map metadata).
    pub fn of_collation(id: u16) -> Charset {
        match id {
            63 => Charset::Binary,
            5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => Charset::Latin1,
            // utf8mb3/utf8mb4 (MySQL's and MariaDB's many collations), ascii: read as UTF-8.
            _ => Charset::Utf8,
        }
    }

    /// For result sets (the snapshot), from `information_schema.columns.character_set_name`
    /// (NULL for binary columns): the server converts every character column to the
    /// connection's utf8mb4, so anything but binary arrives as UTF-8.
    pub fn of_result_column(name: Option<&str>) -> Charset {
        match name {
            None | Some("binary") => Charset::Binary,
            Some(_) => Charset::Utf8,
        }
    }

    fn text(self, bytes: Vec<u8>) -> Value {
        match self {
            Charset::Binary => Value::Bytes(bytes),
            Charset::Latin1 => Value::Text(bytes.iter().map(|&b| b as char).collect()),
            Charset::Utf8 => match String::from_utf8(bytes) {
                Ok(s) => Value::Text(s),
                Err(e) => Value::Text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            },
        }
    }
}

/// What a column holds, as far as its encoding is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Int,
    /// MEDIUMINT: mysql_common reads a negative one without sign extension.
    MediumInt {
        unsigned: bool,
    },
    Float,
    Double,
    Decimal,
    Year,
    Date,
    DateTime,
    Timestamp,
    Time,
    Bit {
        bits: u32,
    },
    Enum(Arc<[String]>),
    Set(Arc<[String]>),
    Text(Charset),
    /// BINARY(n) loses its trailing zero bytes in the binlog: they are put back.
    FixedBinary {
        len: usize,
    },
    Json,
    /// GEOMETRY and anything else kept as bytes.
    Bytes,
}

impl Kind {
    /// From `information_schema.columns` (`data_type`, `column_type`, `character_set_name`),
    /// plus whether MariaDB declares the column JSON (a LONGTEXT with a `json_valid` check).
    pub fn from_information_schema(
        data_type: &str,
        column_type: &str,
        charset: Option<&str>,
        json: bool,
    ) -> Kind {
        let data_type = data_type.to_ascii_lowercase();
        let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
        match data_type.as_str() {
            "tinyint" | "smallint" | "int" | "integer" | "bigint" => Kind::Int,
            "mediumint" => Kind::MediumInt { unsigned },
            "float" => Kind::Float,
            "double" | "real" => Kind::Double,
            "decimal" | "numeric" => Kind::Decimal,
            "year" => Kind::Year,
            "date" => Kind::Date,
            "datetime" => Kind::DateTime,
            "timestamp" => Kind::Timestamp,
            "time" => Kind::Time,
            "bit" => Kind::Bit {
                bits: paren_number(column_type).unwrap_or(1),
            },
            "enum" => Kind::Enum(labels(column_type).into()),
            "set" => Kind::Set(labels(column_type).into()),
            "json" => Kind::Json,
            "binary" => Kind::FixedBinary {
                len: paren_number(column_type).unwrap_or(1) as usize,
            },
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Bytes,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                if json {
                    Kind::Json
                } else {
                    Kind::Text(Charset::of_result_column(charset))
                }
            }
            _ => Kind::Bytes,
        }
    }

    /// Converts a value as mysql_common decoded it, from the binlog or from a binary-protocol
    /// result row, into Sluice's encoding.
    pub fn convert(&self, value: MyValue) -> Value {
        match (self, value) {
            (_, MyValue::NULL) => Value::Null,
            (Kind::MediumInt { unsigned: false }, MyValue::Int(i)) if i >= 0x80_0000 => {
                Value::Int(i - 0x100_0000)
            }
            (_, MyValue::Int(i)) => Value::Int(i),
            (_, MyValue::UInt(u)) => match i64::try_from(u) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::UInt(u),
            },
            (_, MyValue::Float(f)) => Value::Float(f32_exact(f)),
            (Kind::Float, MyValue::Double(d)) => Value::Float(f32_exact(d as f32)),
            (_, MyValue::Double(d)) => Value::Float(d),
            (Kind::Date, MyValue::Date(y, m, d, ..)) => {
                if y == 0 && m == 0 && d == 0 {
                    Value::Null
                } else {
                    Value::Text(format!("{y:04}-{m:02}-{d:02}"))
                }
            }
            (kind, MyValue::Date(y, mo, d, h, mi, s, us)) => {
                if y == 0 && mo == 0 && d == 0 {
                    return Value::Null;
                }
                let zone = if *kind == Kind::Timestamp { "Z" } else { "" };
                Value::Text(format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{zone}"
                ))
            }
            (_, MyValue::Time(negative, days, h, m, s, us)) => {
                let hours = days as u64 * 24 + h as u64;
                let sign = if negative { "-" } else { "" };
                Value::Text(format!("{sign}{hours:02}:{m:02}:{s:02}.{us:06}"))
            }
            (kind, MyValue::Bytes(bytes)) => kind.convert_bytes(bytes),
        }
    }

    fn convert_bytes(&self, bytes: Vec<u8>) -> Value {
        match self {
            Kind::Decimal => Value::Decimal(String::from_utf8_lossy(&bytes).into_owned()),
            Kind::Int | Kind::MediumInt { .. } | Kind::Year => {
                match std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    Some(i) => Value::Int(i),
                    None => Value::Text(String::from_utf8_lossy(&bytes).into_owned()),
                }
            }
            Kind::Float | Kind::Double => {
                match std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                {
                    Some(f) => Value::Float(f),
                    None => Value::Text(String::from_utf8_lossy(&bytes).into_owned()),
                }
            }
            Kind::Bit { bits } => Value::Text(bit_string(&bytes, *bits)),
            Kind::FixedBinary { len } => {
                let mut bytes = bytes;
                if bytes.len() < *len {
                    bytes.resize(*len, 0);
                }
                Value::Bytes(bytes)
            }
            Kind::Bytes => Value::Bytes(bytes),
            Kind::Json => match String::from_utf8(bytes) {
                // Embedded verbatim, so it must parse: MariaDB's JSON is a checked LONGTEXT,
                // but a check can be dropped.
                Ok(s) if serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok() => {
                    Value::Json(s)
                }
                Ok(s) => Value::Text(s),
                Err(e) => Value::Bytes(e.into_bytes()),
            },
            Kind::Text(charset) => charset.text(bytes),
            // Snapshot rows carry labels; ENUM/SET in the binlog are decoded by the row reader.
            Kind::Enum(_) | Kind::Set(_) => Charset::Utf8.text(bytes),
            // Temporal values arrive as Date/Time, never as bytes, except TIMESTAMP from the
            // binlog (seconds since the epoch, handled by the row reader) and odd legacy forms.
            Kind::Date | Kind::DateTime | Kind::Timestamp | Kind::Time => Charset::Utf8.text(bytes),
        }
    }
}

/// A FLOAT widened to f64 through its shortest decimal form: `0.1f32` becomes `0.1`, not
/// `0.10000000149011612`, which is what the column shows and what a Postgres `real` sends.
pub fn f32_exact(f: f32) -> f64 {
    if !f.is_finite() {
        return f as f64;
    }
    f.to_string().parse().unwrap_or(f as f64)
}

/// BIT(n) bytes (big-endian, whole bytes) as `n` binary digits.
pub fn bit_string(bytes: &[u8], bits: u32) -> String {
    let mut all = String::with_capacity(bytes.len() * 8);
    for b in bytes {
        all.push_str(&format!("{b:08b}"));
    }
    let bits = bits as usize;
    if all.len() > bits {
        all.split_off(all.len() - bits)
    } else {
        format!("{all:0>bits$}")
    }
}

pub use sluice_core::value::utc_timestamp;

/// The number in `bit(12)` / `binary(16)`.
fn paren_number(column_type: &str) -> Option<u32> {
    let start = column_type.find('(')? + 1;
    let end = start + column_type[start..].find(')')?;
    column_type[start..end].trim().parse().ok()
}

/// The labels of `enum('a','b''c')` / `set(…)`, unquoted.
fn labels(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[start + 1..];
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    label.push('\'');
                } else {
                    break;
                }
            } else if c == '\\' {
                if let Some(n) = chars.next() {
                    label.push(n);
                }
            } else {
                label.push(c);
            }
        }
        out.push(label);
    }
    out
}

/// SET bitmask bytes (little-endian) → `"a,c"`.
pub fn set_labels(mask: &[u8], labels: &[String]) -> String {
    let mut out = String::new();
    for (i, label) in labels.iter().enumerate() {
        let byte = mask.get(i / 8).copied().unwrap_or(0);
        if byte & (1 << (i % 8)) != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_unquote() {
        assert_eq!(
            labels("enum('a','b''c','d,e','')"),
            vec!["a", "b'c", "d,e", ""]
        );
        assert_eq!(labels("set('x')"), vec!["x"]);
    }

    #[test]
    fn bits_keep_their_width() {
        assert_eq!(bit_string(&[0b101], 5), "00101");
        assert_eq!(bit_string(&[0x01, 0xff], 10), "0111111111");
        assert_eq!(bit_string(&[1], 1), "1");
        assert_eq!(bit_string(&[0xff; 8], 64), "1".repeat(64));
    }

    #[test]
    fn conversions() {
        let k = Kind::MediumInt { unsigned: false };
        assert_eq!(k.convert(MyValue::Int(0xff_ffff)), Value::Int(-1));
        assert_eq!(k.convert(MyValue::Int(-8_388_608)), Value::Int(-8_388_608));
        assert_eq!(
            Kind::MediumInt { unsigned: true }.convert(MyValue::Int(0xff_ffff)),
            Value::Int(16_777_215)
        );
        assert_eq!(
            Kind::Int.convert(MyValue::UInt(u64::MAX)),
            Value::UInt(u64::MAX)
        );
        assert_eq!(Kind::Float.convert(MyValue::Float(0.1)), Value::Float(0.1));
        assert_eq!(
            Kind::Time.convert(MyValue::Time(true, 34, 22, 59, 59, 0)),
            Value::Text("-838:59:59.000000".into())
        );
        assert_eq!(
            Kind::Date.convert(MyValue::Date(0, 0, 0, 0, 0, 0, 0)),
            Value::Null
        );
        assert_eq!(
            Kind::Timestamp.convert(MyValue::Date(2024, 5, 1, 12, 0, 0, 7)),
            Value::Text("2024-05-01T12:00:00.000007Z".into())
        );
        assert_eq!(
            Kind::FixedBinary { len: 4 }.convert(MyValue::Bytes(vec![1])),
            Value::Bytes(vec![1, 0, 0, 0])
        );
        assert_eq!(
            Kind::Text(Charset::Latin1).convert(MyValue::Bytes(vec![0xe9])),
            Value::Text("é".into())
        );
        assert_eq!(
            Kind::Json.convert(MyValue::Bytes(b"{\"a\": 1}".to_vec())),
            Value::Json("{\"a\": 1}".into())
        );
        assert_eq!(
            set_labels(&[0b101], &["a".into(), "b".into(), "c".into()]),
            "a,c"
        );
    }
}
