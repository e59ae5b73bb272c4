//! Entry points for the fuzz targets in `fuzz/`, one per reader of input Sluice does not
//! control. Each takes arbitrary bytes and must return without panicking, whatever they hold:
//! an `Err` is a correct answer to bad input, a panic is a bug. Each calls the same functions
//! the pipeline calls, in the same order, so a finding here is a finding in Sluice. Each
//! returns how much it read successfully (values, rows, changes): the tests that feed real
//! captures through these functions check that they are read, not merely survived.

use std::sync::LazyLock;

use serde_json::Value as J;
use sluice_core::TableId;

use crate::config::{Config, TableMapping};
use crate::mapping::expr::{Bindings, Event, Expr, Need, Vars};
use crate::mapping::route::{map_record, TableRoute, TopicRoute};

/// The pgoutput decoder, then every text value of a decoded tuple through each type's
/// decoder (what the stream does with a column of that type).
pub fn pgoutput(data: &[u8]) -> usize {
    use sluice_postgres::pgoutput::{decode, Datum, Message, OldTuple};
    use sluice_postgres::types::{decode_text, TypeKind};
    let Ok(message) = decode(data) else {
        return 0;
    };
    let mut read = 1;
    let mut datums = Vec::new();
    match &message {
        Message::Insert { new, .. } => datums.extend(new.0.iter()),
        Message::Update { old, new, .. } => {
            if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = old {
                datums.extend(t.0.iter());
            }
            datums.extend(new.0.iter());
        }
        Message::Delete {
            old: OldTuple::Key(t) | OldTuple::Full(t),
            ..
        } => datums.extend(t.0.iter()),
        _ => {}
    }
    let kinds = [
        TypeKind::Bool,
        TypeKind::Int,
        TypeKind::Float,
        TypeKind::Numeric,
        TypeKind::Bytea,
        TypeKind::Json,
        TypeKind::Timestamp,
        TypeKind::TimestampTz,
        TypeKind::Time,
        TypeKind::TimeTz,
        TypeKind::Date,
        TypeKind::Text,
        TypeKind::Array(Box::new(TypeKind::Int)),
        TypeKind::Array(Box::new(TypeKind::Date)),
        TypeKind::Array(Box::new(TypeKind::Array(Box::new(TypeKind::Text)))),
    ];
    let mut out = Vec::new();
    for d in datums {
        let Datum::Text(bytes) = d else { continue };
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        for kind in &kinds {
            if let Ok(v) = decode_text(kind, text) {
                read += 1;
                out.clear();
                v.write_json(&mut out);
                // A json value is passed on as the server wrote it, which is valid JSON.
                let trusted = *kind == TypeKind::Json && serde_json::from_str::<J>(text).is_err();
                assert!(
                    trusted || serde_json::from_slice::<J>(&out).is_ok(),
                    "{kind:?} of {text:?} wrote invalid JSON: {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
    read
}

/// A stream of binlog events: see [`sluice_mysql::fuzz::binlog`].
pub fn binlog(data: &[u8]) -> usize {
    sluice_mysql::fuzz::binlog(data)
}

/// Two routes over one topic, as a sink builds them from its config: renames, computed
/// columns, a value map, a filter, a soft delete, a byte column uploaded as a blob.
static ROUTES: LazyLock<TopicRoute> = LazyLock::new(|| {
    let table = |text: &str| TableId::parse(text, "public").expect("a table name");
    let strings = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mapped: TableMapping = toml::from_str(
        r#"
        from = "public.users"
        to = "public.people"
        columns = { full_name = "name" }
        compute = { label = "after.first + ' ' + after.last", doubled = "after.id * 2", seen = "source.ts_ms" }
        maps = { kind = { from = "type", values = { TEACHER = "FACULTY" }, default = "STUDENT" } }
        filter = "after.status == 'ACTIVE'"
        on_delete = "soft"
        soft_delete = { active = "false" }
        blobs = { photo_url = { store = "s", bytes = "photo", key = "p/{id}" } }
        "#,
    )
    .expect("the fuzz mapping parses");
    let plain: TableMapping = toml::from_str(
        r#"
        from = "public.users"
        include = ["name", "doc"]
        "#,
    )
    .expect("the fuzz mapping parses");
    let people = strings(&[
        "id",
        "full_name",
        "label",
        "doubled",
        "seen",
        "kind",
        "active",
        "photo_url",
    ]);
    let users = strings(&["id", "name", "doc"]);
    let routes = vec![
        TableRoute::new(0, (&table("public.people"), &people, &[0]), &mapped, "fuzz")
            .expect("the fuzz route resolves"),
        TableRoute::new(1, (&table("public.users"), &users, &[0]), &plain, "fuzz")
            .expect("the fuzz route resolves"),
    ];
    routes.into()
});

/// A Kafka record as a sink reads it: the first byte says how long the key is (0: none), the
/// rest is the value (empty: a tombstone).
pub fn envelope(data: &[u8]) -> usize {
    let Some((&n, rest)) = data.split_first() else {
        return 0;
    };
    let n = (n as usize).min(rest.len());
    let (key, value) = rest.split_at(n);
    let key = (n > 0).then_some(key);
    let value = (!value.is_empty()).then_some(value);
    match map_record(&ROUTES, key, value) {
        Ok(crate::mapping::route::Mapped::Changes { changes, .. }) => changes.len(),
        Ok(_) => 1,
        Err(_) => 0,
    }
}

/// The config loader and its validation, on any text.
pub fn config(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    match Config::parse(text) {
        Ok(config) => usize::from(config.validate().is_empty()) + 1,
        Err(_) => 0,
    }
}

/// A CEL expression (the input up to its first NUL) over a row (the JSON after it): the direct
/// evaluator must give the interpreter's answer wherever it gives one.
pub fn cel(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let (expr, row) = text.split_once('\0').unwrap_or((text, "{}"));
    let Ok(row) = serde_json::from_str::<J>(row) else {
        return 0;
    };
    let Ok(expr) = Expr::compile(expr) else {
        return 0;
    };
    let source = serde_json::json!({"ts_ms": 1_700_000_000_000i64, "table": "t"});
    let all = Vars {
        after: Need::Whole,
        before: Need::Whole,
        op: Need::Whole,
        source: Need::Whole,
    };
    let event = Event::new(&all, Some(&row), None, "u", Some(&source));
    let Some(direct) = expr.eval_direct(&event) else {
        return 0;
    };
    let bindings = Bindings::new(&all, Some(&row), None, "u", Some(&source));
    let interpreted = expr.eval_interpreted(&bindings);
    assert_eq!(
        interpreted.as_ref().ok(),
        Some(&direct),
        "{} over {row}: cel gave {interpreted:?}, direct {direct}",
        expr.text()
    );
    1
}

#[cfg(test)]
mod tests {
    /// Every input the fuzzers found a panic with (`fuzz/regressions/<target>/`) now returns.
    #[test]
    fn fuzz_findings_stay_fixed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        type Entry = fn(&[u8]) -> usize;
        let targets: [(&str, Entry); 5] = [
            ("pgoutput", super::pgoutput),
            ("binlog", super::binlog),
            ("envelope", super::envelope),
            ("config", super::config),
            ("cel", super::cel),
        ];
        let mut ran = 0;
        for (target, entry) in targets {
            let Ok(files) = std::fs::read_dir(dir.join(target)) else {
                continue;
            };
            for file in files {
                let path = file.expect("a regression file").path();
                let bytes = std::fs::read(&path).expect("a regression input");
                entry(&bytes);
                ran += 1;
            }
        }
        assert!(
            ran >= 2,
            "only {ran} regression inputs found in {}",
            dir.display()
        );
    }
}
