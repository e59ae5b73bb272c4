//! From a Kafka record (the capture envelope) to row changes on target tables.
//!
//! Over 700 lines: routes, column rules, filters and blob specs share one route type; a third is unit tests.
//!
//! A mapping names a source table (hence a topic) and a target table. Each target column takes
//! one of: a source column of the same name, a renamed one (`columns`), a CEL expression
//! (`compute`, see [`super::expr`]), or a source value translated through a table (`maps`).
//! `include`/`exclude` narrow the same-name and renamed columns. Columns an event does not
//! carry (unchanged TOAST values, or target-only columns) are not written, so the target keeps
//! what it has.
//!
//! A `filter` decides which rows the target holds: a row it rejects is not written, and an
//! update that makes a row stop matching removes it (as a delete would); an update that makes
//! it match again writes it in full. Deletes are applied whatever the filter says (removing a
//! row the target never had does nothing), since a delete's old row may hold only the key.
//! A delete is a `delete`, a `soft` update of the existing row, or ignored.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as J;
use sluice_core::{ColumnClass, ColumnDesc, Position, TableId, TargetChange};

use super::direct::{Ty, Var};
use super::expr::{Event, Expr, Vars};
use super::keys::KeyTemplate;
use crate::blobs::stage::{BlobSpec, BlobWork, Input, InputValue};
use crate::config::{BlobDeleteMode, DeleteMode, TableMapping};

/// Where a target column's value comes from.
#[derive(Debug, Clone)]
enum ColumnSource {
    /// The source column of this name (left out when the event does not carry it).
    Column(String),
    /// A CEL expression.
    Expr(Arc<Expr>),
    /// The source column's value looked up in a table (as text), else `default`, else itself.
    Map {
        column: String,
        values: Arc<HashMap<String, J>>,
        default: Option<J>,
    },
}

impl ColumnSource {
    fn uses_expressions(&self) -> bool {
        matches!(self, ColumnSource::Expr(_))
    }

    /// The value from `row`; `Ok(None)` when the event does not carry it.
    fn value(
        &self,
        row: &serde_json::Map<String, J>,
        bindings: Option<&Event>,
    ) -> Result<Option<J>, String> {
        match self {
            ColumnSource::Column(name) => Ok(row.get(name).cloned()),
            ColumnSource::Expr(e) => match bindings {
                Some(b) => e.eval(b).map(Some),
                None => Err(format!("expression {:?} has no event to read", e.text())),
            },
            ColumnSource::Map {
                column,
                values,
                default,
            } => Ok(row.get(column).map(|v| {
                let found = match v {
                    J::String(s) => values.get(s.as_str()),
                    J::Number(n) => values.get(&n.to_string()),
                    J::Bool(b) => values.get(if *b { "true" } else { "false" }),
                    _ => None,
                };
                found
                    .or(default.as_ref())
                    .cloned()
                    .unwrap_or_else(|| v.clone())
            })),
        }
    }
}

/// What a delete (or a row leaving the filter) does in the target.
#[derive(Debug, Clone)]
enum OnDelete {
    Delete,
    Ignore,
    Soft(Vec<(usize, Arc<Expr>)>),
}

/// One target table fed by a topic.
#[derive(Debug, Clone)]
pub struct TableRoute {
    /// Index of the target table in the sink's table list.
    pub table: usize,
    /// (target column index, where its value comes from) for every written target column.
    columns: Vec<(usize, ColumnSource)>,
    /// (target key column index, where its value comes from), in the target's key order.
    key: Vec<(usize, ColumnSource)>,
    filter: Option<Arc<Expr>>,
    on_delete: OnDelete,
    /// Whether any expression needs the event's variables, and which.
    needs_bindings: bool,
    vars: Vars,
    /// Blob columns: uploaded objects whose URLs the rows carry.
    blobs: Vec<BlobRoute>,
}

/// A blob column of a route: the target URL column (and hash and size columns) and the spec.
#[derive(Debug, Clone)]
struct BlobRoute {
    url: usize,
    sha: Option<usize>,
    size: Option<usize>,
    spec: Arc<BlobSpec>,
}

impl TableRoute {
    /// This route's blob URL columns, for releasing their objects at a truncate.
    pub fn blob_columns(&self) -> impl Iterator<Item = sluice_core::target::BlobColumn> + '_ {
        self.blobs.iter().map(|b| sluice_core::target::BlobColumn {
            table: self.table,
            url_column: b.spec.url_column.clone(),
            delete_objects: b.spec.delete_objects,
        })
    }

    /// Resolves a mapping against the target table (its name, column names and key column
    /// indexes). `Err` names the field and the fix.
    pub fn new(
        table: usize,
        target: (&TableId, &[String], &[usize]),
        m: &TableMapping,
        at: &str,
    ) -> Result<TableRoute, String> {
        let (id, columns, key) = target;
        let known = |field: &str, names: &mut dyn Iterator<Item = &String>| -> Result<(), String> {
            for t in names {
                if !columns.contains(t) {
                    return Err(format!(
                        "{at}.{field}: target table {id} has no column {t:?} (its columns: {})",
                        columns.join(", ")
                    ));
                }
            }
            Ok(())
        };
        known("columns", &mut m.columns.keys())?;
        known("compute", &mut m.compute.keys())?;
        known("maps", &mut m.maps.keys())?;
        known("include", &mut m.include.iter().flatten())?;
        known("exclude", &mut m.exclude.iter())?;
        known("soft_delete", &mut m.soft_delete.keys())?;
        known("blobs", &mut m.blobs.keys())?;
        for (c, b) in &m.blobs {
            known(
                &format!("blobs.{c}.sha256_column"),
                &mut b.sha256_column.iter(),
            )?;
            known(&format!("blobs.{c}.size_column"), &mut b.size_column.iter())?;
        }
        let position = |name: &str| columns.iter().position(|n| n == name);
        let mut blobs = Vec::new();
        // Columns the blobs fill, and byte columns that travel as objects instead.
        let mut blob_filled: Vec<&str> = Vec::new();
        for (c, b) in &m.blobs {
            let input = match (&b.path, &b.bytes) {
                (Some(p), None) => Input::Path(p.clone()),
                (None, Some(bytes)) => {
                    blob_filled.push(bytes);
                    Input::Bytes(bytes.clone())
                }
                _ => {
                    return Err(format!(
                        "{at}.blobs.{c}: set exactly one of `path` and `bytes`"
                    ))
                }
            };
            let key = KeyTemplate::parse(&b.key).map_err(|e| format!("{at}.blobs.{c}.key: {e}"))?;
            blob_filled.push(c);
            blob_filled.extend(b.sha256_column.as_deref());
            blob_filled.extend(b.size_column.as_deref());
            blobs.push(BlobRoute {
                url: position(c).unwrap_or(0),
                sha: b.sha256_column.as_deref().and_then(position),
                size: b.size_column.as_deref().and_then(position),
                spec: Arc::new(BlobSpec {
                    url_column: c.clone(),
                    store: b.store.clone(),
                    input,
                    base_dirs: b.base_dirs.iter().map(std::path::PathBuf::from).collect(),
                    key,
                    content_type: b.content_type.clone(),
                    delete_objects: b.on_delete == BlobDeleteMode::Delete,
                    missing_wait: std::time::Duration::from_millis(b.missing_file_wait_ms),
                }),
            });
        }
        let compile = |path: String, text: &str| {
            Expr::compile(text)
                .map(Arc::new)
                .map_err(|e| format!("{at}.{path}: {e}"))
        };
        let mut sources: Vec<Option<ColumnSource>> = Vec::with_capacity(columns.len());
        for (i, name) in columns.iter().enumerate() {
            let is_key = key.contains(&i);
            let source = if let Some(text) = m.compute.get(name) {
                Some(ColumnSource::Expr(compile(
                    format!("compute.{name}"),
                    text,
                )?))
            } else if let Some(map) = m.maps.get(name) {
                Some(ColumnSource::Map {
                    column: map.from.clone(),
                    values: Arc::new(
                        map.values
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    default: map.default.clone(),
                })
            } else if blob_filled.contains(&name.as_str()) && !is_key {
                None
            } else if m.exclude.contains(name) {
                if is_key {
                    return Err(format!(
                        "{at}.exclude: {name:?} is a key column of target table {id}: it cannot be excluded"
                    ));
                }
                None
            } else if !is_key && m.include.as_ref().is_some_and(|inc| !inc.contains(name)) {
                None
            } else {
                Some(ColumnSource::Column(
                    m.columns.get(name).cloned().unwrap_or_else(|| name.clone()),
                ))
            };
            sources.push(source);
        }
        let key_sources = key
            .iter()
            .map(|k| {
                sources[*k].clone().map(|s| (*k, s)).ok_or_else(|| {
                    format!(
                        "{at}: key column {:?} of target table {id} has no source",
                        columns[*k]
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let on_delete = match m.on_delete {
            DeleteMode::Delete => OnDelete::Delete,
            DeleteMode::Ignore => OnDelete::Ignore,
            DeleteMode::Soft => OnDelete::Soft(
                m.soft_delete
                    .iter()
                    .map(|(c, text)| {
                        let index = columns.iter().position(|n| n == c).unwrap_or(0);
                        if key.contains(&index) {
                            return Err(format!(
                                "{at}.soft_delete: {c:?} is a key column of target table {id}: a soft delete cannot change the key"
                            ));
                        }
                        Ok((index, compile(format!("soft_delete.{c}"), text)?))
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            ),
        };
        let filter = m
            .filter
            .as_deref()
            .map(|f| compile("filter".into(), f))
            .transpose()?;
        let columns: Vec<(usize, ColumnSource)> = sources
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        let needs_bindings = filter.is_some()
            || matches!(on_delete, OnDelete::Soft(_))
            || columns.iter().any(|(_, s)| s.uses_expressions());
        let mut vars = filter.as_ref().map(|f| f.vars()).unwrap_or_default();
        for (_, s) in columns.iter().chain(&key_sources) {
            if let ColumnSource::Expr(e) = s {
                vars = vars.union(e.vars());
            }
        }
        if let OnDelete::Soft(sets) = &on_delete {
            for (_, e) in sets {
                vars = vars.union(e.vars());
            }
        }
        Ok(TableRoute {
            table,
            columns,
            key: key_sources,
            filter,
            on_delete,
            needs_bindings,
            vars,
            blobs,
        })
    }

    /// A plain mapping: every target column from the source column of the same name or its
    /// rename (tests and benchmarks).
    #[cfg(test)]
    pub fn plain(table: usize, columns: &[(usize, &str)], key: &[(usize, &str)]) -> TableRoute {
        TableRoute {
            table,
            columns: columns
                .iter()
                .map(|(i, s)| (*i, ColumnSource::Column(s.to_string())))
                .collect(),
            key: key
                .iter()
                .map(|(i, s)| (*i, ColumnSource::Column(s.to_string())))
                .collect(),
            filter: None,
            on_delete: OnDelete::Delete,
            needs_bindings: false,
            vars: Vars::default(),
            blobs: Vec::new(),
        }
    }

    /// The removal a delete (or a row leaving the filter) makes, for the row `old`.
    fn removal(
        &self,
        old: &serde_json::Map<String, J>,
        fallback: Option<&serde_json::Map<String, J>>,
        bindings: Option<&Event>,
        out: &mut Vec<TargetChange>,
        blobs: &mut Vec<BlobWork>,
    ) -> Result<(), String> {
        match &self.on_delete {
            OnDelete::Ignore => Ok(()),
            OnDelete::Delete => {
                let key = key_values(self, old, fallback, bindings)?;
                self.release_blobs(&key, blobs);
                out.push(TargetChange::Delete {
                    table: self.table,
                    key,
                });
                Ok(())
            }
            OnDelete::Soft(sets) => {
                let key = key_values(self, old, fallback, bindings)?;
                let b = bindings.ok_or("a soft delete has no event to read")?;
                let mut columns = sets
                    .iter()
                    .map(|(c, e)| e.eval(b).map(|v| (*c, v)))
                    .collect::<Result<Vec<_>, _>>()?;
                // The row stays; the objects it referenced go, and so do their URLs.
                for blob in self.blobs.iter().filter(|b| b.spec.delete_objects) {
                    columns.push((blob.url, J::Null));
                }
                self.release_blobs(&key, blobs);
                out.push(TargetChange::Update {
                    table: self.table,
                    key,
                    columns,
                });
                Ok(())
            }
        }
    }

    fn release_blobs(&self, key: &[J], blobs: &mut Vec<BlobWork>) {
        for blob in &self.blobs {
            blobs.push(BlobWork::Release {
                table: self.table,
                target_key: key.to_vec(),
                spec: blob.spec.clone(),
            });
        }
    }

    /// The blob work for the row `change` writes (the upsert of `row`, keyed `key`).
    fn put_blobs(
        &self,
        change: usize,
        row: &serde_json::Map<String, J>,
        key: &[J],
        blobs: &mut Vec<BlobWork>,
    ) {
        for blob in &self.blobs {
            let (column, is_path) = match &blob.spec.input {
                Input::Path(c) => (c, true),
                Input::Bytes(c) => (c, false),
            };
            // An event without the column (an unchanged TOASTed value) leaves the object.
            let Some(value) = row.get(column) else {
                continue;
            };
            let input = match (value, is_path) {
                (J::Null, _) => InputValue::Null,
                (J::String(p), true) => InputValue::Path(p.clone()),
                (J::String(b), false) => {
                    use base64::Engine as _;
                    match base64::engine::general_purpose::STANDARD.decode(b) {
                        Ok(bytes) => InputValue::Bytes(bytes),
                        Err(e) => InputValue::Bad(format!(
                            "column {column:?} is not base64-encoded bytes: {e}"
                        )),
                    }
                }
                (other, _) => InputValue::Bad(format!(
                    "column {column:?} holds {other}, not {}",
                    if is_path { "a file path" } else { "bytes" }
                )),
            };
            blobs.push(BlobWork::Put {
                change,
                table: self.table,
                target_key: key.to_vec(),
                url: blob.url,
                sha: blob.sha,
                size: blob.size,
                spec: blob.spec.clone(),
                input,
                key: blob.spec.key.render(row),
            });
        }
    }
}

/// Checks a mapping against its source table's live columns: every source column it names
/// (renames, value maps, `after.x` / `before.x` in expressions) must exist. Returns the
/// problems, each naming the field.
pub fn check_source(
    m: &TableMapping,
    source: &TableId,
    source_columns: &[String],
    at: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let listing = source_columns.join(", ");
    let missing = |c: &str| !source_columns.iter().any(|s| s == c);
    for (target, column) in &m.columns {
        if missing(column) {
            problems.push(format!(
                "{at}.columns.{target}: source table {source} has no column {column:?} (its columns: {listing})"
            ));
        }
    }
    for (target, map) in &m.maps {
        if !map.from.is_empty() && missing(&map.from) {
            problems.push(format!(
                "{at}.maps.{target}.from: source table {source} has no column {:?} (its columns: {listing})",
                map.from
            ));
        }
    }
    for (target, blob) in &m.blobs {
        let input = blob.path.iter().map(|c| ("path", c.as_str()));
        let input = input.chain(blob.bytes.iter().map(|c| ("bytes", c.as_str())));
        let template = KeyTemplate::parse(&blob.key).ok();
        let keyed = template
            .iter()
            .flat_map(|t| t.columns().map(|c| ("key", c)).collect::<Vec<_>>());
        for (field, column) in input.chain(keyed) {
            if missing(column) {
                problems.push(format!(
                    "{at}.blobs.{target}.{field}: source table {source} has no column {column:?} (its columns: {listing})"
                ));
            }
        }
    }
    let expressions = m
        .compute
        .iter()
        .map(|(c, e)| (format!("compute.{c}"), e))
        .chain(m.filter.iter().map(|f| ("filter".to_owned(), f)))
        .chain(
            m.soft_delete
                .iter()
                .map(|(c, e)| (format!("soft_delete.{c}"), e)),
        );
    for (field, text) in expressions {
        let Ok(expr) = Expr::compile(text) else {
            continue; // reported when the config loaded
        };
        for var in ["after", "before"] {
            for column in expr.fields_of(var).unwrap_or_default() {
                if missing(&column) {
                    problems.push(format!(
                        "{at}.{field}: {text:?} reads {var}.{column}, but source table {source} has no column {column:?} (its columns: {listing})"
                    ));
                }
            }
        }
    }
    problems
}

/// The type an envelope value of a source column of this class has in expressions.
fn source_type(class: ColumnClass) -> Ty {
    match class {
        ColumnClass::Bool => Ty::Bool,
        ColumnClass::Integer => Ty::Int,
        ColumnClass::Float => Ty::Double,
        // Exact decimals, text, timestamps and bytes travel as strings.
        ColumnClass::Decimal | ColumnClass::Text | ColumnClass::Temporal | ColumnClass::Bytes => {
            Ty::String
        }
        ColumnClass::Json | ColumnClass::Other => Ty::Dyn,
    }
}

/// Whether a value of type `ty` can be written to `column`. Only what cannot work is refused:
/// a string may be the text form of any type.
fn accepts(column: &ColumnDesc, ty: Ty) -> bool {
    use ColumnClass as C;
    match ty {
        Ty::Dyn | Ty::String => true,
        Ty::Null => column.nullable,
        // MySQL's booleans are tinyint.
        Ty::Bool => {
            matches!(column.class, C::Bool | C::Text | C::Json | C::Other)
                || column.class == C::Integer && column.sql_type.starts_with("tinyint")
        }
        Ty::Int | Ty::UInt => matches!(
            column.class,
            C::Integer | C::Float | C::Decimal | C::Text | C::Json | C::Other
        ),
        Ty::Double => matches!(
            column.class,
            C::Float | C::Decimal | C::Text | C::Json | C::Other
        ),
    }
}

/// A hint for writing a value of type `ty` into `column`, after a refusal.
fn hint(column: &ColumnDesc, ty: Ty) -> &'static str {
    match (ty, column.class) {
        (Ty::Null, _) => "",
        (Ty::Double, ColumnClass::Integer) => ": convert it with int(...)",
        (_, ColumnClass::Temporal) => ": a timestamp takes text such as source.commit_time",
        (Ty::Bool, _) => ": write a value of the column's type, e.g. (cond ? 1 : 0)",
        _ => ": write a value of the column's type",
    }
}

/// Checks the types a mapping writes against the live source and target columns: expressions
/// are type-checked with the source columns' types, and every value a target column would get
/// (a source column, an expression's result, a value map's entries) must suit that column.
/// Returns the problems, each naming the field.
pub fn check_types(
    m: &TableMapping,
    source_columns: &[ColumnDesc],
    target: &TableId,
    target_columns: &[ColumnDesc],
    at: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let source_col = |name: &str| source_columns.iter().find(|c| c.name == name);
    let column_type = |var: Var, name: &str| -> Ty {
        match var {
            Var::After | Var::Before => source_col(name)
                .map(|c| source_type(c.class))
                .unwrap_or(Ty::Dyn),
            Var::Source => match name {
                "ts_ms" | "ts_us" | "ts_ns" | "pos" | "row" | "txId" => Ty::Int,
                "table" | "db" | "schema" | "commit_time" | "name" | "connector" => Ty::String,
                _ => Ty::Dyn,
            },
        }
    };
    let refuse = |problems: &mut Vec<String>,
                  field: String,
                  what: String,
                  col: &ColumnDesc,
                  ty: Ty| {
        if ty == Ty::Null {
            problems.push(format!(
                "{at}.{field}: {what} is always null, but target column {:?} of {target} is NOT NULL",
                col.name
            ));
        } else {
            problems.push(format!(
                "{at}.{field}: {what} gives {}, but target column {:?} of {target} is {}{}",
                ty.name(),
                col.name,
                col.sql_type,
                hint(col, ty)
            ));
        }
    };
    let typed = |text: &str| -> Option<Result<Ty, String>> {
        Expr::compile(text)
            .ok()
            .map(|e| e.result_type(&column_type))
    };
    for col in target_columns {
        let c = &col.name;
        if let Some(text) = m.compute.get(c) {
            match typed(text) {
                Some(Ok(ty)) if !accepts(col, ty) => refuse(
                    &mut problems,
                    format!("compute.{c}"),
                    format!("{text:?}"),
                    col,
                    ty,
                ),
                Some(Err(e)) => problems.push(format!("{at}.compute.{c}: {e}")),
                _ => {}
            }
        } else if let Some(map) = m.maps.get(c) {
            let mut entries: Vec<(String, Ty)> = map
                .values
                .iter()
                .map(|(k, v)| (format!("values.{k}"), Ty::of_json(v)))
                .collect();
            match &map.default {
                Some(d) => entries.push(("default".into(), Ty::of_json(d))),
                None => {
                    if let Some(s) = source_col(&map.from) {
                        entries.push(("from".into(), source_type(s.class)));
                    }
                }
            }
            for (field, ty) in entries {
                if !accepts(col, ty) {
                    refuse(
                        &mut problems,
                        format!("maps.{c}.{field}"),
                        "the value".into(),
                        col,
                        ty,
                    );
                }
            }
        } else if !m.exclude.contains(c) && m.include.as_ref().is_none_or(|i| i.contains(c)) {
            let from = m.columns.get(c).unwrap_or(c);
            if let Some(s) = source_col(from) {
                let ty = source_type(s.class);
                // A nullable source column into a NOT NULL target is the database's to judge.
                if ty != Ty::Null && !accepts(col, ty) {
                    refuse(
                        &mut problems,
                        format!("columns.{c}"),
                        format!("source column {from:?} ({})", s.sql_type),
                        col,
                        ty,
                    );
                }
            }
        }
        if let Some(text) = m.soft_delete.get(c) {
            match typed(text) {
                Some(Ok(ty)) if !accepts(col, ty) => refuse(
                    &mut problems,
                    format!("soft_delete.{c}"),
                    format!("{text:?}"),
                    col,
                    ty,
                ),
                Some(Err(e)) => problems.push(format!("{at}.soft_delete.{c}: {e}")),
                _ => {}
            }
        }
    }
    if let Some(text) = &m.filter {
        match typed(text) {
            Some(Ok(ty)) if !matches!(ty, Ty::Bool | Ty::Dyn) => problems.push(format!(
                "{at}.filter: {text:?} gives {}, but a filter must give true or false",
                ty.name()
            )),
            Some(Err(e)) => problems.push(format!("{at}.filter: {e}")),
            _ => {}
        }
    }
    problems
}

/// Checks that the target's key is determined by the source's key: each target key column
/// must come from source key columns (a rename, a value map, or an expression reading only
/// key columns). Otherwise a delete (whose old row may hold only the key) cannot name the
/// target row, and two source rows could claim one target row.
pub fn check_key(
    m: &TableMapping,
    target: &TableId,
    target_key: &[String],
    source_key: &[String],
    at: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let keyed = |c: &str| source_key.iter().any(|k| k == c);
    let listing = source_key.join(", ");
    for column in target_key {
        let (field, reads): (String, Vec<String>) = if let Some(text) = m.compute.get(column) {
            match Expr::compile(text).ok().and_then(|e| e.fields_of("after")) {
                Some(fields) => (format!("compute.{column}"), fields),
                None => continue, // reads the row some other way: cannot tell
            }
        } else if let Some(map) = m.maps.get(column) {
            (format!("maps.{column}.from"), vec![map.from.clone()])
        } else {
            let source = m.columns.get(column).unwrap_or(column);
            (format!("columns.{column}"), vec![source.clone()])
        };
        for r in reads.iter().filter(|r| !keyed(r)) {
            problems.push(format!(
                "{at}.{field}: key column {column:?} of target table {target} comes from source column {r:?}, which is not in the source key ({listing}): the target key must follow the source key (a delete carries only the key), so map it from key columns"
            ));
        }
    }
    problems
}

/// What one record means for the sink.
#[derive(Debug)]
pub enum Mapped {
    /// Row changes (possibly none, e.g. a mapping that keeps no column).
    Changes {
        changes: Vec<TargetChange>,
        position: Option<Position>,
        /// Objects to upload or release for these changes.
        blobs: Vec<BlobWork>,
        /// The source commit's time (the envelope's `source.ts_ms`), for lag.
        commit_ms: Option<i64>,
    },
    /// A source truncate: the topic's target tables are emptied once every partition got here.
    Truncate { position: Position },
    /// A record with neither value nor key: nothing to apply.
    Tombstone,
}

/// The envelope a tombstone stands for when it does not carry its delete's envelope: the
/// delete of its key (the key columns come from the record key).
const KEY_DELETE: &[u8] = br#"{"op":"d","before":{},"after":null}"#;

/// Decodes a record's envelope and maps it through the topic's routes. `Err` is why the event
/// cannot be applied (it becomes a dead letter).
///
/// A tombstone (`value` is `None`) is the delete of its key: once a compacted topic has
/// dropped the delete's own record, the tombstone is all a sink reads of it. Pass the delete's
/// envelope from the tombstone's header as `value` when it has one (see
/// [`sluice_kafka::TOMBSTONE_DELETE_HEADER`]): it carries the source position, so the apply
/// step skips it when the delete itself was applied already.
pub fn map_record(
    topic: &TopicRoute,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Mapped, String> {
    let routes = &topic.routes;
    let value = match (value, key) {
        (Some(v), _) => v,
        (None, Some(_)) => KEY_DELETE,
        (None, None) => return Ok(Mapped::Tombstone),
    };
    let envelope: J = serde_json::from_slice(value)
        .map_err(|e| format!("the value is not a JSON change envelope: {e}"))?;
    let op = envelope
        .get("op")
        .and_then(J::as_str)
        .ok_or("the envelope has no \"op\"")?;
    let source = envelope.get("source");
    if let Some(t) = envelope.get("too_large") {
        let field = |f: &str| {
            t.get(f)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        };
        let table = |f: &str| {
            source
                .and_then(|s| s.get(f))
                .and_then(J::as_str)
                .unwrap_or("?")
        };
        return Err(format!(
            "the row was not published: its change event was {} bytes, over kafka.max_message_bytes = {} at capture. Raise kafka.max_message_bytes (and the max.message.bytes of the topic, if it was created before), then re-read the row: sluice snapshot --table {}.{} --where '<this record's key>'",
            field("bytes"),
            field("max_message_bytes"),
            table("schema"),
            table("table"),
        ));
    }
    let position = source.and_then(Position::from_envelope_source);
    let row = |field: &str| -> Result<&serde_json::Map<String, J>, String> {
        envelope
            .get(field)
            .and_then(J::as_object)
            .ok_or_else(|| format!("op {op:?} without a {field:?} row"))
    };
    let (needs_bindings, vars) = (topic.needs_bindings, &topic.vars);
    let timed_source = if vars.source.any() {
        source_with_time(source)
    } else {
        None
    };
    let mut changes = Vec::with_capacity(routes.len());
    let mut blobs = Vec::new();
    match op {
        "c" | "r" | "u" => {
            let after = row("after")?;
            let before = envelope.get("before").and_then(J::as_object);
            let bindings = needs_bindings.then(|| {
                Event::new(
                    vars,
                    envelope.get("after"),
                    envelope.get("before"),
                    op,
                    timed_source.as_ref(),
                )
            });
            for route in routes {
                if let Some(filter) = &route.filter {
                    let b = bindings.as_ref().ok_or("a filter has no event to read")?;
                    if !filter.eval_bool(b)? {
                        // Not (or no longer) a row of this target. Only an update can have
                        // put it there before.
                        if op == "u" {
                            route.removal(after, None, Some(b), &mut changes, &mut blobs)?;
                        }
                        continue;
                    }
                }
                let old_key = before
                    .map(|b| key_values(route, b, None, bindings.as_ref()))
                    .transpose()
                    .ok()
                    .flatten();
                let new_key = key_values(route, after, None, bindings.as_ref())?;
                if let Some(old) = old_key {
                    // A key change seen as one update: delete the old row first.
                    if old != new_key {
                        route.release_blobs(&old, &mut blobs);
                        changes.push(TargetChange::Delete {
                            table: route.table,
                            key: old,
                        });
                    }
                }
                let mut columns = Vec::with_capacity(route.columns.len());
                for (t, s) in &route.columns {
                    if let Some(v) = s.value(after, bindings.as_ref())? {
                        columns.push((*t, v));
                    }
                }
                if !route.blobs.is_empty() {
                    route.put_blobs(changes.len(), after, &new_key, &mut blobs);
                }
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
            // Expressions read the deleted row as `after`.
            let bindings = needs_bindings.then(|| {
                Event::new(
                    vars,
                    envelope.get("before"),
                    envelope.get("before"),
                    op,
                    timed_source.as_ref(),
                )
            });
            for route in routes {
                route.removal(
                    before.unwrap_or(&empty),
                    fallback,
                    bindings.as_ref(),
                    &mut changes,
                    &mut blobs,
                )?;
            }
        }
        "t" => {
            return position
                .map(|position| Mapped::Truncate { position })
                .ok_or_else(|| "a truncate without a source position".to_owned())
        }
        other => return Err(format!("unknown op {other:?}")),
    }
    let commit_ms = source.and_then(|s| s.get("ts_ms")).and_then(J::as_i64);
    Ok(Mapped::Changes {
        changes,
        position,
        blobs,
        commit_ms,
    })
}

/// The envelope's `source`, with `commit_time`: its `ts_us` as an ISO-8601 UTC timestamp
/// (for `deleted_at = "source.commit_time"`).
fn source_with_time(source: Option<&J>) -> Option<J> {
    let mut source = source?.clone();
    if let Some(obj) = source.as_object_mut() {
        if let Some(us) = obj.get("ts_us").and_then(J::as_i64) {
            let text = sluice_core::value::utc_timestamp(
                us.div_euclid(1_000_000),
                us.rem_euclid(1_000_000) as u32,
            );
            obj.insert("commit_time".into(), J::String(text));
        }
    }
    Some(source)
}

/// The route's key values from `row` (or `fallback`, the record key). `Err` names the missing
/// column.
fn key_values(
    route: &TableRoute,
    row: &serde_json::Map<String, J>,
    fallback: Option<&serde_json::Map<String, J>>,
    bindings: Option<&Event>,
) -> Result<Vec<J>, String> {
    route
        .key
        .iter()
        .map(|(_, source)| {
            if let Some(v) = source.value(row, bindings)? {
                return Ok(v);
            }
            let name = match source {
                ColumnSource::Column(n) | ColumnSource::Map { column: n, .. } => n.as_str(),
                ColumnSource::Expr(e) => e.text(),
            };
            fallback
                .and_then(|f| f.get(name))
                .cloned()
                .ok_or_else(|| {
                    format!("the event has no value for source column {name:?}, which feeds a key column of the target")
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
    /// What the routes' expressions read of an event, and whether any needs the event's
    /// variables: worked out once here, not for every record.
    vars: Vars,
    needs_bindings: bool,
}

impl TopicRoute {
    pub fn push(&mut self, route: TableRoute) {
        self.vars = std::mem::take(&mut self.vars).union(route.vars.clone());
        self.needs_bindings |= route.needs_bindings;
        self.routes.push(route);
    }
}

impl From<Vec<TableRoute>> for TopicRoute {
    fn from(routes: Vec<TableRoute>) -> TopicRoute {
        let mut topic = TopicRoute::default();
        for r in routes {
            topic.push(r);
        }
        topic
    }
}

impl Router {
    pub fn add(&mut self, topic: &str, route: TableRoute) {
        self.by_topic
            .entry(Arc::from(topic))
            .or_default()
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
        TableRoute::plain(0, &[(0, "id"), (1, "name"), (2, "note")], &[(0, "id")])
    }

    /// The changes, position and blob work of a mapped record; panics on anything else.
    fn parts(m: Mapped) -> (Vec<TargetChange>, Option<Position>, Vec<BlobWork>) {
        match m {
            Mapped::Changes {
                changes,
                position,
                blobs,
                ..
            } => (changes, position, blobs),
            other => panic!("changes expected, got {other:?}"),
        }
    }

    fn map(value: J) -> Result<Mapped, String> {
        let bytes = value.to_string().into_bytes();
        map_record(&vec![route()].into(), Some(b"{\"id\":1}"), Some(&bytes))
    }

    #[test]
    fn upsert_carries_only_present_columns() {
        let m = map(
            json!({"op": "u", "before": null, "after": {"id": 1, "name": "a"},
            "source": {"connector": "postgres", "commit_lsn": "0/10", "seq": 2}}),
        )
        .expect("maps");
        let (changes, position, _) = parts(m);
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
    fn numbers_inside_json_values_keep_every_digit() {
        let big = format!("1{}", "0".repeat(399));
        let text = format!(
            r#"{{"op": "c", "before": null, "after": {{"id": 1, "name": {{"n": {big}, "m": 123456789012345678901234567890.5}}}}}}"#
        );
        let m = map_record(
            &vec![route()].into(),
            Some(b"{\"id\":1}"),
            Some(text.as_bytes()),
        )
        .expect("maps");
        let (changes, ..) = parts(m);
        let TargetChange::Upsert { columns, .. } = &changes[0] else {
            panic!("an upsert expected")
        };
        let doc = columns[1].1.to_string();
        assert!(doc.contains(&big), "{doc}");
        assert!(doc.contains("123456789012345678901234567890.5"), "{doc}");
    }

    #[test]
    fn key_change_in_one_update_deletes_the_old_row() {
        let m = map(
            json!({"op": "u", "before": {"id": 1, "name": "a", "note": null},
            "after": {"id": 2, "name": "a", "note": null}}),
        )
        .expect("maps");
        let (changes, ..) = parts(m);
        assert_eq!(
            changes[0],
            TargetChange::Delete {
                table: 0,
                key: vec![json!(1)]
            }
        );
    }

    #[test]
    fn a_delete_without_key_columns_and_a_tombstone_delete_by_the_record_key() {
        let envelope = json!({"op": "d", "before": {}, "after": null}).to_string();
        for value in [Some(envelope.as_bytes()), None] {
            let m = map_record(&vec![route()].into(), Some(b"{\"id\":7}"), value).expect("maps");
            let (changes, position, _) = parts(m);
            assert_eq!(
                changes,
                vec![TargetChange::Delete {
                    table: 0,
                    key: vec![json!(7)]
                }]
            );
            assert_eq!(position, None);
        }
    }

    #[test]
    fn bad_events_say_why() {
        let err = map_record(&vec![route()].into(), None, Some(b"not json")).expect_err("refused");
        assert!(err.contains("not a JSON change envelope"), "{err}");
        let err = map(json!({"op": "c", "after": {"name": "no id"}})).expect_err("refused");
        assert!(err.contains("\"id\""), "{err}");
        let err = map(json!({"op": "x"})).expect_err("refused");
        assert!(err.contains("unknown op"), "{err}");
        assert!(matches!(
            map_record(&vec![route()].into(), None, None),
            Ok(Mapped::Tombstone)
        ));
    }

    /// organizations.user (id, name, email, role, "isActive", deleted_at) ← lms.users.
    fn org_route(extra: &str) -> TableRoute {
        let m: TableMapping = toml::from_str(&format!(
            r#"
from = "lms.users"
to = "organizations.user"
compute = {{ name = "after.first_name + ' ' + after.last_name", isActive = "after.status == 'ACTIVE'" }}
maps.role = {{ from = "user_type", values = {{ ADMIN = "ADMIN", TEACHER = "FACULTY", INSTRUCTOR = "FACULTY", STUDENT = "STUDENT" }}, default = "STUDENT" }}
exclude = ["deleted_at"]
{extra}
"#
        ))
        .expect("mapping");
        let columns: Vec<String> = ["id", "name", "email", "role", "isActive", "deleted_at"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        TableRoute::new(
            0,
            (&TableId::new("organizations", "user"), &columns, &[0]),
            &m,
            "sinks.svc.tables[0]",
        )
        .expect("route")
    }

    fn user(op: &str, status: &str, user_type: &str) -> Vec<u8> {
        let row = json!({"id": 7, "first_name": "Ada", "last_name": "Lovelace",
            "email": "ada@example.com", "user_type": user_type, "status": status});
        let (before, after) = if op == "d" {
            (row, J::Null)
        } else {
            (J::Null, row)
        };
        json!({"op": op, "before": before, "after": after,
               "source": {"connector": "mysql", "ts_us": 1_700_000_000_000_000i64}})
        .to_string()
        .into_bytes()
    }

    fn changes(route: &TableRoute, value: &[u8]) -> Vec<TargetChange> {
        parts(map_record(&vec![route.clone()].into(), None, Some(value)).expect("maps")).0
    }

    #[test]
    fn expressions_value_maps_and_exclusions() {
        let r = org_route("");
        assert_eq!(
            changes(&r, &user("c", "ACTIVE", "TEACHER")),
            vec![TargetChange::Upsert {
                table: 0,
                columns: vec![
                    (0, json!(7)),
                    (1, json!("Ada Lovelace")),
                    (2, json!("ada@example.com")),
                    (3, json!("FACULTY")),
                    (4, json!(true)),
                ]
            }]
        );
        let c = changes(&r, &user("u", "DISABLED", "JANITOR"));
        let TargetChange::Upsert { columns, .. } = &c[0] else {
            panic!("upsert expected")
        };
        assert_eq!(columns[3], (3, json!("STUDENT")), "the default");
        assert_eq!(columns[4], (4, json!(false)));
        assert_eq!(
            changes(&r, &user("d", "ACTIVE", "ADMIN")),
            vec![TargetChange::Delete {
                table: 0,
                key: vec![json!(7)]
            }]
        );
    }

    #[test]
    fn filters_remove_rows_that_stop_matching_and_soft_delete() {
        let r = org_route(
            "filter = \"after.status == 'ACTIVE' && has(after.email) && after.email != null\"\n\
             on_delete = \"soft\"\n\
             soft_delete = { isActive = \"false\", deleted_at = \"source.commit_time\" }",
        );
        // Matching: written in full.
        assert!(matches!(
            changes(&r, &user("c", "ACTIVE", "ADMIN"))[..],
            [TargetChange::Upsert { .. }]
        ));
        // An insert that does not match: nothing.
        assert!(changes(&r, &user("c", "DISABLED", "ADMIN")).is_empty());
        // An update that makes it stop matching, and a delete: soft deletes.
        let soft = vec![TargetChange::Update {
            table: 0,
            key: vec![json!(7)],
            columns: vec![(5, json!("2023-11-14T22:13:20.000000Z")), (4, json!(false))],
        }];
        assert_eq!(changes(&r, &user("u", "DISABLED", "ADMIN")), soft);
        assert_eq!(changes(&r, &user("d", "ACTIVE", "ADMIN")), soft);
        let ignore = org_route("on_delete = \"ignore\"");
        assert!(changes(&ignore, &user("d", "ACTIVE", "ADMIN")).is_empty());
    }

    #[test]
    fn mapping_errors_name_the_field() {
        let columns: Vec<String> = vec!["id".into(), "name".into()];
        let err = |extra: &str| {
            let m: TableMapping =
                toml::from_str(&format!("from = \"a.b\"\n{extra}")).expect("mapping");
            TableRoute::new(
                0,
                (&TableId::new("s", "t"), &columns, &[0]),
                &m,
                "sinks.x.tables[1]",
            )
            .expect_err("refused")
        };
        let e = err("compute = { nmae = \"'x'\" }");
        assert!(
            e.contains("sinks.x.tables[1].compute: target table s.t has no column \"nmae\""),
            "{e}"
        );
        let e = err("compute = { name = \"after.name +\" }");
        assert!(
            e.contains("sinks.x.tables[1].compute.name: CEL syntax error"),
            "{e}"
        );
        let e = err("exclude = [\"id\"]");
        assert!(e.contains("key column"), "{e}");
        let e = err("on_delete = \"soft\"\nsoft_delete = { id = \"0\" }");
        assert!(e.contains("cannot change the key"), "{e}");
    }

    #[test]
    fn source_columns_a_mapping_names_must_exist() {
        let m: TableMapping = toml::from_str(
            r#"
from = "lms.users"
columns = { userId = "idd" }
compute = { name = "after.first_name + ' ' + after.lastname" }
maps.role = { from = "usertype", values = {} }
filter = "after.status == 'ACTIVE'"
"#,
        )
        .expect("mapping");
        let cols: Vec<String> = ["id", "first_name", "last_name", "status", "user_type"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let problems = check_source(
            &m,
            &TableId::new("lms", "users"),
            &cols,
            "sinks.o.tables[0]",
        );
        let all = problems.join("\n");
        assert_eq!(problems.len(), 3, "{all}");
        assert!(all.contains("sinks.o.tables[0].columns.userId: source table lms.users has no column \"idd\" (its columns: id, first_name"), "{all}");
        assert!(all.contains("sinks.o.tables[0].compute.name: \"after.first_name + ' ' + after.lastname\" reads after.lastname, but source table lms.users has no column \"lastname\""), "{all}");
        assert!(all.contains("sinks.o.tables[0].maps.role.from: source table lms.users has no column \"usertype\""), "{all}");
    }

    #[test]
    fn the_target_key_must_come_from_the_source_key() {
        let m: TableMapping = toml::from_str(
            r#"
from = "lms.users"
columns = { userId = "id", email = "mail" }
compute = { code = "after.first_name + string(after.id)", tenant = "'t1'" }
"#,
        )
        .expect("mapping");
        let key = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let target = TableId::new("o", "u");
        assert!(check_key(&m, &target, &key(&["userId", "tenant"]), &key(&["id"]), "t").is_empty());
        let problems = check_key(&m, &target, &key(&["email", "code"]), &key(&["id"]), "t");
        let all = problems.join("\n");
        assert_eq!(problems.len(), 2, "{all}");
        assert!(all.contains("t.columns.email: key column \"email\" of target table o.u comes from source column \"mail\", which is not in the source key (id)"), "{all}");
        assert!(all.contains("t.compute.code: key column \"code\""), "{all}");
    }

    #[test]
    fn blob_columns_ask_for_uploads_and_releases() {
        let m: TableMapping = toml::from_str(
            r#"
from = "lms.users"
to = "organizations.user"
filter = "after.status == 'ACTIVE'"
on_delete = "soft"
soft_delete = { deleted_at = "source.commit_time" }
blobs.photo_url = { store = "s", path = "email", base_dirs = ["/files"], key = "users/{id}/{sha256}{ext}" }
blobs.card_url = { store = "s", bytes = "first_name", key = "cards/{id}", on_delete = "keep" }
"#,
        )
        .expect("mapping");
        let columns: Vec<String> = ["id", "first_name", "photo_url", "card_url", "deleted_at"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let route = TableRoute::new(
            0,
            (&TableId::new("organizations", "user"), &columns, &[0]),
            &m,
            "t",
        )
        .expect("route");
        let map = |value: &[u8]| {
            let (changes, _, blobs) =
                parts(map_record(&vec![route.clone()].into(), None, Some(value)).expect("maps"));
            (changes, blobs)
        };
        let row = |op: &str, status: &str, name: &str| {
            json!({"op": op, "after": {"id": 7, "first_name": name, "email": "a/b.pdf", "status": status},
                   "source": {"connector": "mysql", "ts_us": 1_700_000_000_000_000i64}})
            .to_string()
            .into_bytes()
        };
        // An insert: the byte column is not written as such, both blobs are asked for.
        let (changes, blobs) = map(&row("c", "ACTIVE", "QUJD"));
        let TargetChange::Upsert { columns, .. } = &changes[0] else {
            panic!("{changes:?}");
        };
        assert_eq!(
            columns,
            &vec![(0, json!(7))],
            "first_name travels as an object"
        );
        assert_eq!(blobs.len(), 2);
        let mut inputs = Vec::new();
        for b in &blobs {
            let BlobWork::Put {
                input,
                key,
                target_key,
                change,
                ..
            } = b
            else {
                panic!("{b:?}");
            };
            assert_eq!((target_key, *change), (&vec![json!(7)], 0));
            inputs.push(format!("{input:?}"));
            let key = key.as_ref().expect("key").finish("ff", ".pdf");
            assert!(key == "users/7/ff.pdf" || key == "cards/7", "{key}");
        }
        inputs.sort();
        assert_eq!(inputs, vec!["Bytes([65, 66, 67])", "Path(\"a/b.pdf\")"]);
        // Not base64: the work says why (the event becomes a dead letter).
        let (_, blobs) = map(&row("u", "ACTIVE", "not base64!"));
        assert!(blobs.iter().any(|b| matches!(b, BlobWork::Put { input: InputValue::Bad(why), .. } if why.contains("not base64"))));
        // Leaving the filter: a soft delete clears the deleted object's URL (not the kept one's)
        // and releases both.
        let (changes, blobs) = map(&row("u", "INACTIVE", "QUJD"));
        let TargetChange::Update { columns, .. } = &changes[0] else {
            panic!("{changes:?}");
        };
        assert!(columns.contains(&(2, J::Null)), "{columns:?}");
        assert!(!columns.iter().any(|(c, _)| *c == 3), "{columns:?}");
        assert_eq!(
            blobs
                .iter()
                .filter(|b| matches!(b, BlobWork::Release { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn types_written_must_suit_the_target_columns() {
        let col = |name: &str, sql: &str, class: ColumnClass, nullable: bool| ColumnDesc {
            name: name.into(),
            sql_type: sql.into(),
            class,
            nullable,
        };
        let source = vec![
            col("id", "bigint", ColumnClass::Integer, false),
            col("first_name", "varchar(40)", ColumnClass::Text, true),
            col("price", "double", ColumnClass::Float, true),
            col("user_type", "varchar(20)", ColumnClass::Text, false),
            col("born", "int", ColumnClass::Integer, true),
        ];
        let target = vec![
            col("id", "bigint", ColumnClass::Integer, false),
            col("name", "text", ColumnClass::Text, false),
            col("cents", "integer", ColumnClass::Integer, true),
            col("born", "date", ColumnClass::Temporal, true),
            col("active", "boolean", ColumnClass::Bool, false),
            col("role", "smallint", ColumnClass::Integer, true),
            col("note", "text", ColumnClass::Text, false),
        ];
        let problems = |extra: &str| {
            let m: TableMapping =
                toml::from_str(&format!("from = \"lms.users\"\n{extra}")).expect("mapping");
            check_types(&m, &source, &TableId::new("o", "u"), &target, "t")
        };
        // A well-typed mapping passes.
        let ok = problems(
            r#"
compute = { name = "after.first_name + '!'", cents = "int(after.price * 100.0)", active = "after.id > 0", note = "string(after.id)" }
maps.role = { from = "user_type", values = { A = 1, B = 2 }, default = 0 }
exclude = ["born"]
filter = "after.price > 1.0"
"#,
        );
        assert!(ok.is_empty(), "{ok:?}");
        let all = problems(
            r#"
compute = { name = "after.first_name + 1", cents = "after.price * 100.0", active = "after.id", note = "null" }
maps.role = { from = "user_type", values = { A = true, B = 2 } }
filter = "after.price"
"#,
        )
        .join("\n");
        for expected in [
            "t.compute.name: CEL type error in \"after.first_name + 1\" at line 1, column 18: no `+` for string and int",
            "t.compute.cents: \"after.price * 100.0\" gives double, but target column \"cents\" of o.u is integer: convert it with int(...)",
            "t.compute.active: \"after.id\" gives int, but target column \"active\" of o.u is boolean",
            "t.compute.note: \"null\" is always null, but target column \"note\" of o.u is NOT NULL",
            "t.maps.role.values.A: the value gives bool, but target column \"role\" of o.u is smallint",
            "t.columns.born: source column \"born\" (int) gives int, but target column \"born\" of o.u is date",
            "t.filter: \"after.price\" gives double, but a filter must give true or false",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        assert_eq!(all.lines().count(), 7, "{all}");
    }

    #[test]
    fn mapping_a_row_is_deterministic_and_bad_rows_never_panic() {
        // Property: for generated rows (strings, numbers, nulls, missing fields), mapping twice
        // gives the same result, and errors are messages, not panics.
        let topic: TopicRoute = vec![org_route("filter = \"after.status == 'ACTIVE'\"")].into();
        let values = [
            json!(null),
            json!(""),
            json!("ACTIVE"),
            json!("TEACHER"),
            json!(0),
            json!(-1),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("é😀"),
        ];
        let fields = [
            "id",
            "first_name",
            "last_name",
            "email",
            "user_type",
            "status",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            let mut row = serde_json::Map::new();
            for f in fields {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if !seed.is_multiple_of(7) {
                    row.insert(
                        f.into(),
                        values[(seed % values.len() as u64) as usize].clone(),
                    );
                }
            }
            let op = ["c", "u", "d", "r"][(seed % 4) as usize];
            let env = json!({"op": op, "before": row.clone(), "after": row,
                             "source": {"ts_us": 5}})
            .to_string()
            .into_bytes();
            let a = map_record(&topic, Some(b"{\"id\":1}"), Some(&env));
            let b = map_record(&topic, Some(b"{\"id\":1}"), Some(&env));
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }
}
