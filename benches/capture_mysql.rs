//! MariaDB binlog capture throughput, next to `mariadb-binlog --read-from-remote-server --raw`
//! reading the same binlog in the same run.
//!
//! `cargo bench --bench capture_mysql` (release build). It:
//! 1. starts Sluice once on the empty table (snapshot, stream start, checkpoint) and stops it;
//! 2. writes the workload: `BENCH_ROWS` row changes (default 1000000), 80% as multi-row
//!    inserts (10k rows per statement and transaction), 20% as single-row updates (one
//!    transaction each);
//! 3. times `mariadb-binlog --read-from-remote-server --raw --to-last-log` copying the binlog
//!    (the server's own replication read, no decoding), and its CPU;
//! 4. starts Sluice and times it from its stream start until every change is in Kafka;
//! 5. reads Sluice's CPU time and peak RSS from /proc.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_test_support::{process, Broker, MariaDb, SluiceProcess, TempDir};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Wall and CPU seconds of `mariadb-binlog` reading every binlog file from the server.
fn mariadb_binlog(db: &MariaDb, first_file: &str, out: &Path) -> (f64, f64) {
    let t = Instant::now();
    let child = Command::new("mariadb-binlog")
        .args([
            "--no-defaults",
            "--read-from-remote-server",
            "--raw",
            "--to-last-log",
            "--host=127.0.0.1",
            &format!("--port={}", db.port()),
            "--user=root",
            &format!("--result-file={}/", out.display()),
            first_file,
        ])
        .spawn()
        .expect("mariadb-binlog");
    let pid = child.id();
    let mut child = child;
    // Sample its CPU until it exits (a zombie keeps its /proc/<pid>/stat until reaped).
    let mut cpu = 0.0;
    loop {
        let now = process::cpu_seconds(pid);
        if now > cpu {
            cpu = now;
        }
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "mariadb-binlog failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (t.elapsed().as_secs_f64(), cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let inserts = rows / 10 * 8 / 10_000 * 10_000;
    let updates = rows - inserts;
    let db = MariaDb::start_with(&["--innodb-buffer-pool-size=1G", "--sync-binlog=0"]);
    db.execute(None, "create database bench");
    db.execute(
        Some("bench"),
        "create table bench (id bigint primary key, name varchar(64), at datetime(6),
           amount decimal(12,2), flag tinyint);
         delimiter //
         create procedure single_row_updates(n int)
         begin
           declare i int default 0;
           while i < n do
             update bench set amount = amount + 1, at = now(6) where id = i + 1;
             set i = i + 1;
           end while;
         end //
         delimiter ;",
    );
    let broker = Broker::start();
    let dir = TempDir::new("bench-mysql");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\npartitions = 3\ntombstones = false\n\n[sources.bench]\nmysql = {}\ntables = [\"bench\"]\ncheckpoint_interval_ms = 100\n",
            broker.brokers(),
            db.sluice_connection("bench")
        ),
    )
    .expect("config");
    let log = dir.path().join("sluice.log");

    // 1. Sluice's snapshot of the empty table and its first checkpoint.
    let mut sluice = SluiceProcess::run(Path::new(SLUICE), &config, &[], &log);
    sluice.wait_log("binlog stream started", 1, Duration::from_secs(60));
    sluice.wait_log("checkpoint written", 1, Duration::from_secs(60));
    assert!(sluice.stop(Duration::from_secs(60)).success());
    let first_file = db
        .query("bench", "show binary logs")
        .first()
        .and_then(|l| l.split('\t').next().map(str::to_owned))
        .expect("a binlog file");

    // 2. The workload.
    let t = Instant::now();
    let mut sql = String::new();
    for chunk in 0..inserts / 10_000 {
        sql.push_str(&format!(
            "insert into bench select {base} + seq, md5(seq), now(6), seq * 1.5, seq % 2
               from seq_1_to_10000;\n",
            base = chunk * 10_000
        ));
    }
    sql.push_str(&format!("call single_row_updates({updates});"));
    db.execute(Some("bench"), &sql);
    let write_s = t.elapsed().as_secs_f64();

    // 3. mariadb-binlog copies the same binlog.
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).expect("raw dir");
    let (reader_s, reader_cpu) = mariadb_binlog(&db, &first_file, &raw);

    // 4. Sluice publishes it into Kafka.
    let mut sluice = SluiceProcess::run(Path::new(SLUICE), &config, &[], &log);
    let pid = sluice.pid();
    let run = process::time_publish(
        &log,
        "binlog stream started",
        1,
        rows,
        pid,
        Duration::from_secs(1800),
    );
    let rss = process::peak_rss_mb(pid);
    assert!(sluice.stop(Duration::from_secs(60)).success());

    println!("wrote {inserts} inserted rows (10k per statement) and {updates} single-row updates in {write_s:.1}s");
    println!();
    println!(
        "MariaDB capture benchmark (broker: Apache Kafka; this machine, all services co-located)"
    );
    println!("| reader | row changes | seconds | rows/s | CPU s | CPU µs/row | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| mariadb-binlog --raw (copy, no decoding) | {rows} | {reader_s:.2} | {:.0} | {reader_cpu:.2} | {:.2} | |",
        rows as f64 / reader_s,
        reader_cpu * 1e6 / rows as f64
    );
    println!(
        "| sluice (decode, envelope, Kafka confirmed) | {rows} | {:.2} | {:.0} | {:.2} | {:.2} | {rss:.0} |",
        run.seconds,
        rows as f64 / run.seconds,
        run.cpu_seconds,
        run.cpu_seconds * 1e6 / rows as f64
    );
}
