//! The whole pipeline, source Postgres → Kafka → target Postgres, on this machine.
//!
//! `cargo bench --bench pipeline` (release build) prints:
//! 1. **Throughput**: 1M rows inserted into the source (10k-row transactions) while Sluice runs
//!    capture and apply; rows/s from the first source commit to the last target commit, both
//!    read from the databases (`src_ts` set by the source, `applied_at` by the target's column
//!    default when the row is applied).
//! 2. **Latency** at a steady 5k rows/s for 60 s (a 100-row transaction every 20 ms):
//!    p50/p95/p99 of `applied_at - src_ts` over every row.
//! 3. Sluice's peak RSS over each run.
//! 4. **Throughput over TLS**, beside the plaintext run: both databases with `sslmode =
//!    "verify-full"` and Kafka over mutual TLS, certificates made by the run (`BENCH_TLS=0`
//!    leaves it out).
//!
//! `BENCH_ROWS` (default 1000000) and `BENCH_LATENCY_SECS` (default 60) scale the runs.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_test_support::bench::{env_flag, env_number, source_target_broker, BenchTls};
use sluice_test_support::{process, wait_for, Broker, PgCluster, SluiceProcess, TempDir};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const LONG: Duration = Duration::from_secs(1800);

const SOURCE: &str = "create table events (id bigint primary key, payload text not null,
    amount numeric(12,2), src_ts timestamptz not null default clock_timestamp())";
const TARGET: &str = "create table events (id bigint primary key, payload text not null,
    amount numeric(12,2), src_ts timestamptz not null,
    applied_at timestamptz not null default clock_timestamp())";

struct Setup {
    source: PgCluster,
    target: PgCluster,
    broker: Broker,
    _dir: TempDir,
    sluice: SluiceProcess,
}

/// The servers, plain or (`tls`) serving certificates of a CA made for the run: both
/// databases with TLS on, the broker with a mutual-TLS listener. Returns them and the config's
/// `[kafka]` lines, and what makes a connection of Sluice's use TLS.
fn servers(dir: &Path, tls: bool) -> (PgCluster, PgCluster, Broker, String, Option<BenchTls>) {
    let delay = ("wal_writer_delay", "10ms");
    if !tls {
        let (source, target, broker) = source_target_broker(&[delay]);
        let kafka = format!("brokers = \"{}\"", broker.brokers());
        return (source, target, broker, kafka, None);
    }
    let tls = BenchTls::new(dir);
    let settings = tls.pg_settings();
    let mut ssl: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ssl.push(delay);
    let (source, target, _) = source_target_broker(&ssl);
    let broker = tls.broker();
    let kafka = format!(
        "brokers = \"{}\"\n{}",
        broker.ssl_brokers(),
        tls.kafka_section()
    );
    (source, target, broker, kafka, Some(tls))
}

async fn setup(tls: bool) -> Setup {
    let dir = TempDir::new("bench-pipeline");
    let (source, target, broker, kafka, tls) = servers(dir.path(), tls);
    source.database_with("bench", SOURCE).await;
    target.database_with("bench", TARGET).await;
    let connection = |pg: &PgCluster| {
        let c = pg.sluice_connection("bench");
        match &tls {
            Some(tls) => tls.verify_full(&c),
            None => c,
        }
    };
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\npartitions = 3\ntombstones = false\n{kafka}\n\n\
             [sources.bench]\npostgres = {}\ntables = [\"public.events\"]\n\n\
             [sinks.bench]\npostgres = {}\n\n[[sinks.bench.tables]]\nfrom = \"public.events\"\n",
            connection(&source),
            connection(&target),
        ),
    )
    .expect("config");
    let sluice = SluiceProcess::run(
        Path::new(SLUICE),
        &config,
        &[],
        &dir.path().join("sluice.log"),
    );
    sluice.wait_log("replication stream started", 1, LONG);
    sluice.wait_log("partitions assigned", 1, LONG);
    Setup {
        source,
        target,
        broker,
        _dir: dir,
        sluice,
    }
}

async fn wait_count(db: &tokio_postgres::Client, n: i64) {
    wait_for("every row in the target", LONG, || async {
        let c: i64 = db
            .query_one("select count(*) from events", &[])
            .await
            .ok()?
            .get(0);
        (c >= n).then_some(())
    })
    .await;
}

async fn throughput(engine: &str, rows: i64, tls: bool) {
    let mut s = setup(tls).await;
    let src = s.source.connect("bench").await;
    let dst = s.target.connect("bench").await;
    let per_txn = 10_000;
    // CPU of each process over the run, to see where the machine's two cores go.
    let cpu_of = |s: &Setup| {
        [
            process::tree_cpu_seconds(s.source.postmaster_pid()),
            process::tree_cpu_seconds(s.broker.pid()),
            process::cpu_seconds(s.sluice.pid()),
            process::tree_cpu_seconds(s.target.postmaster_pid()),
            process::machine_busy_seconds(),
        ]
    };
    let before = cpu_of(&s);
    let writer = tokio::spawn(async move {
        let mut id = 0;
        while id < rows {
            let to = (id + per_txn).min(rows);
            src.batch_execute(&format!(
                "insert into events (id, payload, amount)
                 select g, md5(g::text), g / 100.0 from generate_series({}, {to}) g",
                id + 1
            ))
            .await
            .expect("insert");
            id = to;
        }
    });
    writer.await.expect("writer");
    wait_count(&dst, rows).await;
    let row = dst
        .query_one(
            "select extract(epoch from max(applied_at) - min(src_ts))::float8,
                    extract(epoch from max(src_ts) - min(src_ts))::float8
               from events",
            &[],
        )
        .await
        .expect("times");
    let (total_s, write_s): (f64, f64) = (row.get(0), row.get(1));
    let rss = process::peak_rss_mb(s.sluice.pid());
    let cpu = process::cpu_seconds(s.sluice.pid());
    let after = cpu_of(&s);
    assert!(s.sluice.stop(LONG).success());
    let per_row = |i: usize| (after[i] - before[i]) * 1e6 / rows as f64;
    println!(
        "throughput [{engine}]: {rows} rows in {per_txn}-row transactions: first source commit → last target commit {total_s:.2} s = {:.0} rows/s end to end (source writes took {write_s:.2} s); sluice CPU {cpu:.1} s ({:.1} µs/row), peak RSS {rss:.0} MB",
        rows as f64 / total_s,
        cpu * 1e6 / rows as f64
    );
    println!(
        "  CPU µs/row over the run: source Postgres (writes, WAL, walsender) {:.1}, broker {:.1}, sluice {:.1}, target Postgres {:.1}; whole machine busy {:.1}",
        per_row(0),
        per_row(1),
        per_row(2),
        per_row(3),
        per_row(4)
    );
}

async fn latency(engine: &str, secs: u64) {
    let mut s = setup(false).await;
    let src = s.source.connect("bench").await;
    let dst = s.target.connect("bench").await;
    // 5k rows/s: 100 rows every 20 ms, each batch its own transaction.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let ticks = secs * 50;
    let started = Instant::now();
    for t in 0..ticks as i64 {
        tick.tick().await;
        src.batch_execute(&format!(
            "insert into events (id, payload, amount)
             select g, md5(g::text), g / 100.0 from generate_series({}, {}) g",
            t * 100 + 1,
            t * 100 + 100
        ))
        .await
        .expect("insert");
    }
    let wrote = started.elapsed().as_secs_f64();
    let rows = ticks as i64 * 100;
    wait_count(&dst, rows).await;
    let row = dst
        .query_one(
            "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by
                    extract(epoch from applied_at - src_ts) * 1000)::float8[],
                    max(extract(epoch from applied_at - src_ts) * 1000)::float8
               from events",
            &[],
        )
        .await
        .expect("latency");
    let (p, max): (Vec<f64>, f64) = (row.get(0), row.get(1));
    let rss = process::peak_rss_mb(s.sluice.pid());
    assert!(s.sluice.stop(LONG).success());
    println!(
        "latency [{engine}]: {rows} rows at {:.0} rows/s for {wrote:.0} s: source commit → target commit p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {max:.1} ms; peak RSS {rss:.0} MB",
        rows as f64 / wrote,
        p[0],
        p[1],
        p[2]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = env_number("BENCH_ROWS", 1_000_000);
    let secs: u64 = env_number("BENCH_LATENCY_SECS", 60);
    println!("pipeline benchmark: source Postgres → sluice capture → Kafka → sluice apply → target Postgres, all on this machine");
    throughput("kafka", rows, false).await;
    if env_flag("BENCH_TLS", true) {
        throughput(
            "kafka, TLS everywhere (verify-full, mutual TLS to Kafka)",
            rows,
            true,
        )
        .await;
    }
    latency("kafka", secs).await;
}
