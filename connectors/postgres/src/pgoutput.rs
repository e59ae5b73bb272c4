//! A decoder for the pgoutput logical replication protocol, version 1.
//!
//! `pgwire-replication` hands us Begin and Commit as typed events and every other message as raw
//! bytes; this module turns those bytes into [`Message`]s. It never panics on input: every read
//! is bounds-checked and a malformed message is a [`DecodeError`] naming what was wrong.
//!
//! Message layouts: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

use std::fmt;

/// One decoded pgoutput message (Begin, Commit and Message are handled by the transport).
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    Relation(Relation),
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Origin,
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    Update {
        relation: u32,
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Begin / Commit / logical message bytes that reached us anyway; ignored.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row of an update or delete.
#[derive(Debug, PartialEq)]
pub enum OldTuple<'a> {
    /// `K`: only the replica-identity key columns carry values (others are sent as null).
    Key(Tuple<'a>),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple<'a>),
}

/// A row's column values, in relation column order.
#[derive(Debug, PartialEq)]
pub struct Tuple<'a>(pub Vec<Datum<'a>>);

#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Datum<'a> {
    Null,
    /// An unchanged TOASTed value that the server did not send.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> DecodeError {
        DecodeError(format!("{what} at byte {}", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err(what))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.err(what))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }

    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err(what))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| self.err(what))?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16("tuple column count")?;
        let mut cols = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let datum = match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32("text value length")? as usize;
                    Datum::Text(self.take(len, "text value")?)
                }
                b'b' => {
                    let len = self.u32("binary value length")? as usize;
                    Datum::Binary(self.take(len, "binary value")?)
                }
                other => return Err(self.err(&format!("unknown tuple column kind {other:#04x}"))),
            };
            cols.push(datum);
        }
        Ok(Tuple(cols))
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message tag")?;
    match tag {
        b'R' => {
            let id = r.u32("relation id")?;
            let schema = r.cstr("relation namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.u16("relation column count")?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstr("column name")?;
                let type_oid = r.u32("column type")?;
                let type_modifier = r.i32("column type modifier")?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            Ok(Message::Relation(Relation {
                id,
                schema,
                name,
                replica_identity,
                columns,
            }))
        }
        b'Y' => Ok(Message::Type {
            oid: r.u32("type oid")?,
            schema: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        }),
        b'O' => Ok(Message::Origin),
        b'I' => {
            let relation = r.u32("relation id")?;
            match r.u8("insert tuple marker")? {
                b'N' => Ok(Message::Insert {
                    relation,
                    new: r.tuple()?,
                }),
                _ => Err(r.err("insert without N tuple")),
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let mut marker = r.u8("update tuple marker")?;
            let old = match marker {
                b'K' | b'O' => {
                    let t = r.tuple()?;
                    let old = if marker == b'K' {
                        OldTuple::Key(t)
                    } else {
                        OldTuple::Full(t)
                    };
                    marker = r.u8("update new tuple marker")?;
                    Some(old)
                }
                _ => None,
            };
            if marker != b'N' {
                return Err(r.err("update without N tuple"));
            }
            Ok(Message::Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let old = match r.u8("delete tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                _ => return Err(r.err("delete without K or O tuple")),
            };
            Ok(Message::Delete { relation, old })
        }
        b'T' => {
            let n = r.u32("truncate relation count")?;
            let options = r.u8("truncate options")?;
            let mut relations = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                relations.push(r.u32("truncate relation id")?);
            }
            Ok(Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            })
        }
        b'B' | b'C' | b'M' => Ok(Message::Other(tag)),
        other => Err(DecodeError(format!("unknown message tag {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16384u32.to_be_bytes());
        b.extend(b"public\0users\0d");
        b.extend(2u16.to_be_bytes());
        b.push(1);
        b.extend(b"id\0");
        b.extend(23u32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.push(0);
        b.extend(b"name\0");
        b.extend(25u32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn decodes_relation() {
        let bytes = relation_bytes();
        let Ok(Message::Relation(rel)) = decode(&bytes) else {
            panic!("not a relation");
        };
        assert_eq!(rel.id, 16384);
        assert_eq!(rel.schema, "public");
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);
    }

    #[test]
    fn decodes_update_with_old_key_and_unchanged_toast() {
        let mut b = vec![b'U'];
        b.extend(7u32.to_be_bytes());
        b.push(b'K');
        b.extend(2u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'1');
        b.push(b'n');
        b.push(b'N');
        b.extend(2u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'2');
        b.push(b'u');
        let msg = decode(&b).expect("decodes");
        assert_eq!(
            msg,
            Message::Update {
                relation: 7,
                old: Some(OldTuple::Key(Tuple(vec![Datum::Text(b"1"), Datum::Null]))),
                new: Tuple(vec![Datum::Text(b"2"), Datum::Unchanged]),
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = relation_bytes();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A length field pointing past the end.
        let mut b = vec![b'I'];
        b.extend(7u32.to_be_bytes());
        b.push(b'N');
        b.extend(1u16.to_be_bytes());
        b.push(b't');
        b.extend(u32::MAX.to_be_bytes());
        assert!(decode(&b).is_err());
        assert!(decode(b"Z").is_err());
    }

    #[test]
    fn decodes_truncate() {
        let mut b = vec![b'T'];
        b.extend(2u32.to_be_bytes());
        b.push(1);
        b.extend(10u32.to_be_bytes());
        b.extend(11u32.to_be_bytes());
        assert_eq!(
            decode(&b).expect("decodes"),
            Message::Truncate {
                relations: vec![10, 11],
                cascade: true,
                restart_identity: false
            }
        );
    }
}
