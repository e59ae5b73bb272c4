//! Capture throughput, next to `pg_recvlogical` draining the same WAL in the same run.
//!
//! `cargo bench --bench capture` (release build). For each workload it:
//! 1. lets Sluice create its slot and stops it, and creates a second slot for pg_recvlogical;
//! 2. writes the workload (WAL now waits in both slots);
//! 3. times `pg_recvlogical --endpos` draining its slot (the source's own limit);
//! 4. starts Sluice and times it until every row is in Kafka (summed high watermarks);
//! 5. reads Sluice's CPU time and peak RSS from /proc;
//! 6. runs Debezium 3.6.1 (embedded engine, pgoutput) over a third slot, `dbz`, created with
//!    pg_recvlogical's before the workload, and times it from its first change record to the
//!    last (its CPU time and peak RSS are printed by the JVM itself), then drains the second
//!    pg_recvlogical slot. See benches/debezium/DebeziumDrain.java for the method;
//!    `BENCH_DEBEZIUM=0` leaves Debezium out.
//!
//! Workloads: 1M rows in 10k-row transactions; 100k single-row transactions; 50k rows with a
//! 3.2 KB out-of-line (TOASTed) text, each then updated once without touching it (Postgres
//! leaves the value out and capture reads it back from the table: the cost of that read).
//! `BENCH_ROWS` scales them (default 1000000; the others are 1/10 and 1/20 of it). Then the first
//! workload again, plaintext and over TLS (Postgres `verify-full`, Kafka mutual TLS), back to
//! back: TLS's cost (`BENCH_TLS=0` skips it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_test_support::bench::{
    capture_config, capture_config_with, env_flag, env_number, first_checkpoint, print_table_head,
    BenchTls,
};
use sluice_test_support::{process, Broker, PgCluster, SluiceProcess};

#[path = "debezium/drain.rs"]
mod debezium;
use debezium::Debezium;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

struct Figures {
    rows: u64,
    recvlogical_s: f64,
    sluice_s: f64,
    cpu_us_per_row: f64,
    peak_rss_mb: f64,
    debezium: Option<debezium::Drain>,
}

/// Times pg_recvlogical draining `slot` up to `end_lsn`.
fn recvlogical(pg: &PgCluster, slot: &str, end_lsn: &str) -> f64 {
    let t = Instant::now();
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_recvlogical",
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "bench",
        ])
        .args([
            "--slot",
            slot,
            "--start",
            "--endpos",
            end_lsn,
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=sluice_bench",
            "--no-loop",
        ])
        .status()
        .expect("pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    t.elapsed().as_secs_f64()
}

/// `tls`: Postgres with `sslmode = "verify-full"` and Kafka over mutual TLS.
async fn run_workload(
    name: &str,
    engine: &str,
    workload_sql: &str,
    rows: u64,
    dbz: Option<&Debezium>,
    tls: Option<&BenchTls>,
) -> Figures {
    let mut settings: Vec<(&str, String)> = vec![
        ("shared_buffers", "512MB".into()),
        ("max_wal_size", "4GB".into()),
        ("wal_writer_delay", "10ms".into()),
    ];
    settings.extend(tls.map(BenchTls::pg_settings).unwrap_or_default());
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let pg = PgCluster::start_with(&settings);
    let broker = match tls {
        Some(tls) => tls.broker(),
        None => Broker::start(),
    };
    pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    db.batch_execute(
        "create table bench (id bigint primary key, name text, at timestamptz, amount numeric(12,2), flag bool,
                             doc text);
         alter table bench alter column doc set storage external;
         create procedure single_row_txns(n int) language plpgsql as $$
         begin
           for i in 1..n loop
             insert into bench values (10000000 + i, md5(i::text), now(), i * 1.5, i % 2 = 0);
             commit;
           end loop;
         end $$;",
    )
    .await
    .expect("schema");
    let connection = pg.sluice_connection("bench");
    let head = match tls {
        Some(tls) => capture_config_with(
            &broker.ssl_brokers(),
            &tls.kafka_section(),
            "postgres",
            &tls.verify_full(&connection),
            "\"public.bench\"",
        ),
        None => capture_config(
            &broker.brokers(),
            "postgres",
            &connection,
            "\"public.bench\"",
        ),
    };

    // 1. Sluice's slot (empty snapshot), then pg_recvlogical's slot.
    let (dir, config, log) = first_checkpoint(Path::new(SLUICE), "bench", &head);
    // Two pg_recvlogical slots: one drained before Sluice runs (cold) and one after (warm), so
    // the order of the runs does not favour either side.
    db.batch_execute(
        "select pg_create_logical_replication_slot('recv_before', 'pgoutput');
         select pg_create_logical_replication_slot('recv_after', 'pgoutput');",
    )
    .await
    .expect("pg_recvlogical slots");
    // Debezium's slot, holding the same WAL.
    if dbz.is_some() {
        db.batch_execute("select pg_create_logical_replication_slot('dbz', 'pgoutput');")
            .await
            .expect("debezium slot");
    }

    // 2. The workload.
    let t = Instant::now();
    db.batch_execute(workload_sql).await.expect("workload");
    let write_s = t.elapsed().as_secs_f64();
    let end_lsn: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);

    // 3. pg_recvlogical drains the same WAL.
    let recv_before_s = recvlogical(&pg, "recv_before", &end_lsn);

    // 4. Sluice drains it into Kafka. Its checkpoint lines say how many events Kafka has
    //    confirmed; time runs from its stream start to the line that covers every row.
    let runs_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("replication stream started")
        .count();
    let mut sluice = SluiceProcess::run(Path::new(SLUICE), &config, &[], &log);
    let pid = sluice.pid();
    // BENCH_PERF=FILE records a CPU profile of Sluice for this workload.
    let mut perf = std::env::var("BENCH_PERF").ok().map(|out| {
        Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "-g",
                "-o",
                &format!("{out}.{}", name.split(' ').next().unwrap_or("w")),
                "-p",
                &pid.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf")
    });
    let run = process::time_publish(
        &log,
        "replication stream started",
        runs_before,
        rows,
        pid,
        Duration::from_secs(1800),
    );
    if let Some(p) = perf.as_mut() {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    let rss = process::peak_rss_mb(pid);
    assert!(sluice.stop(Duration::from_secs(60)).success());

    // 5. Debezium drains its slot.
    let dbz = dbz.and_then(|d| {
        let props = [
            (
                "connector.class",
                "io.debezium.connector.postgresql.PostgresConnector".into(),
            ),
            (
                "offset.storage",
                "org.apache.kafka.connect.storage.MemoryOffsetBackingStore".into(),
            ),
            ("database.port", pg.port().to_string()),
            ("database.user", "postgres".into()),
            ("database.dbname", "bench".into()),
            ("plugin.name", "pgoutput".into()),
            ("slot.name", "dbz".into()),
            ("publication.name", "sluice_bench".into()),
            ("publication.autocreate.mode", "disabled".into()),
            ("snapshot.mode", "no_data".into()),
            ("table.include.list", "public.bench".into()),
        ];
        match d.drain(
            &props,
            rows,
            "dbz.public.bench",
            dir.path(),
            Duration::from_secs(1800),
        ) {
            Ok(f) => Some(f),
            Err(why) => {
                println!("[{name}] debezium failed: {why}");
                None
            }
        }
    });

    let recv_after_s = recvlogical(&pg, "recv_after", &end_lsn);
    let recvlogical_s = recv_before_s.min(recv_after_s);
    println!(
        "[{name}] pg_recvlogical before sluice {:.0} rows/s, after {:.0} rows/s",
        rows as f64 / recv_before_s,
        rows as f64 / recv_after_s
    );
    println!("[{name}] wrote {rows} rows in {write_s:.1}s; engine={engine}");
    let cpu_us_per_row = run.cpu_seconds * 1e6 / rows as f64;
    if let Some(d) = &dbz {
        println!("[{name}] {}", d.describe());
        println!(
            "[{name}] {}",
            debezium::compare(rows as f64 / run.seconds, cpu_us_per_row, rss, d)
        );
    }
    Figures {
        rows,
        recvlogical_s,
        sluice_s: run.seconds,
        cpu_us_per_row,
        peak_rss_mb: rss,
        debezium: dbz,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let engine = "kafka".to_string();
    let dbz = Debezium::prepare();
    let rows: u64 = env_number("BENCH_ROWS", 1_000_000);
    let single: u64 = rows / 10;
    let big_txns = format!(
        "do $$ begin for t in 0..{} loop
           insert into bench select g, md5(g::text), now(), g * 1.5, g % 2 = 0
             from generate_series(t * 10000 + 1, (t + 1) * 10000) g;
           commit;
         end loop; end $$;",
        rows / 10_000 - 1
    );
    let small_txns = format!("call single_row_txns({single});");
    let toasted: u64 = rows / 20;
    let toast_txns = format!(
        "do $$ begin
           for t in 0..{last} loop
             insert into bench select 20000000 + g, md5(g::text), now(), g * 1.5, true,
                                      repeat(md5(g::text), 100)
               from generate_series(t * 1000 + 1, (t + 1) * 1000) g;
             commit;
           end loop;
           for t in 0..{last} loop
             update bench set amount = amount + 1
              where id between 20000000 + t * 1000 + 1 and 20000000 + (t + 1) * 1000;
             commit;
           end loop;
         end $$;",
        last = toasted / 1000 - 1
    );
    let a = run_workload(
        "10k-row transactions",
        &engine,
        &big_txns,
        rows,
        dbz.as_ref(),
        None,
    )
    .await;
    let b = run_workload(
        "single-row transactions",
        &engine,
        &small_txns,
        single,
        dbz.as_ref(),
        None,
    )
    .await;
    let c = run_workload(
        "TOASTed rows, then updates leaving them unchanged",
        &engine,
        &toast_txns,
        toasted * 2,
        dbz.as_ref(),
        None,
    )
    .await;
    println!();
    println!("capture benchmark (broker: Apache Kafka; this machine, all services co-located)");
    print_table_head(&[
        "workload",
        "rows",
        "pg_recvlogical rows/s",
        "sluice rows/s",
        "ratio",
        "sluice CPU µs/row",
        "sluice peak RSS MB",
    ]);
    let names = [
        format!("{} rows, 10k-row txns", a.rows),
        format!("{} single-row txns", b.rows),
        format!(
            "{} TOASTed inserts + {} updates leaving the value unchanged (1k-row txns)",
            c.rows / 2,
            c.rows / 2
        ),
    ];
    for (name, f) in names.iter().zip([&a, &b, &c]) {
        let recv = f.rows as f64 / f.recvlogical_s;
        let ours = f.rows as f64 / f.sluice_s;
        println!(
            "| {name} | {} | {recv:.0} | {ours:.0} | {:.2}x | {:.2} | {:.0} |",
            f.rows,
            ours / recv,
            f.cpu_us_per_row,
            f.peak_rss_mb
        );
    }
    if dbz.is_some() {
        println!();
        println!(
            "Debezium {} side by side (same WAL, same run; Debezium's embedded engine hands JSON records to a counter, no Kafka)",
            debezium::VERSION
        );
        println!("rows/s and CPU: Sluice from its stream start to the checkpoint covering every row (confirmed by Kafka); Debezium from its first change record to the last. \"from start\" adds the JVM's and connector's start-up.");
        print_table_head(&[
            "workload",
            "rows",
            "sluice rows/s",
            "debezium rows/s",
            "sluice/debezium",
            "debezium rows/s from start",
            "debezium JVM start-up s",
            "sluice CPU µs/row",
            "debezium CPU µs/row",
            "debezium/sluice CPU",
            "debezium CPU µs/row whole process",
            "sluice peak RSS MB",
            "debezium peak RSS MB",
        ]);
        for (name, f) in names.iter().zip([&a, &b, &c]) {
            let ours = f.rows as f64 / f.sluice_s;
            match &f.debezium {
                Some(d) => println!(
                    "| {name} | {} | {ours:.0} | {:.0} | {:.2}x | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {:.0} |",
                    f.rows,
                    d.rows_per_s(),
                    ours / d.rows_per_s(),
                    d.rows_per_s_from_start(),
                    d.jvm_startup_s(),
                    f.cpu_us_per_row,
                    d.cpu_us_per_row(),
                    debezium::cpu_ratio(d.cpu_us_per_row(), f.cpu_us_per_row),
                    d.cpu_us_per_row_total(),
                    f.peak_rss_mb,
                    d.peak_rss_mb
                ),
                None => println!(
                    "| {name} | {} | {ours:.0} | failed (see above) | | | | {:.2} | | | | {:.0} | |",
                    f.rows, f.cpu_us_per_row, f.peak_rss_mb
                ),
            }
        }
    }
    if env_flag("BENCH_TLS", true) {
        // The 10k-row workload again, plaintext then TLS, back to back and without Debezium.
        let dir = sluice_test_support::TempDir::new("bench-capture-tls");
        let tls = BenchTls::new(dir.path());
        let plain = run_workload("plaintext", &engine, &big_txns, rows, None, None).await;
        let secure = run_workload(
            "TLS (verify-full, mutual TLS to Kafka)",
            &engine,
            &big_txns,
            rows,
            None,
            Some(&tls),
        )
        .await;
        println!();
        println!("capture over TLS (Postgres sslmode = verify-full, Kafka over mutual TLS), beside plaintext, same run");
        print_table_head(&["connections", "rows", "sluice rows/s", "sluice CPU µs/row"]);
        for (label, f) in [("plaintext", &plain), ("TLS", &secure)] {
            println!(
                "| {label} | {} | {:.0} | {:.2} |",
                f.rows,
                f.rows as f64 / f.sluice_s,
                f.cpu_us_per_row
            );
        }
        println!(
            "TLS cost: {:.1} % of capture throughput",
            (1.0 - plain.sluice_s / secure.sluice_s) * 100.0
        );
    }
}
