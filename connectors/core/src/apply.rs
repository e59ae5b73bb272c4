//! What the apply side hands to a sink: row changes already mapped onto target tables, the
//! Kafka progress they complete, and the events that could not be mapped.
//!
//! A sink writes one [`ApplyBatch`] in ONE target transaction: the row changes, the new
//! per-partition offsets (conditional on the offsets it expected, which fences off a second
//! consumer that was assigned the same partition meanwhile), and the dead letters.

use std::sync::Arc;

/// One row change in terms of a target table (an index into the sink's table list) and its
/// columns (indexes into that table's columns). Values are the envelope's JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetChange {
    /// Insert the row, or update the columns it carries if the key exists. Columns not carried
    /// (an unchanged TOAST value, or not mapped) are left as they are in the target.
    Upsert {
        table: usize,
        columns: Vec<(usize, serde_json::Value)>,
    },
    /// Delete the row with this key (values in the table's key-column order).
    Delete {
        table: usize,
        key: Vec<serde_json::Value>,
    },
    /// Set these columns of the row with this key, if it exists (never inserts): a soft
    /// delete.
    Update {
        table: usize,
        key: Vec<serde_json::Value>,
        columns: Vec<(usize, serde_json::Value)>,
    },
}

/// Where a record came from, to record progress and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A mapped event: its changes are applied together or, if the target refuses one of them for
/// good, not at all (the event then becomes a dead letter).
#[derive(Debug, Clone)]
pub struct MappedEvent {
    pub record: RecordRef,
    pub changes: Vec<TargetChange>,
    /// The record's key and value as received (shared, not copied), kept for a dead letter.
    pub key: Option<Arc<[u8]>>,
    pub value: Option<Arc<[u8]>>,
    /// When the source committed it (ms since the epoch), for the status tables' lag.
    pub commit_ms: Option<i64>,
}

/// An event that will not be applied, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: RecordRef,
    pub key: Option<Arc<[u8]>>,
    pub value: Option<Arc<[u8]>>,
    pub error: String,
    /// The target's SQLSTATE when the target refused the event.
    pub sqlstate: Option<String>,
}

/// A partition's progress to store with the batch.
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The stored next offset this batch continues from (`None`: nothing stored yet). The
    /// write only succeeds if the target still holds exactly this value.
    pub expected: Option<i64>,
    pub next_offset: i64,
    /// The source position of the last event applied from the partition (JSON text).
    pub position: Option<String>,
}

/// One target transaction's worth of work.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch {
    pub events: Vec<MappedEvent>,
    pub dead_letters: Vec<DeadLetter>,
    pub progress: Vec<PartitionProgress>,
    /// Whether an event refused for a foreign key (its parent row is not in the target yet,
    /// or a parent delete still has children) holds its partition ([`ApplyOutcome::Held`])
    /// rather than becoming a dead letter. Partitions listed in `fk_expired` waited long
    /// enough: their foreign-key refusals become dead letters.
    pub hold_foreign_keys: bool,
    pub fk_expired: Vec<(Arc<str>, i32)>,
}

impl DeadLetter {
    /// The record's key and value as text, for the dead-letter table.
    pub fn texts(&self) -> (Option<String>, Option<String>) {
        let text = |b: &Option<Arc<[u8]>>| {
            b.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        (text(&self.key), text(&self.value))
    }
}

impl ApplyBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty() && self.progress.is_empty()
    }
}

/// A truncate's step at its barrier (every partition of the topic must reach it first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarrierOutcome {
    /// The truncate ran (here or in another partition's transaction) and this partition moved
    /// past it.
    Passed,
    /// Other partitions have not reached the truncate yet; this one must wait.
    Waiting,
    /// The stored offset was not the expected one (see [`ApplyOutcome::Fenced`]).
    Fenced,
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Committed; `dead_lettered` events were refused by the target and recorded instead.
    Committed { dead_lettered: usize },
    /// Nothing was committed: the stored offsets of these partitions are not the ones this
    /// batch expected (another consumer moved them). The caller reloads them and retries.
    Fenced(Vec<(Arc<str>, i32)>),
    /// Nothing was committed: this event was refused for a foreign key (see
    /// [`ApplyBatch::hold_foreign_keys`]). The caller holds its partition from this record on,
    /// applies the rest, and retries the held records later.
    Held(RecordRef),
}

impl ApplyBatch {
    /// Whether a foreign-key refusal of `event` holds its partition (instead of a dead letter).
    pub fn holds(&self, event: &MappedEvent) -> bool {
        self.hold_foreign_keys
            && !self
                .fk_expired
                .iter()
                .any(|(t, p)| *t == event.record.topic && *p == event.record.partition)
    }
}

/// What folding needs to know of a target table: its column count and key column indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub columns: usize,
    pub key: Vec<usize>,
}

/// One table's changes in a batch after folding by key: the keys to delete first (values in
/// key order), then the rows to upsert, grouped by the set of columns they carry (values in
/// that set's order), then the update-only rows (key columns included), grouped the same way.
/// A key appears in at most one of `upserts` and `updates`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedTable {
    pub table: usize,
    pub deletes: Vec<Vec<serde_json::Value>>,
    pub upserts: Vec<(Vec<usize>, Vec<Vec<serde_json::Value>>)>,
    pub updates: Vec<(Vec<usize>, Vec<Vec<serde_json::Value>>)>,
}

/// Adds a row (a value per column, `None` for columns it does not carry) to the group of rows
/// carrying the same columns.
fn group(
    groups: &mut Vec<(Vec<usize>, Vec<Vec<serde_json::Value>>)>,
    row: Vec<Option<serde_json::Value>>,
) {
    let shape: Vec<usize> = (0..row.len()).filter(|c| row[*c].is_some()).collect();
    let values: Vec<serde_json::Value> = row.into_iter().flatten().collect();
    match groups.iter_mut().find(|(s, _)| *s == shape) {
        Some((_, rows)) => rows.push(values),
        None => groups.push((shape, vec![values])),
    }
}

/// Folds a batch's changes by table and key, keeping each key's last word: a delete wins over
/// everything before it (and is applied before a later upsert of the key); an upsert overlays
/// the columns it carries on the previous upsert of the key; an update overlays an upsert of
/// the key in the batch, does nothing after a delete in the batch (there is no row), and is
/// otherwise kept as an update of the existing row (an upsert after it carries its columns
/// along). Applying the result (deletes, upserts, updates) leaves the target as applying every
/// change in order would.
pub fn fold(events: &[MappedEvent], shapes: &[TableShape]) -> Vec<FoldedTable> {
    struct KeyState {
        key: Vec<serde_json::Value>,
        delete_first: bool,
        upsert: Option<Vec<Option<serde_json::Value>>>,
        update: Option<Vec<Option<serde_json::Value>>>,
    }
    let mut per_table: Vec<(std::collections::HashMap<String, usize>, Vec<KeyState>)> = shapes
        .iter()
        .map(|_| (Default::default(), Vec::new()))
        .collect();
    let null = serde_json::Value::Null;
    for change in events.iter().flat_map(|e| &e.changes) {
        let (table, key): (usize, Vec<serde_json::Value>) = match change {
            TargetChange::Upsert { table, columns } => (
                *table,
                shapes[*table]
                    .key
                    .iter()
                    .map(|k| {
                        columns
                            .iter()
                            .find(|(c, _)| c == k)
                            .map(|(_, v)| v)
                            .unwrap_or(&null)
                            .clone()
                    })
                    .collect(),
            ),
            TargetChange::Delete { table, key } | TargetChange::Update { table, key, .. } => {
                (*table, key.clone())
            }
        };
        let (index, states) = &mut per_table[table];
        let key_text = serde_json::Value::Array(key.clone()).to_string();
        let slot = *index.entry(key_text).or_insert_with(|| {
            states.push(KeyState {
                key,
                delete_first: false,
                upsert: None,
                update: None,
            });
            states.len() - 1
        });
        let state = &mut states[slot];
        match change {
            TargetChange::Upsert { columns, .. } => {
                let pending_update = state.update.take();
                let row = state.upsert.get_or_insert_with(|| {
                    pending_update.unwrap_or_else(|| vec![None; shapes[table].columns])
                });
                for (c, v) in columns {
                    row[*c] = Some(v.clone());
                }
            }
            TargetChange::Delete { .. } => {
                state.delete_first = true;
                state.upsert = None;
                state.update = None;
            }
            TargetChange::Update { columns, key, .. } => {
                let row = if let Some(row) = state.upsert.as_mut() {
                    row
                } else if state.delete_first {
                    continue; // deleted earlier in the batch: no row to update
                } else {
                    state.update.get_or_insert_with(|| {
                        let mut row = vec![None; shapes[table].columns];
                        for (k, v) in shapes[table].key.iter().zip(key) {
                            row[*k] = Some(v.clone());
                        }
                        row
                    })
                };
                for (c, v) in columns {
                    row[*c] = Some(v.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (table, (_, states)) in per_table.into_iter().enumerate() {
        if states.is_empty() {
            continue;
        }
        let mut folded = FoldedTable {
            table,
            deletes: Vec::new(),
            upserts: Vec::new(),
            updates: Vec::new(),
        };
        for state in states {
            if state.delete_first {
                folded.deletes.push(state.key);
            }
            if let Some(row) = state.upsert {
                group(&mut folded.upserts, row);
            }
            if let Some(row) = state.update {
                group(&mut folded.updates, row);
            }
        }
        out.push(folded);
    }
    out
}

/// Ranks a sink's target tables for foreign keys: `references[t]` lists the tables (indexes)
/// that table `t` references. A table's rank is above that of every table it references;
/// tables in a reference cycle (and a table referencing itself) share a rank, which no order
/// of statements can satisfy and which is left to the target. `None` when no table references
/// another: nothing to order.
pub fn foreign_key_ranks(references: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = references.len();
    if references
        .iter()
        .enumerate()
        .all(|(t, refs)| refs.iter().all(|r| *r == t || *r >= n))
    {
        return None;
    }
    // Longest chain of references below each table, ignoring edges that close a cycle.
    let mut rank = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for t in 0..n {
            for &r in &references[t] {
                if r < n && r != t && rank[t] <= rank[r] && rank[r] < n {
                    rank[t] = rank[r] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Some(rank.into_iter().map(|r| r.min(n)).collect())
}

/// Orders a folded batch so that target foreign keys accept every statement, given the
/// tables' [`foreign_key_ranks`]: first the deletes of keys the batch inserts again (children
/// first), then every upsert and update (parents first: a row's parent exists before it), then
/// the remaining deletes (children first: no row references a parent when it goes). A batch
/// that ends at a consistent source state (every change of a transaction, and every
/// transaction before it) passes the target's constraints in this order whatever the order of
/// its changes in the source.
pub fn order_for_foreign_keys(
    folded: Vec<FoldedTable>,
    shapes: &[TableShape],
    ranks: &[usize],
) -> Vec<FoldedTable> {
    let rank = |t: usize| ranks.get(t).copied().unwrap_or(0);
    let empty = |table| FoldedTable {
        table,
        deletes: Vec::new(),
        upserts: Vec::new(),
        updates: Vec::new(),
    };
    let mut again = Vec::new();
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    for f in folded {
        let key = &shapes[f.table].key;
        let upserted: std::collections::HashSet<String> = f
            .upserts
            .iter()
            .flat_map(|(shape, rows)| {
                let at: Vec<Option<usize>> = key
                    .iter()
                    .map(|k| shape.iter().position(|c| c == k))
                    .collect();
                rows.iter().map(move |row| {
                    let values: Vec<&serde_json::Value> = at
                        .iter()
                        .map(|i| {
                            i.and_then(|i| row.get(i))
                                .unwrap_or(&serde_json::Value::Null)
                        })
                        .collect();
                    serde_json::to_string(&values).unwrap_or_default()
                })
            })
            .collect();
        let (first, last): (Vec<_>, Vec<_>) = f
            .deletes
            .into_iter()
            .partition(|k| upserted.contains(&serde_json::to_string(k).unwrap_or_default()));
        if !first.is_empty() {
            again.push(FoldedTable {
                deletes: first,
                ..empty(f.table)
            });
        }
        if !f.upserts.is_empty() || !f.updates.is_empty() {
            writes.push(FoldedTable {
                upserts: f.upserts,
                updates: f.updates,
                ..empty(f.table)
            });
        }
        if !last.is_empty() {
            deletes.push(FoldedTable {
                deletes: last,
                ..empty(f.table)
            });
        }
    }
    again.sort_by_key(|f| std::cmp::Reverse(rank(f.table)));
    writes.sort_by_key(|f| rank(f.table));
    deletes.sort_by_key(|f| std::cmp::Reverse(rank(f.table)));
    again.into_iter().chain(writes).chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn foreign_key_order_puts_parents_first_for_writes_and_last_for_deletes() {
        // 0: users ← 1: institute_user → 2: institutes; 3 stands alone.
        let ranks = foreign_key_ranks(&[vec![], vec![0, 2], vec![], vec![]]).expect("linked");
        assert_eq!(ranks, vec![0, 1, 0, 0]);
        assert_eq!(foreign_key_ranks(&[vec![], vec![1]]), None);
        let shapes = vec![
            TableShape {
                columns: 2,
                key: vec![0],
            },
            TableShape {
                columns: 3,
                key: vec![0, 1],
            },
            TableShape {
                columns: 2,
                key: vec![0],
            },
        ];
        let folded = vec![
            FoldedTable {
                table: 2,
                // institute 7 goes, institute 8 is deleted and inserted again
                deletes: vec![vec![json!(7)], vec![json!(8)]],
                upserts: vec![(vec![0, 1], vec![vec![json!(8), json!("b")]])],
                updates: vec![],
            },
            FoldedTable {
                table: 1,
                deletes: vec![vec![json!(1), json!(7)]],
                upserts: vec![(vec![0, 1, 2], vec![vec![json!(1), json!(8), json!("x")]])],
                updates: vec![],
            },
        ];
        let order: Vec<(usize, usize, usize)> = order_for_foreign_keys(folded, &shapes, &ranks)
            .iter()
            .map(|f| (f.table, f.deletes.len(), f.upserts.len()))
            .collect();
        assert_eq!(
            order,
            vec![
                (2, 1, 0), // delete institute 8 before it is inserted again
                (2, 0, 1), // parents' rows first
                (1, 0, 1),
                (1, 1, 0), // children's deletes before their parents'
                (2, 1, 0),
            ]
        );
    }

    fn event(changes: Vec<TargetChange>) -> MappedEvent {
        MappedEvent {
            commit_ms: None,
            record: RecordRef {
                topic: Arc::from("t"),
                partition: 0,
                offset: 0,
            },
            changes,
            key: None,
            value: None,
        }
    }

    fn upsert(cols: &[(usize, serde_json::Value)]) -> TargetChange {
        TargetChange::Upsert {
            table: 0,
            columns: cols.to_vec(),
        }
    }

    #[test]
    fn later_upserts_overlay_and_deletes_win() {
        let shapes = [TableShape {
            columns: 3,
            key: vec![0],
        }];
        let events = vec![
            event(vec![upsert(&[
                (0, json!(1)),
                (1, json!("a")),
                (2, json!("big")),
            ])]),
            // an update without the unchanged TOAST column 2
            event(vec![upsert(&[(0, json!(1)), (1, json!("b"))])]),
            event(vec![upsert(&[(0, json!(2)), (1, json!("x"))])]),
            event(vec![TargetChange::Delete {
                table: 0,
                key: vec![json!(2)],
            }]),
            event(vec![TargetChange::Delete {
                table: 0,
                key: vec![json!(3)],
            }]),
            event(vec![upsert(&[(0, json!(3)), (1, json!("again"))])]),
        ];
        let folded = fold(&events, &shapes);
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].deletes, vec![vec![json!(2)], vec![json!(3)]]);
        assert_eq!(
            folded[0].upserts,
            vec![
                (
                    vec![0, 1, 2],
                    vec![vec![json!(1), json!("b"), json!("big")]]
                ),
                (vec![0, 1], vec![vec![json!(3), json!("again")]]),
            ]
        );
    }

    #[test]
    fn updates_never_insert_and_fold_with_upserts() {
        let shapes = [TableShape {
            columns: 3,
            key: vec![0],
        }];
        let update = |k: i64, v: &str| TargetChange::Update {
            table: 0,
            key: vec![json!(k)],
            columns: vec![(2, json!(v))],
        };
        let events = vec![
            // 1: update only → an update of the existing row
            event(vec![update(1, "soft")]),
            // 2: upsert then update → one upsert carrying the update
            event(vec![upsert(&[(0, json!(2)), (1, json!("b"))])]),
            event(vec![update(2, "soft")]),
            // 3: delete then update → only the delete (no row to update)
            event(vec![TargetChange::Delete {
                table: 0,
                key: vec![json!(3)],
            }]),
            event(vec![update(3, "soft")]),
            // 4: update then upsert → an upsert carrying both
            event(vec![update(4, "soft")]),
            event(vec![upsert(&[(0, json!(4)), (1, json!("d"))])]),
        ];
        let folded = fold(&events, &shapes);
        assert_eq!(folded[0].deletes, vec![vec![json!(3)]]);
        assert_eq!(
            folded[0].upserts,
            vec![(
                vec![0, 1, 2],
                vec![
                    vec![json!(2), json!("b"), json!("soft")],
                    vec![json!(4), json!("d"), json!("soft")]
                ]
            )]
        );
        assert_eq!(
            folded[0].updates,
            vec![(vec![0, 2], vec![vec![json!(1), json!("soft")]])]
        );
    }
}

/// A table column as mappings are checked against it: its name, its SQL type and the class
/// of values that type produces (as a source) or accepts (as a target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    pub name: String,
    /// The type as the database spells it (`bigint`, `varchar(80)`, `timestamp with time zone`).
    pub sql_type: String,
    pub class: ColumnClass,
    pub nullable: bool,
}

/// Kinds of column types, as far as checking a mapping's values needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnClass {
    Bool,
    Integer,
    Float,
    Decimal,
    Text,
    /// Dates, times and timestamps.
    Temporal,
    Bytes,
    Json,
    /// Anything else (uuid, arrays, enums of the database, unsigned 64-bit, …): not checked.
    Other,
}
