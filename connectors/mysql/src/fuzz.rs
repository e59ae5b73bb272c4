//! The entry point of the binlog fuzz target (in the workspace's `fuzz/`): arbitrary bytes
//! through the same readers the binlog stream uses. It must return, never panic.

use serde_json::Value as J;

/// A stream of binlog events (the binlog file format without its magic number), read as the
/// MySQL/MariaDB stream reads them (the bodies of the event types it reads, no others): table maps into table shapes, rows events through those
/// shapes into rows, whose values must write valid JSON; query events through the TRUNCATE
/// parser, GTID events through theirs.
///
/// Events are framed here, by their header's length, before mysql_common reads them: its
/// `Event::read` panics on an event longer than its input and on a checksummed event shorter
/// than its checksum. Neither reaches Sluice (the server frames each event as one packet), so
/// the fuzzer is kept on the readers after it.
pub fn binlog(data: &[u8]) -> usize {
    const STREAM_READS: [u8; 9] = [
        EventType::QUERY_EVENT as u8,
        EventType::ROTATE_EVENT as u8,
        EventType::GTID_EVENT as u8,
        EventType::WRITE_ROWS_EVENT as u8,
        EventType::UPDATE_ROWS_EVENT as u8,
        EventType::DELETE_ROWS_EVENT as u8,
        EventType::WRITE_ROWS_EVENT_V1 as u8,
        EventType::UPDATE_ROWS_EVENT_V1 as u8,
        EventType::DELETE_ROWS_EVENT_V1 as u8,
    ];
    use crate::binlog::{MariaGtid, RowImages, TableMap, MARIADB_GTID};
    use mysql_common::binlog::consts::{BinlogVersion, EventType};
    use mysql_common::binlog::events::{EventData, TableMapEvent};
    use mysql_common::binlog::EventStreamReader;
    use std::collections::HashMap;

    let mut reader = EventStreamReader::new(BinlogVersion::Version4);
    let mut input = data;
    let mut maps: HashMap<u64, TableMap> = HashMap::new();
    let mut out = Vec::new();
    let mut read = 0;
    // A bounded number of events: a stream of empty events is cheap, not endless.
    for _ in 0..64 {
        let Some(size) = input.get(9..13) else {
            break;
        };
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        if size < 19 + 5 || size > input.len() {
            break;
        }
        let (event, rest) = input.split_at(size);
        input = rest;
        let ev = match reader.read(event) {
            Ok(Some(ev)) => ev,
            _ => break,
        };
        read += 1;
        let t = ev.header().event_type_raw();
        if t == EventType::TABLE_MAP_EVENT as u8 {
            let Ok(tme) = ev.read_event::<TableMapEvent<'_>>() else {
                continue;
            };
            // Columns named like JSON are read as MariaDB's JSON (LONGTEXT in the binlog).
            let names: Vec<String> = tme
                .iter_optional_meta()
                .filter_map(Result::ok)
                .find_map(|f| match f {
                    mysql_common::binlog::events::OptionalMetadataField::ColumnName(n) => Some(
                        n.iter_names()
                            .filter_map(Result::ok)
                            .map(|n| n.name().into_owned())
                            .filter(|n| n.contains("json"))
                            .collect(),
                    ),
                    _ => None,
                })
                .unwrap_or_default();
            if let Ok(map) = TableMap::from_event(&tme, &ev, &names) {
                maps.insert(tme.table_id(), map);
            }
        } else if t == MARIADB_GTID {
            let _ = MariaGtid::parse(ev.data(), ev.header().server_id());
        } else if !STREAM_READS.contains(&t) {
            // The stream reads no other event's body (a compressed transaction, for one, is
            // refused by its type alone).
            continue;
        } else if let Ok(Some(data)) = ev.read_data() {
            match data {
                EventData::RowsEvent(rows) => {
                    let Some(map) = maps.get(&rows.table_id()) else {
                        continue;
                    };
                    for row in RowImages::new(map, &rows) {
                        let Ok((before, after)) = row else { break };
                        read += 1;
                        for r in [before, after].into_iter().flatten() {
                            assert_eq!(r.values.len(), map.columns.len());
                            for v in r.values.iter().flatten() {
                                out.clear();
                                v.write_json(&mut out);
                                assert!(
                                    serde_json::from_slice::<J>(&out).is_ok(),
                                    "{v:?} wrote invalid JSON: {}",
                                    String::from_utf8_lossy(&out)
                                );
                            }
                        }
                    }
                }
                EventData::QueryEvent(q) => {
                    let _ = crate::stream::truncated_table(q.query().trim(), &q.schema());
                }
                _ => {}
            }
        }
    }
    read
}
