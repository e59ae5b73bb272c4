//! A replication slot dropped behind Sluice's back is refused with the way out, and
//! `--resnapshot` takes that way: a new slot and a new snapshot, nothing silently skipped.

use std::path::Path;
use std::time::Duration;

use sluice_test_support::sluice::run_to_end;
use sluice_test_support::SluiceProcess;

use crate::common::{Fixture, LONG, SLUICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_is_refused_until_resnapshot() {
    let f = Fixture::new(
        &["t"],
        "create table t (id int primary key, v text); insert into t values (1, 'a'), (2, 'b');",
    )
    .await;
    let mut sluice = f.start_streaming();
    sluice.wait_log("checkpoint written", 1, LONG);
    assert!(sluice.stop(LONG).success(), "{}", sluice.log_text());

    let db = f.client().await;
    db.batch_execute(
        "select pg_drop_replication_slot('sluice_app'); insert into t values (3, 'c');",
    )
    .await
    .expect("drop slot");

    let config = f.config.to_str().expect("utf-8 path");
    let (status, _, err) = run_to_end(
        Path::new(SLUICE),
        &["run", "--config", config],
        Duration::from_secs(90),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("replication slot sluice_app is missing"),
        "{err}"
    );
    assert!(err.contains("--resnapshot app"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let mut sluice = SluiceProcess::run(
        Path::new(SLUICE),
        &f.config,
        &["--resnapshot", "app"],
        &f.log_path(),
    );
    sluice.wait_log("replication stream started", 2, LONG);
    let mut reader = f.reader("t");
    // Two snapshots: the first of rows 1-2, the second of rows 1-3.
    reader.read_until(LONG, "both snapshots", |r| {
        r.iter()
            .filter(|x| x.value.as_ref().is_some_and(|v| v["op"] == "r"))
            .count()
            >= 5
    });
    db.batch_execute("insert into t values (4, 'd')")
        .await
        .expect("insert");
    reader.read_until(LONG, "the streamed insert", |r| {
        r.iter().any(|x| {
            x.value
                .as_ref()
                .is_some_and(|v| v["op"] == "c" && v["after"]["id"] == 4)
        })
    });
    assert!(sluice.stop(LONG).success(), "{}", sluice.log_text());
    let second: Vec<i64> = reader
        .envelopes()
        .iter()
        .filter(|v| v["op"] == "r" && v["after"]["id"] == 3)
        .map(|v| v["after"]["id"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(
        second,
        vec![3],
        "the row written while no slot existed comes with the new snapshot"
    );
}
