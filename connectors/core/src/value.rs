//! Column values and their lossless JSON encoding.
//!
//! | source type                          | [`Value`]          | JSON                                   |
//! |--------------------------------------|--------------------|----------------------------------------|
//! | NULL                                 | `Null`             | `null`                                 |
//! | boolean                              | `Bool`             | `true` / `false`                       |
//! | smallint, integer, bigint, oid       | `Int` / `UInt`     | number                                 |
//! | real, double precision (finite)      | `Float`            | number (shortest round-trip form)      |
//! | real, double precision (non-finite)  | `Float`            | `"NaN"`, `"Infinity"`, `"-Infinity"`   |
//! | numeric / decimal                    | `Decimal`          | string, scale kept: `"12.340"`, `"NaN"`|
//! | timestamp without time zone          | `Text`             | `"2024-05-01T12:00:00.000000"`         |
//! | timestamp with time zone             | `Text`             | `"2024-05-01T12:00:00.000000Z"` (UTC)  |
//! | date                                 | `Text`             | `"2024-05-01"`                         |
//! | time / time with time zone           | `Text`             | `"12:00:00.000000"` / `"…+02:00"`      |
//! | interval                             | `Text`             | ISO-8601 duration, `"P1Y2M3DT4H5M6S"`  |
//! | `infinity` timestamps and dates      | `Text`             | `"infinity"`, `"-infinity"`            |
//! | uuid, enum, text, inet, money, …     | `Text`             | string                                 |
//! | bytea / binary                       | `Bytes`            | base64 string (standard alphabet)      |
//! | json / jsonb                         | `Json`             | the document itself                    |
//! | arrays                               | `Array`            | JSON array (nested for more dimensions)|
//!
//! A column absent from a row object was not sent by the source (see the crate docs); it is not
//! NULL.

use std::sync::Arc;

use base64::Engine as _;

/// One column value. See the module docs for the encoding of each variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// An exact decimal in its canonical text form (scale kept), or `NaN` / `Infinity`.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// A JSON document, kept as its text and embedded verbatim.
    Json(String),
    Array(Vec<Value>),
}

impl Value {
    /// Appends this value's JSON encoding to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(i) => crate::json::write_i64(*i, out),
            Value::UInt(u) => crate::json::write_u64(*u, out),
            Value::Float(f) => {
                if f.is_nan() {
                    out.extend_from_slice(b"\"NaN\"");
                } else if f.is_infinite() {
                    out.extend_from_slice(if *f > 0.0 {
                        b"\"Infinity\""
                    } else {
                        b"\"-Infinity\""
                    });
                } else {
                    // serde_json writes finite floats in their shortest round-trip form.
                    let _ = serde_json::to_writer(&mut *out, f);
                }
            }
            Value::Decimal(s) | Value::Text(s) => crate::json::write_json_str(s, out),
            Value::Bytes(b) => {
                out.push(b'"');
                let start = out.len();
                let encoded_len = base64::encoded_len(b.len(), true).unwrap_or(0);
                out.resize(start + encoded_len, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(b, &mut out[start..])
                    .unwrap_or(0);
                out.truncate(start + written);
                out.push(b'"');
            }
            Value::Json(s) => out.extend_from_slice(s.as_bytes()),
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write_json(out);
                }
                out.push(b']');
            }
        }
    }
}

/// A row image: values aligned with the columns of its [`crate::TableSchema`] (which holds the
/// names, so that a row costs no shared reference counting on the hot path).
///
/// `None` marks a column the source did not send (an unchanged TOASTed value, or a non-key
/// column of a Postgres key-only old tuple); it is left out of the JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub values: Vec<Option<Value>>,
}

impl Row {
    /// The value of `column`, given the table's column names.
    pub fn get<'a>(&'a self, columns: &[Arc<str>], column: &str) -> Option<&'a Value> {
        let i = columns.iter().position(|c| &**c == column)?;
        self.values.get(i)?.as_ref()
    }

    /// Appends the row as a JSON object, leaving out absent columns. `keys` are the columns'
    /// rendered object keys, `"name":` ([`crate::TableSchema::json_keys`]).
    pub fn write_json(&self, keys: &[Box<[u8]>], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (key, value) in keys.iter().zip(&self.values) {
            let Some(value) = value else { continue };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(key);
            value.write_json(out);
        }
        out.push(b'}');
    }

    /// Appends a JSON object of the columns at `indexes`, in that order.
    pub fn write_json_subset(&self, keys: &[Box<[u8]>], indexes: &[usize], out: &mut Vec<u8>) {
        out.push(b'{');
        for (n, &i) in indexes.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            match keys.get(i) {
                Some(key) => out.extend_from_slice(key),
                None => out.extend_from_slice(b"\"\":"),
            }
            match self.values.get(i) {
                Some(Some(v)) => v.write_json(out),
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for seconds (and microseconds) since the Unix epoch.
pub fn utc_timestamp(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_timestamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            utc_timestamp(2_147_483_647, 999_999),
            "2038-01-19T03:14:07.999999Z"
        );
        assert_eq!(utc_timestamp(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
    }

    fn json(v: &Value) -> String {
        let mut out = Vec::new();
        v.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn scalars_encode_losslessly() {
        assert_eq!(json(&Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(json(&Value::Int(0)), "0");
        assert_eq!(json(&Value::UInt(u64::MAX)), "18446744073709551615");
        assert_eq!(json(&Value::Float(f64::NAN)), "\"NaN\"");
        assert_eq!(json(&Value::Float(f64::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(json(&Value::Float(0.1)), "0.1");
        assert_eq!(json(&Value::Decimal("12.340".into())), "\"12.340\"");
        assert_eq!(json(&Value::Text("a\"b\n😀".into())), "\"a\\\"b\\n😀\"");
        assert_eq!(json(&Value::Bytes(vec![0, 1, 255])), "\"AAH/\"");
        assert_eq!(json(&Value::Bytes(vec![])), "\"\"");
        assert_eq!(json(&Value::Json("{\"a\": [1]}".into())), "{\"a\": [1]}");
        assert_eq!(json(&Value::Array(vec![])), "[]");
        assert_eq!(
            json(&Value::Array(vec![Value::Int(1), Value::Null])),
            "[1,null]"
        );
    }

    #[test]
    fn strings_escape_exactly_like_serde_json() {
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n\r\t",
            "\u{1}\u{8}\u{c}\u{1f}",
            "é😀\u{7f}",
            "mixed \"a\"\n😀",
        ] {
            let mut ours = Vec::new();
            crate::json::write_json_str(s, &mut ours);
            let theirs = serde_json::to_vec(s).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{s:?}"
            );
        }
    }

    #[test]
    fn absent_columns_are_left_out() {
        let columns: Arc<[Arc<str>]> =
            vec![Arc::from("id"), Arc::from("big"), Arc::from("n")].into();
        let table = crate::TableSchema::new(
            Arc::from("s"),
            Arc::from("d"),
            crate::TableId::new("public", "t"),
            columns.clone(),
            vec![0],
            Arc::from("t"),
        );
        let row = Row {
            values: vec![Some(Value::Int(1)), None, Some(Value::Null)],
        };
        let mut out = Vec::new();
        row.write_json(&table.json_keys, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            r#"{"id":1,"n":null}"#
        );
        let mut out = Vec::new();
        row.write_json_subset(&table.json_keys, &[0], &mut out);
        assert_eq!(String::from_utf8(out).unwrap_or_default(), r#"{"id":1}"#);
        assert_eq!(row.get(&columns, "n"), Some(&Value::Null));
        assert_eq!(row.get(&columns, "big"), None);
    }
}

#[cfg(test)]
mod float_tests {
    /// serde_json's default float parser can be one ulp off (`float_roundtrip` fixes it):
    /// a double printed shortest must parse back to the same double.
    #[test]
    fn floats_parse_back_exactly() {
        for text in [
            "90.33333333333333",
            "0.1",
            "1e-300",
            "2.2250738585072014e-308",
        ] {
            let expected: f64 = text.parse().expect("std parse");
            let parsed: serde_json::Value = serde_json::from_str(text).expect("json");
            assert_eq!(parsed.as_f64(), Some(expected), "{text}");
        }
    }
}
