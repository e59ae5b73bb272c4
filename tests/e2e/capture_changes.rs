//! Updates, key changes, deletes under DEFAULT and FULL replica identity, truncate, and
//! unchanged TOASTed values arrive as documented.

use serde_json::json;

use crate::common::{Fixture, LONG};

const SETUP: &str = r#"
create table plain (id int primary key, name text);
create table full_id (id int primary key, name text, note text);
alter table full_id replica identity full;
create table docs (id int primary key, small int, body text);
create table docs_full (id int primary key, small int, body text);
alter table docs_full replica identity full;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_deletes_and_truncate() {
    let f = Fixture::new(&["plain", "full_id"], SETUP).await;
    let db = f.client().await;
    let _sluice = f.start_streaming();
    let mut plain = f.reader("plain");
    let mut full = f.reader("full_id");
    // Wait until the stream is live: a first insert shows up.
    db.batch_execute("insert into plain values (1, 'a')")
        .await
        .expect("insert");
    plain.read_until(LONG, "first insert", |r| !r.is_empty());

    db.batch_execute(
        "update plain set name = 'b' where id = 1;
         update plain set id = 2 where id = 1;
         delete from plain where id = 2;
         insert into full_id values (1, 'x', 'n');
         update full_id set name = 'y' where id = 1;
         delete from full_id where id = 1;",
    )
    .await
    .expect("changes");
    // plain: c(1), u, d(1) + tombstone, c(2), d(2) + tombstone = 7 records.
    plain.read_until(LONG, "plain changes", |r| r.len() >= 7);
    full.read_until(LONG, "full_id changes", |r| r.len() >= 4);

    let ops: Vec<(String, Option<serde_json::Value>)> = plain
        .records
        .iter()
        .map(|r| match &r.value {
            Some(v) => (v["op"].as_str().unwrap_or("?").to_owned(), r.key.clone()),
            None => ("tombstone".to_owned(), r.key.clone()),
        })
        .collect();
    let k1 = Some(json!({"id": 1}));
    let k2 = Some(json!({"id": 2}));
    // Records are per partition; check each key's own sequence.
    let seq_of = |key: &Option<serde_json::Value>| -> Vec<String> {
        ops.iter()
            .filter(|(_, k)| k == key)
            .map(|(o, _)| o.clone())
            .collect()
    };
    assert_eq!(
        seq_of(&k1),
        vec!["c", "u", "d", "tombstone"],
        "history of key 1"
    );
    assert_eq!(seq_of(&k2), vec!["c", "d", "tombstone"], "history of key 2");

    let envs = plain.envelopes();
    let update = envs.iter().find(|e| e["op"] == "u").expect("update");
    assert_eq!(
        update["before"],
        json!(null),
        "DEFAULT identity sends no old row for a plain update"
    );
    assert_eq!(update["after"], json!({"id": 1, "name": "b"}));
    let key_delete = envs
        .iter()
        .find(|e| e["op"] == "d" && e["before"]["id"] == 1)
        .expect("delete of the old key");
    assert_eq!(
        key_delete["before"],
        json!({"id": 1}),
        "DEFAULT identity: old key only, other columns absent (not null)"
    );
    let moved = envs
        .iter()
        .find(|e| e["op"] == "c" && e["after"]["id"] == 2)
        .expect("create of the new key");
    assert_eq!(moved["after"], json!({"id": 2, "name": "b"}));
    let (p1, p2) = (
        key_delete["source"]["seq"].as_u64().unwrap_or(0),
        moved["source"]["seq"].as_u64().unwrap_or(0),
    );
    assert_eq!(
        key_delete["source"]["commit_lsn"],
        moved["source"]["commit_lsn"]
    );
    assert!(p1 < p2, "the delete of the old key comes first");

    let fenvs = full.envelopes();
    let fu = fenvs.iter().find(|e| e["op"] == "u").expect("full update");
    assert_eq!(fu["before"], json!({"id": 1, "name": "x", "note": "n"}));
    assert_eq!(fu["after"], json!({"id": 1, "name": "y", "note": "n"}));
    let fd = fenvs.iter().find(|e| e["op"] == "d").expect("full delete");
    assert_eq!(fd["before"], json!({"id": 1, "name": "y", "note": "n"}));

    // Truncate reaches every partition of the topic.
    db.batch_execute("insert into plain values (5, 'e'); truncate plain;")
        .await
        .expect("truncate");
    plain.read_until(LONG, "truncate on all 3 partitions", |r| {
        r.iter()
            .filter(|x| x.value.as_ref().is_some_and(|v| v["op"] == "t"))
            .count()
            >= 3
    });
    let mut parts: Vec<i32> = plain
        .records
        .iter()
        .filter(|x| x.value.as_ref().is_some_and(|v| v["op"] == "t"))
        .map(|x| x.partition)
        .collect();
    parts.sort();
    assert_eq!(parts, vec![0, 1, 2]);
    let t = plain
        .envelopes()
        .into_iter()
        .find(|e| e["op"] == "t")
        .cloned()
        .expect("truncate");
    assert_eq!(t["before"], json!(null));
    assert_eq!(t["after"], json!(null));
    assert_eq!(t["source"]["table"], "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_read_from_the_table() {
    let f = Fixture::new(&["docs", "docs_full"], SETUP).await;
    let db = f.client().await;
    // ~40 KB of incompressible text: stored out of line in the TOAST table.
    let big_sql =
        "(select string_agg(md5(random()::text || g::text), '') from generate_series(1, 1250) g)";
    db.batch_execute(&format!(
        "insert into docs values (1, 0, {big_sql}); insert into docs_full values (1, 0, {big_sql});"
    ))
    .await
    .expect("insert");
    let body: String = db
        .query_one("select body from docs where id = 1", &[])
        .await
        .expect("body")
        .get(0);
    let body_full: String = db
        .query_one("select body from docs_full where id = 1", &[])
        .await
        .expect("body")
        .get(0);
    let toasted: i64 = db
        .query_one(
            "select pg_column_size(body)::int8 from docs where id = 1",
            &[],
        )
        .await
        .expect("size")
        .get(0);
    assert!(
        toasted > 2000,
        "body is stored out of line ({toasted} bytes)"
    );
    let _sluice = f.start();
    let mut docs = f.reader("docs");
    let mut docs_full = f.reader("docs_full");
    docs.read_until(LONG, "snapshot of docs", |r| !r.is_empty());
    docs_full.read_until(LONG, "snapshot of docs_full", |r| !r.is_empty());
    assert_eq!(docs.envelopes()[0]["after"]["body"], json!(body));

    db.batch_execute(
        "update docs set small = 1 where id = 1; update docs_full set small = 1 where id = 1;",
    )
    .await
    .expect("update");
    docs.read_until(LONG, "docs update", |r| r.len() >= 2);
    docs_full.read_until(LONG, "docs_full update", |r| r.len() >= 2);

    // Postgres leaves the unchanged value out; capture reads it from the table, so the event
    // is whole even for a sink that never saw the row's insert (compacted away).
    let upd = docs.envelopes()[1].clone();
    assert_eq!(upd["op"], "u");
    assert_eq!(upd["after"]["small"], json!(1));
    assert_eq!(
        upd["after"]["body"],
        json!(body),
        "an unchanged TOASTed value is read from the table"
    );

    // A row deleted before capture reads it: the value stays absent, never null or stale.
    db.batch_execute(
        "begin; update docs set small = 2 where id = 1; delete from docs where id = 1; commit;",
    )
    .await
    .expect("update then delete");
    docs.read_until(LONG, "docs update + delete", |r| r.len() >= 4);
    let gone = docs.envelopes()[2].clone();
    assert_eq!(gone["op"], "u");
    assert_eq!(gone["after"]["small"], json!(2));
    let after = gone["after"].as_object().expect("after object");
    assert!(
        !after.contains_key("body"),
        "a value that cannot be read is absent, never null or stale: {after:?}"
    );

    // Under FULL identity the old row carries the value, so the event is complete.
    let upd_full = docs_full.envelopes()[1].clone();
    assert_eq!(upd_full["after"]["body"], json!(body_full));
    assert_eq!(upd_full["after"]["small"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_between_an_abandoned_postgres_snapshot_and_the_next_are_deleted() {
    // The Postgres twin of the MariaDB test in mysql_capture: a capture killed after its
    // snapshot reached Kafka but before its first checkpoint; rows deleted before it starts
    // again must leave the topic, though neither the new snapshot nor the stream has them.
    let f = Fixture::new(
        &["plain"],
        "create table plain (id int primary key, name text);
         insert into plain select g, 'n' || g from generate_series(1, 10) g;",
    )
    .await;
    let mut reader = f.abandon_first_snapshot(&[], || f.reader("plain"), 10);

    let db = f.client().await;
    db.batch_execute("delete from plain where id <= 3")
        .await
        .expect("delete");
    f.snapshot_again_without_rows_1_to_3(&[], &mut reader);
}
