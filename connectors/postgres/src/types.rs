//! Postgres values in text form → [`Value`].
//!
//! Both the snapshot (COPY text format) and the stream (pgoutput text tuples) hand us values as
//! the type's text output, rendered under the session settings Sluice pins on every connection
//! (see [`crate::client::SESSION_OPTIONS`]): `TimeZone=UTC`, `DateStyle=ISO`,
//! `IntervalStyle=iso_8601`, `bytea_output=hex`, `extra_float_digits=1`. One conversion serves
//! both paths, so a snapshot row and a streamed row of the same data encode identically.

use std::collections::HashMap;

use sluice_core::Value;

/// How a column's text is turned into a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    Int,
    Float,
    Numeric,
    Bytea,
    Json,
    Timestamp,
    TimestampTz,
    Time,
    TimeTz,
    /// `date`: ISO-8601 as it is, but BC years as astronomical years (`-0043-03-15`).
    Date,
    /// Everything whose text form is already the value: text, varchar, uuid, enums,
    /// interval (ISO-8601), inet, money, bit strings, geometric types, ranges, …
    Text,
    Array(Box<TypeKind>),
}

/// What Sluice knows about the server's types: built-in OIDs plus what `pg_type` said at start.
#[derive(Debug, Clone, Default)]
pub struct TypeMap {
    /// oid → (typtype, typcategory, typelem, typbasetype)
    catalog: HashMap<u32, CatalogType>,
}

#[derive(Debug, Clone, Copy)]
pub struct CatalogType {
    pub typtype: u8,
    pub category: u8,
    pub elem: u32,
    pub base: u32,
}

impl TypeMap {
    pub fn new(catalog: HashMap<u32, CatalogType>) -> Self {
        TypeMap { catalog }
    }

    /// The conversion for a column of type `oid`. Unknown types (created after Sluice started)
    /// are passed on as text.
    pub fn kind(&self, oid: u32) -> TypeKind {
        self.kind_depth(oid, 0)
    }

    fn kind_depth(&self, oid: u32, depth: u8) -> TypeKind {
        if let Some(k) = builtin_kind(oid) {
            return k;
        }
        if depth > 8 {
            return TypeKind::Text;
        }
        match self.catalog.get(&oid) {
            // Domains behave as their base type.
            Some(t) if t.typtype == b'd' && t.base != 0 => self.kind_depth(t.base, depth + 1),
            Some(t) if t.category == b'A' && t.elem != 0 => {
                TypeKind::Array(Box::new(self.kind_depth(t.elem, depth + 1)))
            }
            _ => TypeKind::Text,
        }
    }
}

fn builtin_kind(oid: u32) -> Option<TypeKind> {
    use TypeKind::*;
    Some(match oid {
        16 => Bool,
        20 | 21 | 23 | 26 | 28 => Int,
        700 | 701 => Float,
        1700 => Numeric,
        17 => Bytea,
        114 | 3802 => Json,
        1114 => Timestamp,
        1184 => TimestampTz,
        1083 => Time,
        1266 => TimeTz,
        1082 => Date,
        25 | 1043 | 1042 | 19 | 18 | 2950 | 1186 => Text,
        1000 => Array(Box::new(Bool)),
        1005 | 1007 | 1016 | 1028 => Array(Box::new(Int)),
        1021 | 1022 => Array(Box::new(Float)),
        1231 => Array(Box::new(Numeric)),
        1001 => Array(Box::new(Bytea)),
        199 | 3807 => Array(Box::new(Json)),
        1115 => Array(Box::new(Timestamp)),
        1185 => Array(Box::new(TimestampTz)),
        1183 => Array(Box::new(Time)),
        1270 => Array(Box::new(TimeTz)),
        1182 => Array(Box::new(Date)),
        1009 | 1015 | 1014 | 2951 | 1187 => Array(Box::new(Text)),
        _ => return None,
    })
}

/// A value that could not be converted: the text did not match its type's output format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub kind: TypeKind,
    pub reason: &'static str,
}

/// Converts one value's text output.
pub fn decode_text(kind: &TypeKind, text: &str) -> Result<Value, BadValue> {
    let bad = |reason| BadValue {
        kind: kind.clone(),
        reason,
    };
    Ok(match kind {
        TypeKind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad("boolean is neither t nor f")),
        },
        TypeKind::Int => match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => return Err(bad("integer out of range")),
        },
        TypeKind::Float => match text {
            "NaN" => Value::Float(f64::NAN),
            "Infinity" => Value::Float(f64::INFINITY),
            "-Infinity" => Value::Float(f64::NEG_INFINITY),
            _ => Value::Float(text.parse::<f64>().map_err(|_| bad("not a float"))?),
        },
        TypeKind::Numeric => Value::Decimal(text.to_owned()),
        TypeKind::Bytea => {
            Value::Bytes(decode_bytea_hex(text).ok_or_else(|| bad("bytea not hex"))?)
        }
        TypeKind::Json => Value::Json(text.to_owned()),
        TypeKind::Date => match text.strip_suffix(" BC") {
            Some(date) => {
                let mut out = String::with_capacity(12);
                push_date(date, true, &mut out);
                Value::Text(out)
            }
            None => Value::Text(text.to_owned()),
        },
        TypeKind::Timestamp => Value::Text(normalize_timestamp(text, false)),
        TypeKind::TimestampTz => Value::Text(normalize_timestamp(text, true)),
        TypeKind::Time | TypeKind::TimeTz => {
            let mut out = String::with_capacity(24);
            normalize_time(text, false, &mut out);
            Value::Text(out)
        }
        TypeKind::Text => Value::Text(text.to_owned()),
        TypeKind::Array(elem) => parse_array(text, elem).map_err(bad)?,
    })
}

fn decode_bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    hex.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// `2024-05-01 12:00:00.5+00` → `2024-05-01T12:00:00.500000Z`; BC years become ISO-8601
/// astronomical years (`0044-03-15 BC` → `-0043-03-15`); `infinity` stays as is.
fn normalize_timestamp(text: &str, utc: bool) -> String {
    if text == "infinity" || text == "-infinity" {
        return text.to_owned();
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let (date, time) = body.split_once(' ').unwrap_or((body, "00:00:00"));
    let mut out = String::with_capacity(32);
    push_date(date, bc, &mut out);
    out.push('T');
    normalize_time(time, utc, &mut out);
    out
}

fn push_date(date: &str, bc: bool, out: &mut String) {
    if !bc {
        out.push_str(date);
        return;
    }
    match date.split_once('-') {
        Some((year, rest)) => match year.parse::<i64>() {
            Ok(y) => {
                let astronomical = 1 - y;
                if astronomical == 0 {
                    out.push_str("0000");
                } else {
                    out.push_str(&format!("-{:04}", -astronomical));
                }
                out.push('-');
                out.push_str(rest);
            }
            Err(_) => {
                out.push_str(date);
                out.push_str(" BC");
            }
        },
        None => out.push_str(date),
    }
}

/// `12:00:00.5` → `12:00:00.500000`; an offset `+02` → `+02:00`, and `+00` → `Z` when `utc`.
/// Appends to `out`.
fn normalize_time(text: &str, utc: bool, out: &mut String) {
    let split = text
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i);
    let (clock, offset) = match split {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    out.push_str(hms);
    out.push('.');
    // Up to six digits, by character: the text is the server's, but never sliced mid-character.
    let mut digits = 0;
    for c in frac.chars().take(6) {
        out.push(c);
        digits += 1;
    }
    for _ in digits..6 {
        out.push('0');
    }
    if !offset.is_empty() {
        if utc && (offset == "+00" || offset == "+00:00") {
            out.push('Z');
        } else {
            out.push_str(offset);
            if offset.len() == 3 {
                out.push_str(":00");
            }
        }
    }
}

/// Parses a Postgres array literal (`{1,2,NULL}`, `{{a,b},{c,d}}`, `[0:1]={x,y}`) into nested
/// JSON arrays, converting each element with `elem`.
fn parse_array(text: &str, elem: &TypeKind) -> Result<Value, &'static str> {
    let body = match text.strip_prefix('[') {
        // Explicit bounds are dropped: JSON arrays start at 0 anyway.
        Some(_) => text
            .split_once('=')
            .map(|(_, b)| b)
            .ok_or("bad array bounds")?,
        None => text,
    };
    let bytes = body.as_bytes();
    let mut pos = 0;
    let value = parse_array_level(bytes, &mut pos, elem)?;
    if pos != bytes.len() {
        return Err("trailing characters after array");
    }
    Ok(value)
}

fn parse_array_level(b: &[u8], pos: &mut usize, elem: &TypeKind) -> Result<Value, &'static str> {
    if b.get(*pos) != Some(&b'{') {
        return Err("array does not start with {");
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Ok(Value::Array(items));
    }
    loop {
        match b.get(*pos) {
            Some(b'{') => items.push(parse_array_level(b, pos, elem)?),
            Some(b'"') => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(*pos) {
                        Some(b'\\') => {
                            s.push(*b.get(*pos + 1).ok_or("unterminated escape")?);
                            *pos += 2;
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            *pos += 1;
                        }
                        None => return Err("unterminated quoted element"),
                    }
                }
                let s = String::from_utf8(s).map_err(|_| "element is not utf-8")?;
                items.push(decode_text(elem, &s).map_err(|e| e.reason)?);
            }
            Some(_) => {
                let start = *pos;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    *pos += 1;
                }
                let raw =
                    std::str::from_utf8(&b[start..*pos]).map_err(|_| "element is not utf-8")?;
                let raw = raw.trim();
                if raw.eq_ignore_ascii_case("NULL") {
                    items.push(Value::Null);
                } else {
                    items.push(decode_text(elem, raw).map_err(|e| e.reason)?);
                }
            }
            None => return Err("unterminated array"),
        }
        match b.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                return Ok(Value::Array(items));
            }
            _ => return Err("expected , or } in array"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(kind: TypeKind, text: &str) -> Value {
        decode_text(&kind, text).expect("decodes")
    }

    #[test]
    fn timestamps_are_iso_with_microseconds() {
        let cases = [
            (
                TypeKind::TimestampTz,
                "2024-05-01 12:00:00.5+00",
                "2024-05-01T12:00:00.500000Z",
            ),
            (
                TypeKind::Timestamp,
                "2024-05-01 12:00:00",
                "2024-05-01T12:00:00.000000",
            ),
            (
                TypeKind::Timestamp,
                "0044-03-15 12:00:00 BC",
                "-0043-03-15T12:00:00.000000",
            ),
            (TypeKind::TimestampTz, "infinity", "infinity"),
            (
                TypeKind::TimeTz,
                "10:11:12.123456+05:30",
                "10:11:12.123456+05:30",
            ),
            (TypeKind::TimeTz, "10:11:12-02", "10:11:12.000000-02:00"),
            (TypeKind::Time, "23:59:59.999999", "23:59:59.999999"),
            (TypeKind::Date, "0044-03-15 BC", "-0043-03-15"),
            (TypeKind::Date, "0001-01-01 BC", "0000-01-01"),
            (TypeKind::Date, "2024-02-29", "2024-02-29"),
            (TypeKind::Date, "infinity", "infinity"),
        ];
        for (kind, text, iso) in cases {
            assert_eq!(d(kind, text), Value::Text(iso.into()), "{text}");
        }
    }

    #[test]
    fn numbers_and_bytes() {
        assert_eq!(
            d(TypeKind::Float, "-Infinity"),
            Value::Float(f64::NEG_INFINITY)
        );
        assert!(matches!(d(TypeKind::Float, "NaN"), Value::Float(f) if f.is_nan()));
        assert_eq!(d(TypeKind::Float, "1e+308"), Value::Float(1e308));
        assert_eq!(
            d(TypeKind::Numeric, "-0.000100"),
            Value::Decimal("-0.000100".into())
        );
        assert_eq!(
            d(TypeKind::Bytea, "\\x00ff10"),
            Value::Bytes(vec![0, 255, 16])
        );
        assert!(decode_text(&TypeKind::Bytea, "\\x0").is_err());
        assert!(decode_text(&TypeKind::Int, "99999999999999999999").is_err());
    }

    #[test]
    fn arrays_nest_and_unquote() {
        let ints = TypeKind::Array(Box::new(TypeKind::Int));
        assert_eq!(
            d(ints.clone(), "{1,NULL,-3}"),
            Value::Array(vec![Value::Int(1), Value::Null, Value::Int(-3)])
        );
        assert_eq!(d(ints.clone(), "{}"), Value::Array(vec![]));
        assert_eq!(
            d(ints, "[0:1]={{1,2},{3,4}}"),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![Value::Int(3), Value::Int(4)])
            ])
        );
        let texts = TypeKind::Array(Box::new(TypeKind::Text));
        assert_eq!(
            d(texts, r#"{"a,b","say \"hi\"","NULL",NULL,😀}"#),
            Value::Array(vec![
                Value::Text("a,b".into()),
                Value::Text("say \"hi\"".into()),
                Value::Text("NULL".into()),
                Value::Null,
                Value::Text("😀".into())
            ])
        );
        assert!(decode_text(&TypeKind::Array(Box::new(TypeKind::Int)), "{1,2").is_err());
    }
}
