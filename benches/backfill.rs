//! Backfill throughput: a 1M-row table added to a running source, read in chunks while the
//! stream carries a steady load, next to a plain `COPY … TO STDOUT` of the same table in the
//! same run.
//!
//! `cargo bench --bench backfill` (release build). It:
//! 1. starts Sluice capturing only `load`, which takes 2,000 rows/s in 20-row transactions;
//! 2. times `COPY (select …) TO STDOUT` of `bench` (1M rows), drained without parsing;
//! 3. adds `bench` to the config and reloads (SIGHUP); times the backfill from its
//!    `backfill started` log line to its `backfill finished` line (every chunk handed to the
//!    publisher), then until the checkpoint after it (every row confirmed by Kafka);
//! 4. repeats COPY and a whole-table `sluice snapshot` (the same chunked path)
//!    `BENCH_REPEAT - 1` more times (default 3 rounds in all), then a last COPY; each round's
//!    rate is set against the mean of the COPYs just before and after it, and the median
//!    round is the figure (this machine's speed drifts between seconds);
//! 5. stops Sluice and runs it with `--resnapshot`: the initial snapshot of the same rows, the
//!    fastest Sluice publishes a table, as a second reference.
//!
//! It also prints the CPU each party spent per row during the backfill (Sluice, the Postgres
//! postmaster with its backends, the broker, and the whole machine from `/proc/stat`), and
//! Postgres' CPU for the plain COPY: the budget the rates come out of on a shared machine.
//!
//! The broker is a private Apache Kafka (only capture runs here, which does not read offsets
//! back). `BENCH_ROWS` sets the table's size (default 1000000), `BENCH_CHUNK` the chunk size (default
//! Sluice's 8192), `BENCH_COMPRESSION` the producer's `compression.type` (default lz4).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sluice_test_support::bench::{capture_config, env_number, print_table_head};
use sluice_test_support::{process, Broker, PgCluster, SluiceProcess, TempDir};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// CPU seconds of the other processes a run shares the machine with.
struct Others {
    postgres: f64,
    broker: f64,
    machine: f64,
}

impl Others {
    fn read(pg: &PgCluster, broker: &Broker) -> Others {
        Others {
            postgres: process::tree_cpu_seconds(pg.postmaster_pid()),
            broker: process::tree_cpu_seconds(broker.pid()),
            machine: process::machine_busy_seconds(),
        }
    }

    fn since(&self, before: &Others) -> Others {
        Others {
            postgres: self.postgres - before.postgres,
            broker: self.broker - before.broker,
            machine: self.machine - before.machine,
        }
    }
}

async fn plain_copy(db: &tokio_postgres::Client) -> (f64, u64) {
    let t = Instant::now();
    let stream = db
        .copy_out("copy (select id, name, at, amount, flag from bench) to stdout")
        .await
        .expect("copy");
    futures_util::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("copy data").len() as u64;
    }
    (t.elapsed().as_secs_f64(), bytes)
}

fn wait_line(log: &Path, needle: &str, count: usize, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the first checkpoint written after now: the one that covers everything handed
/// to the publisher so far (every row confirmed by Kafka).
fn wait_next_checkpoint(log: &Path) -> Instant {
    let written = std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("checkpoint written")
        .count();
    wait_line(
        log,
        "checkpoint written",
        written + 1,
        Duration::from_secs(120),
    )
}

fn config_text(broker: &Broker, pg: &PgCluster, tables: &str, chunk: &str) -> String {
    // BENCH_COMPRESSION sets the producer's compression.type (Sluice's default: lz4).
    let compression = std::env::var("BENCH_COMPRESSION")
        .map(|c| format!("\"compression.type\" = \"{c}\""))
        .unwrap_or_default();
    let connection = pg.sluice_connection("bench");
    let head = capture_config(&broker.brokers(), "postgres", &connection, tables);
    format!("{head}{chunk}\n\n[kafka.properties]\n{compression}\n")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = env_number("BENCH_ROWS", 1_000_000);
    let chunk = std::env::var("BENCH_CHUNK")
        .map(|c| format!("backfill_chunk_rows = {c}"))
        .unwrap_or_default();
    let pg = PgCluster::start_with(&[("shared_buffers", "512MB"), ("max_wal_size", "4GB")]);
    let broker = Broker::start();
    pg.create_database("bench").await;
    let db = pg.connect("bench").await;
    db.batch_execute(&format!(
        "create table bench (id bigint primary key, name text, at timestamptz, amount numeric(12,2), flag bool);
         create table load (id bigint primary key, v text);
         insert into bench select g, md5(g::text), now(), g * 1.5, g % 2 = 0 from generate_series(1, {rows}) g;"
    ))
    .await
    .expect("schema and rows");
    db.batch_execute("vacuum analyze bench")
        .await
        .expect("vacuum");
    let dir = TempDir::new("bench-backfill");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        config_text(&broker, &pg, "\"public.load\"", &chunk),
    )
    .expect("config");
    let log = dir.path().join("sluice.log");
    let mut sluice = SluiceProcess::run(Path::new(SLUICE), &config, &[], &log);
    wait_line(
        &log,
        "replication stream started",
        1,
        Duration::from_secs(60),
    );

    // The stream's load: 20-row transactions, 100 a second.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let stop = stop.clone();
        let db = pg.connect("bench").await;
        tokio::spawn(async move {
            let mut id = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                db.batch_execute(&format!(
                    "insert into load select g, md5(g::text) from generate_series({}, {}) g",
                    id + 1,
                    id + 20
                ))
                .await
                .expect("load");
                id += 20;
            }
            id
        })
    };

    let repeats: usize = env_number("BENCH_REPEAT", 3);
    // COPY, backfill, COPY, re-sync, COPY, …: the machine's speed drifts from one second to
    // the next (COPY alone has ranged 0.5-1.1 s here), so each backfill is set against the
    // COPYs just before and after it, and the median round is the figure.
    let mut copies = Vec::new();
    let mut rounds = Vec::new();
    let mut bytes = 0;
    let mut copy_cost = None;
    for round in 1..=repeats {
        let before = Others::read(&pg, &broker);
        let (copy_s, b) = plain_copy(&db).await;
        bytes = b;
        copy_cost.get_or_insert_with(|| Others::read(&pg, &broker).since(&before));
        copies.push(copy_s);
        let cpu_before = process::cpu_seconds(sluice.pid());
        let others_before = Others::read(&pg, &broker);
        let window_start = Instant::now();
        if round == 1 {
            // The table joins the config: a reload (SIGHUP) backfills it.
            std::fs::write(
                &config,
                config_text(&broker, &pg, "\"public.load\", \"public.bench\"", &chunk),
            )
            .expect("config with bench");
            let status = std::process::Command::new("kill")
                .args(["-HUP", &sluice.pid().to_string()])
                .status()
                .expect("kill -HUP");
            assert!(status.success());
        } else {
            // Later rounds re-sync the whole table through the same path.
            let status = std::process::Command::new(SLUICE)
                .args(["snapshot", "--config"])
                .arg(&config)
                .args(["--table", "public.bench"])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("sluice snapshot");
            assert!(status.success());
        }
        let started = wait_line(&log, "backfill started", round, Duration::from_secs(120));
        // BENCH_PERF=FILE records a CPU profile of Sluice during the first backfill.
        let mut perf = std::env::var("BENCH_PERF")
            .ok()
            .filter(|_| round == 1)
            .map(|out| {
                std::process::Command::new("perf")
                    .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
                    .arg(out)
                    .args(["-p", &sluice.pid().to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("perf")
            });
        let finished = wait_line(&log, "backfill finished", round, Duration::from_secs(1800));
        let confirmed = wait_next_checkpoint(&log);
        // Read before perf stops: writing its profile is not the backfill's cost.
        let cpu = process::cpu_seconds(sluice.pid()) - cpu_before;
        let others = Others::read(&pg, &broker).since(&others_before);
        let window_s = window_start.elapsed().as_secs_f64();
        if let Some(p) = perf.as_mut() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &p.id().to_string()])
                .status();
            let _ = p.wait();
        }
        rounds.push(Round {
            read_s: finished.duration_since(started).as_secs_f64(),
            confirmed_s: confirmed.duration_since(started).as_secs_f64(),
            sluice_cpu: cpu,
            others,
            window_s,
        });
    }
    let (last_copy, _) = plain_copy(&db).await;
    copies.push(last_copy);
    let copy_cost = copy_cost.expect("one round at least");
    let rss = process::peak_rss_mb(sluice.pid());
    stop.store(true, Ordering::Relaxed);
    let streamed = loader.await.expect("loader");
    assert!(sluice.stop(Duration::from_secs(60)).success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();

    // The same rows through Sluice's initial snapshot (one COPY per table, no markers, no
    // stream running): what the publishing path itself reaches.
    let snap_log = dir.path().join("snapshot.log");
    let mut again = SluiceProcess::run(
        Path::new(SLUICE),
        &config,
        &["--resnapshot", "bench"],
        &snap_log,
    );
    let snap_started = wait_line(
        &snap_log,
        "initial snapshot started",
        1,
        Duration::from_secs(120),
    );
    wait_line(
        &snap_log,
        "initial snapshot read",
        1,
        Duration::from_secs(1800),
    );
    let snap_done = wait_next_checkpoint(&snap_log);
    assert!(again.stop(Duration::from_secs(60)).success());
    let snap_s = snap_done.duration_since(snap_started).as_secs_f64();
    let snap_rows = rows + streamed as u64;
    let complete = text
        .lines()
        .filter(|l| l.contains("backfill finished") && l.contains(&format!(" rows={rows}")))
        .count();
    assert!(
        complete == repeats,
        "{complete} of {repeats} backfills read every row:\n{}",
        text.lines()
            .filter(|l| l.contains("backfill"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let per_row = |s: f64| s * 1e6 / rows as f64;
    println!();
    println!("backfill benchmark ({rows} rows, {} MB as COPY text; stream load 2,000 rows/s, {streamed} rows streamed meanwhile; broker: Apache Kafka)", bytes / 1_000_000);
    println!("round 1 is the backfill of the table added by a reload, later rounds `sluice snapshot` re-syncs of all of it; each is set against the mean of the plain COPYs just before and after it");
    print_table_head(&[
        "round",
        "COPY before / after (s)",
        "backfill read (s)",
        "backfill confirmed by Kafka (s)",
        "rows/s",
        "vs COPY",
        "CPU µs/row: Sluice / Postgres / broker / machine",
        "cores busy",
    ]);
    let mut ratios = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let copy_s = (copies[i] + copies[i + 1]) / 2.0;
        let ratio = copy_s / r.confirmed_s;
        ratios.push(ratio);
        println!(
            "| {} | {:.2} / {:.2} | {:.2} | {:.2} | {:.0} | {ratio:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} |",
            i + 1,
            copies[i],
            copies[i + 1],
            r.read_s,
            r.confirmed_s,
            rows as f64 / r.confirmed_s,
            per_row(r.sluice_cpu),
            per_row(r.others.postgres),
            per_row(r.others.broker),
            per_row(r.others.machine),
            r.others.machine / r.window_s,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "backfill / COPY: median {:.2} over {} rounds (range {:.2}-{:.2})",
        ratios[ratios.len() / 2],
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1]
    );
    let snap_rate = snap_rows as f64 / snap_s;
    let mut sorted = copies.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "Sluice initial snapshot of the same rows (+ the load table), confirmed by Kafka: {snap_s:.2} s, {snap_rate:.0} rows/s, {:.2} of the median COPY ({:.2} s)",
        snap_rate * sorted[sorted.len() / 2] / rows as f64,
        sorted[sorted.len() / 2]
    );
    println!("peak RSS of Sluice: {rss:.0} MB");
    println!(
        "Postgres CPU for the first plain COPY: {:.2} µs/row (whole machine {:.2}, the stream's load included)",
        per_row(copy_cost.postgres),
        per_row(copy_cost.machine)
    );
}

/// One backfill's times and CPU (from its trigger to the checkpoint after its last chunk).
struct Round {
    read_s: f64,
    confirmed_s: f64,
    sluice_cpu: f64,
    others: Others,
    window_s: f64,
}
