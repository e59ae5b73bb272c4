//! The `users` workload the apply benchmarks share: an organisation directory's users.

use std::path::Path;
use std::time::Duration;

use sluice_test_support::bench::{config_head, run_only};
use sluice_test_support::PgCluster;

/// The partitions of the topic the users are captured into.
pub const PARTITIONS: i32 = 4;

/// Fills `users` with rows 1..=`rows`.
fn users_insert(rows: u64) -> String {
    format!(
        "insert into users select g, 'First' || g, 'Last' || g,
           case when g % 10 = 0 then null else 'u' || g || '@example.com' end,
           (array['ADMIN','TEACHER','INSTRUCTOR','STUDENT','STAFF'])[g % 5 + 1],
           case when g % 7 = 0 then 'INACTIVE' else 'ACTIVE' end, g % 1000
         from generate_series(1, {rows}) g"
    )
}

/// Fills `users` in `source`'s database `bench` with `rows` rows and runs `sluice --only
/// capture` (source `app`, [`PARTITIONS`] partitions, no tombstones, plus the `[kafka]` lines
/// `kafka`) in `dir` until its snapshot is checkpointed; returns the config it ran.
pub async fn capture_users(
    dir: &Path,
    brokers: &str,
    kafka: &str,
    source: &PgCluster,
    rows: u64,
) -> String {
    source
        .connect("bench")
        .await
        .batch_execute(&users_insert(rows))
        .await
        .expect("rows");
    let head = config_head(
        brokers,
        &format!("partitions = {PARTITIONS}\ntombstones = false\n{kafka}"),
        "app",
        &format!(
            "postgres = {}\ntables = [\"public.users\"]",
            source.sluice_connection("bench")
        ),
    );
    let sluice = Path::new(env!("CARGO_BIN_EXE_sluice"));
    let mut capture = run_only(sluice, dir, "capture", "capture", &head);
    let long = Duration::from_secs(600);
    capture.wait_snapshot_checkpointed(long);
    assert!(capture.stop(long).success());
    head
}
