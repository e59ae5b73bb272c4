//! Rows written before, during and after the initial snapshot each appear exactly once, and
//! replaying each key's events reproduces the source table: no gap, no overlap.

use std::collections::BTreeMap;

use sluice_test_support::wait_for;

use crate::common::{id_of, int_pairs, read_through_marker, Fixture, PacedWriter, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_has_no_gap_and_no_overlap() {
    let f = Fixture::new(
        &["items"],
        "create table items (id int primary key, v int not null);
         insert into items select g, 0 from generate_series(1, 30000) g;",
    )
    .await;

    // A writer that runs before, during and after the snapshot: inserts new rows and bumps
    // existing ones.
    let writer = PacedWriter::start(f.client().await, |n| {
        let next = 100_000 + n;
        format!(
            "insert into items values ({next}, 0); update items set v = v + 1 where id = {};",
            (next % 30000) + 1
        )
    });
    // Let the writer get going before the slot exists.
    let db = f.client().await;
    crate::common::wait_rows(&db, "select count(*) from items where id >= 100000", 50).await;
    let mut sluice = f.start();
    let log = f.log_path();
    wait_for("the stream to start", LONG, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("replication stream started").then_some(())
    })
    .await;
    // Keep writing for a while after the handover, then stop.
    let at_handover = writer.count();
    wait_for("writes after the handover", LONG, || async {
        (writer.count() >= at_handover + 300).then_some(())
    })
    .await;
    let writes = writer.stop().await;
    let mut reader = f.reader("items");
    read_through_marker(
        &db,
        "insert into items values (-1, -1)",
        &mut reader,
        &mut sluice,
    )
    .await;

    let envs = reader.envelopes();
    let snapshot_rows = envs.iter().filter(|e| e["op"] == "r").count();
    println!(
        "writer made {writes} write pairs; {snapshot_rows} snapshot rows; {} events",
        envs.len()
    );
    assert!(snapshot_rows >= 30000);

    // Each id is created exactly once (by the snapshot or by a streamed insert).
    let mut created: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &envs {
        if e["op"] == "r" || e["op"] == "c" {
            *created.entry(id_of(e)).or_default() += 1;
        }
    }
    let dup: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "rows created twice (overlap): {:?}",
        &dup[..dup.len().min(10)]
    );

    // Replaying events per key gives the source's final state (no gap).
    let mut state: BTreeMap<i64, i64> = BTreeMap::new();
    for e in &envs {
        let id = id_of(e);
        match e["op"].as_str() {
            Some("r" | "c" | "u") => {
                state.insert(id, e["after"]["v"].as_i64().expect("v"));
            }
            Some("d") => {
                state.remove(&id);
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    let source = int_pairs(&db, "select id::int8, v::int8 from items").await;
    assert_eq!(state.len(), source.len(), "row counts differ");
    assert!(
        state == source,
        "replayed events differ from the source table"
    );
}
