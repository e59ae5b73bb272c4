//! Misconfiguration is explained, one line per problem naming the fix, with a non-zero exit
//! and never a panic.

use std::path::Path;
use std::time::Duration;

use sluice_test_support::sluice::run_to_end;
use sluice_test_support::{free_port, PgCluster, TempDir};

use crate::common::{assert_refused, Fixture, SLUICE};

const T: Duration = Duration::from_secs(90);

fn sluice(args: &[&str]) -> (i32, String) {
    let (status, out, err) = run_to_end(Path::new(SLUICE), args, T);
    let text = format!("{out}{err}");
    assert!(!text.contains("panicked"), "sluice panicked: {text}");
    (status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_explained() {
    let pg = PgCluster::start_with(&[("wal_level", "replica")]);
    let f = Fixture::with_pg(pg, &["t"], "create table t (id int primary key)").await;
    let config = f.config.to_str().expect("utf-8 path");
    let (code, text) = sluice(&["check", "--config", config]);
    assert_refused(
        code,
        &text,
        &["wal_level is \"replica\"", "set wal_level = logical"],
    );
    let (code, text) = sluice(&["run", "--config", config]);
    assert_refused(code, &text, &["wal_level", "nothing was started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_keyless_table_and_unreachable_broker() {
    let f = Fixture::new(
        &["present", "missing", "keyless"],
        "create table present (id int primary key); create table keyless (a int, b text);",
    )
    .await;
    let config = f.config.to_str().expect("utf-8 path");
    let (code, text) = sluice(&["check", "--config", config]);
    assert_refused(
        code,
        &text,
        &[
            "table public.missing does not exist",
            "public.keyless has no primary key",
            "add a primary key",
        ],
    );
    // Nothing was added to a publication for the keyless table.
    let db = f.client().await;
    let published: i64 = db
        .query_one(
            "select count(*) from pg_publication_tables where tablename = 'keyless'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(published, 0);

    // Same source, only the good table, but a broker nobody listens on: `check` fails at once
    // (`run` waits for it: see promise::run_waits_for_a_broker_that_is_not_up_yet).
    let dir = TempDir::new("bad-broker");
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[sources.app]\npostgres = {}\ntables = [\"present\"]\n",
            free_port(),
            f.source.sluice_connection("app")
        ),
    )
    .expect("write config");
    let (code, text) = sluice(&["check", "--config", cfg.to_str().expect("utf-8")]);
    assert_refused(
        code,
        &text,
        &["cannot reach the brokers", "check kafka.brokers"],
    );
}

#[test]
fn malformed_configs_name_the_field() {
    let dir = TempDir::new("bad-config");
    let cases = [
        (
            "[kafka]\nbrokers = \"x:1\"\n[sources.app]\npostgres = { hots = \"h\", user = \"u\", database = \"d\" }\ntables = [\"t\"]\n",
            "sources.app.postgres",
        ),
        ("[kafka]\nbrokers = \"x:1\"\n[sources.app\n", "expected"),
        (
            "[kafka]\nbrokers = \"x:1\"\npartitions = 0\n[sources.App]\npostgres = { user = \"u\", database = \"d\" }\ntables = []\n",
            "kafka.partitions",
        ),
        ("[kafka]\nbrokers = \"x:1\"\nsnapshot = 1\n", "kafka"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let (code, out) = sluice(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 2, "case {i}: {out}");
        assert!(
            out.contains(needle),
            "case {i}: expected {needle:?} in: {out}"
        );
        assert!(out.starts_with("error: config file"), "case {i}: {out}");
    }
    let (code, out) = sluice(&["check", "--config", "/nonexistent/sluice.toml"]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot read config file"), "{out}");
    // The third case reports every invalid field at once.
    let path = dir.path().join("c2.toml");
    let (_, out) = sluice(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(out.contains("sources.App"), "{out}");
    assert!(out.contains("sources.App.tables is empty"), "{out}");
}
