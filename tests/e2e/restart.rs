//! Graceful stops and `kill -9` mid-stream lose nothing: afterwards every change is in Kafka in
//! commit order per key, and none twice: capture resumes from its checkpoint but does not publish
//! again what a partition holds already (a compacted topic could otherwise keep only the
//! duplicate, which apply would skip).

use std::collections::{BTreeMap, HashSet};

use crate::common::{id_of, int_pairs, read_through_marker, Fixture, PacedWriter, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_restarts_lose_nothing() {
    let f = Fixture::new(
        &["counters"],
        "create table counters (id int primary key, version int not null);
         insert into counters select g, 0 from generate_series(1, 50) g;",
    )
    .await;
    let writer = PacedWriter::start(f.client().await, |n| {
        format!(
            "update counters set version = version + 1 where id = {}",
            (n * 7919 % 50) + 1
        )
    });
    let mut sluice = f.start();
    let mut reader = f.reader("counters");
    let mut kills = 0;
    let started = "replication stream started";
    let checkpointed = "checkpoint written";
    for round in 0..6 {
        // Each run streams and checkpoints before it is stopped.
        sluice.wait_log(started, round + 1, LONG);
        let before = sluice.log_text().matches(checkpointed).count();
        sluice.wait_log(checkpointed, before + 2, LONG);
        if round == 3 {
            let status = sluice.stop(LONG);
            assert!(
                status.success(),
                "graceful stop exits 0: {status:?}\n{}",
                sluice.log_text()
            );
        } else {
            sluice.kill9();
            kills += 1;
        }
        sluice = f.start();
    }
    let updates = writer.stop().await;
    let db = f.client().await;
    sluice.wait_log(started, 7, LONG);
    let marker = "insert into counters values (-1, 0)";
    read_through_marker(&db, marker, &mut reader, &mut sluice).await;

    // First occurrence of each position, in per-partition (per-key) order.
    let mut positions = HashSet::new();
    let mut duplicates = 0usize;
    let mut history: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for env in reader.envelopes() {
        let pos = (
            env["source"]["commit_lsn"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            env["source"]["seq"].as_u64().unwrap_or_default(),
        );
        if !positions.insert(pos) {
            duplicates += 1;
            continue;
        }
        history
            .entry(id_of(env))
            .or_default()
            .push(env["after"]["version"].as_i64().expect("version"));
    }
    let finals = int_pairs(&db, "select id::int8, version::int8 from counters").await;
    for (id, final_version) in &finals {
        let h = history
            .get(id)
            .unwrap_or_else(|| panic!("no events for key {id}"));
        // The snapshot may start at any version (the writer runs before the slot exists);
        // from there every version appears once, in commit order.
        let expected: Vec<i64> = (h[0]..=*final_version).collect();
        if h != &expected {
            let raw: Vec<String> = reader
                .records
                .iter()
                .filter_map(|r| r.value.as_ref().map(|v| (r, v)))
                .filter(|(_, v)| id_of(v) == *id)
                .map(|(r, v)| {
                    format!(
                        "{}@{}/{}:{}#{}",
                        v["after"]["version"],
                        r.partition,
                        r.offset,
                        v["source"]["commit_lsn"],
                        v["source"]["seq"]
                    )
                })
                .collect();
            let at = h.windows(2).position(|w| w[1] != w[0] + 1).unwrap_or(0);
            let around = &raw[at.saturating_sub(5)..(at + 6).min(raw.len())];
            panic!("key {id}: every version once, in commit order; broken after index {at} of {h:?}\naround it: {}", around.join(" "));
        }
    }
    // The reader saw every offset of every partition (so a hole above is Sluice's, not the reader's).
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &reader.records {
        offsets.entry(r.partition).or_default().push(r.offset);
    }
    for (p, mut o) in offsets {
        o.sort_unstable();
        o.dedup();
        assert!(
            o.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p}: the reader skipped offsets"
        );
    }
    println!(
        "{updates} updates, {kills} kill -9 and 1 graceful restart: {} distinct events, {duplicates} re-published duplicates",
        positions.len()
    );
    assert_eq!(duplicates, 0, "changes published twice");
}
