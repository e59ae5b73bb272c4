//! The `users` workload the apply benchmarks share: an organisation directory's users.

/// Fills `users` (see [`USERS_COLUMNS`]) with rows 1..=`rows`.
pub fn users_insert(rows: u64) -> String {
    format!(
        "insert into users select g, 'First' || g, 'Last' || g,
           case when g % 10 = 0 then null else 'u' || g || '@example.com' end,
           (array['ADMIN','TEACHER','INSTRUCTOR','STUDENT','STAFF'])[g % 5 + 1],
           case when g % 7 = 0 then 'INACTIVE' else 'ACTIVE' end, g % 1000
         from generate_series(1, {rows}) g"
    )
}

/// Runs `sluice --only capture` with `config` in `dir` until its snapshot is checkpointed (every
/// row in the topic), then stops it.
pub fn capture_once(sluice: &std::path::Path, dir: &std::path::Path, config: &str) {
    let path = dir.join("capture.toml");
    std::fs::write(&path, config).expect("capture config");
    let mut capture = sluice_test_support::SluiceProcess::run(
        sluice,
        &path,
        &["--only", "capture"],
        &dir.join("capture.log"),
    );
    let long = std::time::Duration::from_secs(600);
    capture.wait_snapshot_checkpointed(long);
    assert!(capture.stop(long).success());
}
