//! From a Kafka record (the capture envelope) to row changes on target tables.
//!
//! A mapping names a source table (hence a topic) and a target table; `columns` renames
//! (`target = "source"`), every other target column takes the source column of the same name
//! when the event carries it. Columns an event does not carry (unchanged TOAST values, or
//! target-only columns) are not written, so the target keeps what it has.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value as J;
use sluice_core::{Position, TableId, TargetChange};

/// One target table fed by a topic.
#[derive(Debug, Clone)]
pub struct TableRoute {
    /// Index of the target table in the sink's table list.
    pub table: usize,
    /// (target column index, source column name) for every target column.
    columns: Vec<(usize, String)>,
    /// (target key column index, source column name), in the target's key order.
    key: Vec<(usize, String)>,
}

impl TableRoute {
    /// Resolves a mapping against the target table (its name, column names and key column
    /// indexes). `Err` names the fix.
    pub fn new(
        table: usize,
        target: (&TableId, &[String], &[usize]),
        renames: &BTreeMap<String, String>,
        at: &str,
    ) -> Result<TableRoute, String> {
        let (id, columns, key) = target;
        for t in renames.keys() {
            if !columns.contains(t) {
                return Err(format!(
                    "{at}.columns: target table {id} has no column {t:?} (its columns: {})",
                    columns.join(", ")
                ));
            }
        }
        let source_of = |i: usize| {
            let name = &columns[i];
            renames.get(name).cloned().unwrap_or_else(|| name.clone())
        };
        Ok(TableRoute {
            table,
            columns: (0..columns.len()).map(|i| (i, source_of(i))).collect(),
            key: key.iter().map(|k| (*k, source_of(*k))).collect(),
        })
    }
}

/// What one record means for the sink.
#[derive(Debug)]
pub enum Mapped {
    /// Row changes (possibly none, e.g. a mapping that keeps no column).
    Changes {
        changes: Vec<TargetChange>,
        position: Option<Position>,
    },
    /// A source truncate: the topic's target tables are emptied once every partition got here.
    Truncate { position: Position },
    /// A tombstone (null value): nothing to apply.
    Tombstone,
}

/// Decodes a record's envelope and maps it through `routes`. `Err` is why the event cannot
/// be applied (it becomes a dead letter).
pub fn map_record(
    routes: &[TableRoute],
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Mapped, String> {
    let Some(value) = value else {
        return Ok(Mapped::Tombstone);
    };
    let envelope: J = serde_json::from_slice(value)
        .map_err(|e| format!("the value is not a JSON change envelope: {e}"))?;
    let op = envelope
        .get("op")
        .and_then(J::as_str)
        .ok_or("the envelope has no \"op\"")?;
    let position = envelope
        .get("source")
        .and_then(Position::from_envelope_source);
    let row = |field: &str| -> Result<&serde_json::Map<String, J>, String> {
        envelope
            .get(field)
            .and_then(J::as_object)
            .ok_or_else(|| format!("op {op:?} without a {field:?} row"))
    };
    let mut changes = Vec::with_capacity(routes.len());
    match op {
        "c" | "r" | "u" => {
            let after = row("after")?;
            let before = envelope.get("before").and_then(J::as_object);
            for route in routes {
                let old_key = before
                    .map(|b| key_values(route, b, None))
                    .transpose()
                    .ok()
                    .flatten();
                let new_key = key_values(route, after, None)?;
                if let Some(old) = old_key {
                    // A key change seen as one update: delete the old row first.
                    if old != new_key {
                        changes.push(TargetChange::Delete {
                            table: route.table,
                            key: old,
                        });
                    }
                }
                let columns = route
                    .columns
                    .iter()
                    .filter_map(|(t, s)| after.get(s).map(|v| (*t, v.clone())))
                    .collect();
                changes.push(TargetChange::Upsert {
                    table: route.table,
                    columns,
                });
            }
        }
        "d" => {
            let before = envelope.get("before").and_then(J::as_object);
            let empty = serde_json::Map::new();
            // The record key is only needed when `before` lacks a key column.
            let record_key: Option<J> = key.and_then(|k| serde_json::from_slice(k).ok());
            let fallback = record_key.as_ref().and_then(J::as_object);
            for route in routes {
                let key = key_values(route, before.unwrap_or(&empty), fallback)?;
                changes.push(TargetChange::Delete {
                    table: route.table,
                    key,
                });
            }
        }
        "t" => {
            return position
                .map(|position| Mapped::Truncate { position })
                .ok_or_else(|| "a truncate without a source position".to_owned())
        }
        other => return Err(format!("unknown op {other:?}")),
    }
    Ok(Mapped::Changes { changes, position })
}

/// The route's key values from `row` (or `fallback`, the record key). `Err` names the missing
/// column.
fn key_values(
    route: &TableRoute,
    row: &serde_json::Map<String, J>,
    fallback: Option<&serde_json::Map<String, J>>,
) -> Result<Vec<J>, String> {
    route
        .key
        .iter()
        .map(|(_, source)| {
            row.get(source)
                .or_else(|| fallback.and_then(|f| f.get(source)))
                .cloned()
                .ok_or_else(|| {
                    format!("the event has no value for source column {source:?}, which feeds a key column of the target")
                })
        })
        .collect()
}

/// Routes per topic.
#[derive(Debug, Default)]
pub struct Router {
    by_topic: HashMap<Arc<str>, TopicRoute>,
}

#[derive(Debug, Default)]
pub struct TopicRoute {
    pub routes: Vec<TableRoute>,
    pub partitions: i32,
}

impl Router {
    pub fn add(&mut self, topic: &str, route: TableRoute) {
        self.by_topic
            .entry(Arc::from(topic))
            .or_default()
            .routes
            .push(route);
    }

    pub fn set_partitions(&mut self, topic: &str, n: i32) {
        if let Some(r) = self.by_topic.get_mut(topic) {
            r.partitions = n;
        }
    }

    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.keys().map(|t| t.to_string()).collect();
        t.sort();
        t
    }

    pub fn get(&self, topic: &str) -> Option<&TopicRoute> {
        self.by_topic.get(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> TableRoute {
        // target (id, full_name, note) ← source (id, name, note)
        TableRoute {
            table: 0,
            columns: vec![(0, "id".into()), (1, "name".into()), (2, "note".into())],
            key: vec![(0, "id".into())],
        }
    }

    fn map(value: J) -> Result<Mapped, String> {
        let bytes = value.to_string().into_bytes();
        map_record(&[route()], Some(b"{\"id\":1}"), Some(&bytes))
    }

    #[test]
    fn upsert_carries_only_present_columns() {
        let m = map(
            json!({"op": "u", "before": null, "after": {"id": 1, "name": "a"},
            "source": {"connector": "postgres", "commit_lsn": "0/10", "seq": 2}}),
        )
        .expect("maps");
        let Mapped::Changes { changes, position } = m else {
            panic!("changes expected")
        };
        assert_eq!(
            changes,
            vec![TargetChange::Upsert {
                table: 0,
                columns: vec![(0, json!(1)), (1, json!("a"))]
            }]
        );
        assert_eq!(
            position,
            Some(Position::Postgres {
                commit_lsn: 0x10,
                seq: 2
            })
        );
    }

    #[test]
    fn key_change_in_one_update_deletes_the_old_row() {
        let m = map(
            json!({"op": "u", "before": {"id": 1, "name": "a", "note": null},
            "after": {"id": 2, "name": "a", "note": null}}),
        )
        .expect("maps");
        let Mapped::Changes { changes, .. } = m else {
            panic!("changes expected")
        };
        assert_eq!(
            changes[0],
            TargetChange::Delete {
                table: 0,
                key: vec![json!(1)]
            }
        );
    }

    #[test]
    fn delete_falls_back_to_the_record_key() {
        let m = map(json!({"op": "d", "before": {}, "after": null})).expect("maps");
        let Mapped::Changes { changes, .. } = m else {
            panic!("changes expected")
        };
        assert_eq!(
            changes,
            vec![TargetChange::Delete {
                table: 0,
                key: vec![json!(1)]
            }]
        );
    }

    #[test]
    fn bad_events_say_why() {
        let err = map_record(&[route()], None, Some(b"not json")).expect_err("refused");
        assert!(err.contains("not a JSON change envelope"), "{err}");
        let err = map(json!({"op": "c", "after": {"name": "no id"}})).expect_err("refused");
        assert!(err.contains("\"id\""), "{err}");
        let err = map(json!({"op": "x"})).expect_err("refused");
        assert!(err.contains("unknown op"), "{err}");
        assert!(matches!(
            map_record(&[route()], None, None),
            Ok(Mapped::Tombstone)
        ));
    }
}
