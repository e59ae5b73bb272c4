//! With no changes to captured tables, the slot's confirmed_flush_lsn keeps advancing, so an
//! idle source retains no WAL and a fast shutdown of Postgres does not wait on Sluice.

use std::time::Duration;

use crate::common::{Fixture, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_keeps_advancing() {
    let f = Fixture::new(
        &["quiet"],
        "create table quiet (id int primary key); create table busy (id serial primary key, pad text);",
    )
    .await;
    let db = f.client().await;
    let mut sluice = f.start();
    let start = sluice_test_support::wait_for("the slot", LONG, || slot_lsn(&db)).await;
    // WAL grows through tables Sluice does not capture.
    db.batch_execute(
        "insert into busy (pad) select repeat('x', 100) from generate_series(1, 2000)",
    )
    .await
    .expect("unrelated writes");
    // The insert position, not the write position: the test cluster commits asynchronously,
    // so the write position can still be where it was before the inserts.
    let wal_now: i64 = db
        .query_one(
            "select (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await
        .expect("wal lsn")
        .get(0);
    assert!(wal_now > start);
    let reached = sluice_test_support::wait_for(
        "confirmed_flush_lsn to pass the unrelated writes",
        Duration::from_secs(90),
        || async {
            let l = slot_lsn(&db).await?;
            (l >= wal_now).then_some(l)
        },
    )
    .await;
    println!("confirmed_flush_lsn moved from {start} to {reached} with no captured change");
    let status = sluice.stop(LONG);
    assert!(status.success(), "{}", sluice.log_text());
}

async fn slot_lsn(db: &tokio_postgres::Client) -> Option<i64> {
    db.query_opt(
        "select (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 from pg_replication_slots where slot_name = 'sluice_app'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .and_then(|r| r.get::<_, Option<i64>>(0))
}
