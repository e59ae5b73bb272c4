//! MariaDB and MySQL 8 binlog capture throughput, next to `mariadb-binlog
//! --read-from-remote-server --raw` reading the same binlog and Debezium 3.6.1 decoding it, in
//! the same run.
//!
//! `cargo bench --bench capture_mysql` (release build). For each server in `BENCH_SERVERS`
//! (`mariadb,mysql8` by default; MySQL 8 is the `mysqld` `scripts/deps.sh` unpacks) it:
//! 1. starts Sluice once on the empty table (snapshot, stream start, checkpoint) and stops it,
//!    and records the binlog position (`show master status`);
//! 2. writes the workload: `BENCH_ROWS` row changes (default 1000000), 80% as multi-row
//!    inserts (10k rows per statement and transaction), 20% as single-row updates (one
//!    transaction each);
//! 3. times `mariadb-binlog --read-from-remote-server --raw --to-last-log` copying the binlog
//!    (the server's own replication read, no decoding), and its CPU. MySQL 8: the unpacked
//!    MySQL has no `mysqlbinlog`, so this read is done only if `bin/mysqlbinlog` is there;
//! 4. starts Sluice and times it from its stream start until every change is in Kafka;
//! 5. reads Sluice's CPU time and peak RSS from /proc;
//! 6. runs Debezium's MySQL connector (embedded engine) from the position of step 1 and
//!    times it from its first change record to the last. Maven Central has no
//!    `debezium-connector-mariadb` 3.6.1.Final, so MariaDB is tried with the MySQL connector,
//!    which refuses MariaDB 10.11 (it reads version 10 as a MySQL newer than 8.4 and sends
//!    `SHOW BINARY LOG STATUS`): that side reports the failure and the run goes on. See
//!    benches/debezium/DebeziumDrain.java; `BENCH_DEBEZIUM=0` leaves Debezium out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_test_support::bench::{capture_config, env_number, first_checkpoint, print_table_head};
use sluice_test_support::{mariadb::mysql8_home, process, Broker, Flavor, MariaDb, SluiceProcess};

#[path = "debezium/drain.rs"]
mod debezium;
use debezium::Debezium;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Wall and CPU seconds of `mariadb-binlog` (or MySQL's `mysqlbinlog`, same options) reading
/// every binlog file from the server.
fn mariadb_binlog(reader: &Path, db: &MariaDb, first_file: &str, out: &Path) -> (f64, f64) {
    let t = Instant::now();
    let child = Command::new(reader)
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
        .unwrap_or_else(|e| panic!("{}: {e}", reader.display()));
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
            assert!(status.success(), "{} failed", reader.display());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (t.elapsed().as_secs_f64(), cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = env_number("BENCH_ROWS", 1_000_000);
    let asked = std::env::var("BENCH_SERVERS").ok();
    let mut servers = Vec::new();
    for name in asked.as_deref().unwrap_or("mariadb,mysql8").split(',') {
        match name.trim() {
            "mariadb" => servers.push(Flavor::MariaDb),
            "mysql8" | "mysql" => {
                let mysqld = mysql8_home().join("bin/mysqld");
                if mysqld.is_file() {
                    servers.push(Flavor::MySql8);
                } else if asked.is_some() {
                    panic!(
                        "BENCH_SERVERS names mysql8, but {} is missing: run scripts/deps.sh",
                        mysqld.display()
                    );
                } else {
                    println!(
                        "MySQL 8 left out: {} is missing (run scripts/deps.sh)",
                        mysqld.display()
                    );
                }
            }
            "" => {}
            other => panic!("BENCH_SERVERS: unknown server {other:?} (mariadb, mysql8)"),
        }
    }
    let dbz = Debezium::prepare();
    for flavor in servers {
        run_server(flavor, rows, dbz.as_ref());
    }
}

fn run_server(flavor: Flavor, rows: u64, dbz: Option<&Debezium>) {
    let label = match flavor {
        Flavor::MariaDb => "MariaDB",
        Flavor::MySql8 => "MySQL 8",
    };
    let inserts = rows / 10 * 8 / 10_000 * 10_000;
    let updates = rows - inserts;
    let options = ["--innodb-buffer-pool-size=1G", "--sync-binlog=0"];
    let db = match flavor {
        Flavor::MariaDb => MariaDb::start_with(&options),
        Flavor::MySql8 => MariaDb::start_mysql8_with(&options),
    };
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
    if flavor == Flavor::MySql8 {
        // MariaDB's sequence engine gives `seq_1_to_10000`; MySQL gets a table of that name,
        // written before the position every reader starts from.
        db.execute(
            Some("bench"),
            "create table seq_1_to_10000 (seq int primary key);
             set session cte_max_recursion_depth = 10000;
             insert into seq_1_to_10000
               with recursive s (n) as (select 1 union all select n + 1 from s where n < 10000)
               select n from s;",
        );
    }
    let broker = Broker::start();
    let connection = db.sluice_connection("bench");
    let head = capture_config(&broker.brokers(), "mysql", &connection, "\"bench\"");

    // 1. Sluice's snapshot of the empty table and its first checkpoint.
    let (dir, config, log) = first_checkpoint(Path::new(SLUICE), "bench-mysql", &head);
    let first_file = db
        .query("bench", "show binary logs")
        .first()
        .and_then(|l| l.split('\t').next().map(str::to_owned))
        .expect("a binlog file");
    // Where the workload starts: Debezium's start position.
    let status = db.query("bench", "show master status");
    let mut position = status.first().expect("show master status").split('\t');
    let (start_file, start_pos) = (
        position.next().expect("binlog file").to_owned(),
        position.next().expect("binlog position").to_owned(),
    );
    // MySQL with GTIDs on: Debezium then asks for the transactions not in this set (a file and
    // position alone make it fail), the same point as the file and position.
    let start_gtids = position.nth(2).unwrap_or_default().trim().to_owned();

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

    // 3. mariadb-binlog (MySQL 8: its own mysqlbinlog, where there is one) copies the same
    //    binlog.
    let reader = match flavor {
        Flavor::MariaDb => Some(PathBuf::from("mariadb-binlog")),
        Flavor::MySql8 => Some(mysql8_home().join("bin/mysqlbinlog")).filter(|p| p.is_file()),
    };
    let raw_read = reader.map(|reader| {
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(&raw).expect("raw dir");
        let (s, cpu) = mariadb_binlog(&reader, &db, &first_file, &raw);
        (reader, s, cpu)
    });

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

    // 5. Debezium reads the same binlog from the position before the workload.
    let debezium_tried = dbz.is_some();
    let dbz = dbz.and_then(|d| {
        let props = [
            (
                "connector.class",
                "io.debezium.connector.mysql.MySqlConnector".into(),
            ),
            ("database.port", db.port().to_string()),
            ("database.user", "root".into()),
            ("database.password", "".into()),
            ("database.server.id", "184054".into()),
            ("database.include.list", "bench".into()),
            ("table.include.list", "bench.bench".into()),
            (
                "schema.history.internal",
                "io.debezium.relational.history.MemorySchemaHistory".into(),
            ),
            // An offset but no schema history: rebuild the history from the tables (no data),
            // then stream from the offset.
            ("snapshot.mode", "recovery".into()),
            ("drain.seed.partition.server", "dbz".into()),
            ("drain.seed.offset.file", start_file.clone()),
            ("drain.seed.offset.pos", start_pos.clone()),
        ]
        .into_iter()
        .chain((!start_gtids.is_empty()).then(|| ("drain.seed.offset.gtids", start_gtids.clone())))
        .collect::<Vec<_>>();
        match d.drain(
            &props,
            rows,
            "dbz.bench.bench",
            dir.path(),
            Duration::from_secs(1800),
        ) {
            Ok(f) => Some(f),
            Err(why) => {
                println!("[{label}] debezium failed: {why}");
                if flavor == Flavor::MariaDb {
                    println!("[{label}] (Debezium 3.x reads MariaDB with debezium-connector-mariadb, which Maven Central does not serve at {}; its MySQL connector is used instead)", debezium::VERSION);
                }
                None
            }
        }
    });

    if flavor == Flavor::MySql8 {
        println!();
        println!(
            "== MySQL {} ==",
            sluice_test_support::mariadb::MYSQL8_VERSION
        );
    }
    println!("wrote {inserts} inserted rows (10k per statement) and {updates} single-row updates in {write_s:.1}s");
    let sluice_rate = rows as f64 / run.seconds;
    let sluice_cpu_us = run.cpu_seconds * 1e6 / rows as f64;
    if let Some(d) = &dbz {
        println!("[{label}] {}", d.describe());
        println!(
            "[{label}] {}",
            debezium::compare(sluice_rate, sluice_cpu_us, rss, d)
        );
    }
    println!();
    println!(
        "{label} capture benchmark (broker: Apache Kafka; this machine, all services co-located)"
    );
    print_table_head(&[
        "reader",
        "row changes",
        "seconds",
        "rows/s",
        "CPU s",
        "CPU µs/row",
        "peak RSS MB",
    ]);
    match &raw_read {
        Some((reader, reader_s, reader_cpu)) => println!(
            "| {} --raw (copy, no decoding) | {rows} | {reader_s:.2} | {:.0} | {reader_cpu:.2} | {:.2} | |",
            reader.file_name().and_then(|n| n.to_str()).unwrap_or("mysqlbinlog"),
            rows as f64 / reader_s,
            reader_cpu * 1e6 / rows as f64
        ),
        None => println!(
            "| mysqlbinlog --raw | {rows} | not run: no mysqlbinlog in {} | | | | |",
            mysql8_home().join("bin").display()
        ),
    }
    println!(
        "| sluice (decode, envelope, Kafka confirmed) | {rows} | {:.2} | {sluice_rate:.0} | {:.2} | {sluice_cpu_us:.2} | {rss:.0} |",
        run.seconds,
        run.cpu_seconds,
    );
    if dbz.is_none() && debezium_tried {
        println!(
            "| debezium {} | {rows} | failed (see above) | | | | |",
            debezium::VERSION
        );
    }
    if let Some(d) = &dbz {
        println!(
            "| debezium {} (decode, JSON, no Kafka; first → last record) | {rows} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} |",
            debezium::VERSION,
            d.stream_s(),
            d.rows_per_s(),
            d.cpu_s - d.cpu_first_s,
            d.cpu_us_per_row(),
            d.peak_rss_mb
        );
        println!(
            "| debezium {} from process start (JVM start-up {:.2}s, first record after {:.2}s) | {rows} | {:.2} | {:.0} | {:.2} | {:.2} | |",
            debezium::VERSION,
            d.jvm_startup_s(),
            d.to_first_record_s(),
            d.total_s(),
            d.rows_per_s_from_start(),
            d.cpu_s,
            d.cpu_us_per_row_total()
        );
    }
}
