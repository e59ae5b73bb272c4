//! Apply throughput with a plain 1:1 mapping next to a mapping with five expression columns,
//! a value map and a filter, over the same Kafka records in the same run.
//!
//! `cargo bench --bench apply_mapping` (release build). It captures `BENCH_ROWS` rows (default
//! 500000) from a source Postgres into the broker once (`--only capture`), then runs
//! `--only apply` four times, one sink at a time, alternating `plain` (every column as is) and
//! `mapped` into two tables of a target Postgres (emptied between rounds). Each run's rate is
//! counted from the first row seen in its target table to the last (start-up and group join
//! excluded; the table is counted every 250 ms); CPU per row from /proc. The filter lets every
//! row through, so both mappings write the same number of rows.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_test_support::bench::{env_number, print_table_head, run_only, source_target_broker};
use sluice_test_support::{process, PgCluster, TempDir};

#[path = "shared/users.rs"]
mod users;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const LONG: Duration = Duration::from_secs(1800);

const SOURCE: &str = "create table users (id bigint primary key, first_name text not null,
    last_name text not null, email text, user_type text not null, status text not null,
    score int not null, created_at timestamptz not null default now())";

const TARGET: &str = "
create table plain (id bigint primary key, first_name text, last_name text, email text,
    user_type text, status text, score int, created_at timestamptz);
create table mapped (id bigint primary key, name text, email text, role text, is_active boolean,
    score2 bigint, label text, has_email boolean, created_at timestamptz);";

const PLAIN: &str = r#"
[[sinks.plain.tables]]
from = "public.users"
to = "public.plain"
"#;

const MAPPED: &str = r#"
[[sinks.mapped.tables]]
from = "public.users"
to = "public.mapped"
filter = "after.status != 'DELETED'"
compute = { name = "after.first_name + ' ' + after.last_name", is_active = "after.status == 'ACTIVE'", score2 = "after.score * 2", label = "after.user_type + ':' + string(after.id)", has_email = "after.email != null && size(after.email) > 0" }
maps.role = { from = "user_type", values = { ADMIN = "ADMIN", TEACHER = "FACULTY", INSTRUCTOR = "FACULTY", STUDENT = "STUDENT" }, default = "STUDENT" }
"#;

struct Run {
    rows_per_s: f64,
    cpu_us_per_row: f64,
}

/// Runs `--only apply` with one sink (named `group`: each sink keeps its own offsets in the
/// target) until `table` holds `rows` rows.
async fn apply(
    dir: &Path,
    head: &str,
    target: &PgCluster,
    group: &str,
    mapping: &str,
    table: &str,
    rows: i64,
) -> Run {
    let config = format!(
        "{head}\n[sinks.{group}]\npostgres = {}\n{mapping}",
        target.sluice_connection("bench")
    );
    let mut sluice = run_only(Path::new(SLUICE), dir, "apply", table, &config);
    let pid = sluice.pid();
    let db = target.connect("bench").await;
    let sql = format!("select count(*) from {table}");
    async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
        db.query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    }
    let deadline = Instant::now() + LONG;
    let (t0, n0, cpu0) = loop {
        let n = count(&db, &sql).await;
        if n > 0 {
            break (Instant::now(), n, process::cpu_seconds(pid));
        }
        assert!(Instant::now() < deadline, "{table}: nothing applied");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    loop {
        if count(&db, &sql).await >= rows {
            break;
        }
        assert!(Instant::now() < deadline, "{table}: not every row applied");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds(pid) - cpu0;
    assert!(sluice.stop(LONG).success());
    let applied = (rows - n0) as f64;
    Run {
        rows_per_s: applied / secs,
        cpu_us_per_row: cpu * 1e6 / applied,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = env_number("BENCH_ROWS", 500_000);
    let (source, target, broker) = source_target_broker(&[]);
    source.database_with("bench", SOURCE).await;
    let tdb = target.database_with("bench", TARGET).await;

    // Capture once: the snapshot puts every row into the topic.
    let dir = TempDir::new("bench-mapping");
    let head = users::capture_users(dir.path(), &broker.brokers(), "", &source, rows as u64).await;

    let mut plain = Vec::new();
    let mut mapped = Vec::new();
    for round in ["a", "b"] {
        tdb.batch_execute("truncate plain, mapped")
            .await
            .expect("empty the targets");
        let p = PLAIN.replace("sinks.plain", &format!("sinks.plain_{round}"));
        plain.push(
            apply(
                dir.path(),
                &head,
                &target,
                &format!("plain_{round}"),
                &p,
                "plain",
                rows,
            )
            .await,
        );
        let m = MAPPED.replace("sinks.mapped", &format!("sinks.mapped_{round}"));
        mapped.push(
            apply(
                dir.path(),
                &head,
                &target,
                &format!("mapped_{round}"),
                &m,
                "mapped",
                rows,
            )
            .await,
        );
    }
    println!();
    println!("apply mapping benchmark ({rows} rows from one topic of 4 partitions into a target Postgres; Apache Kafka; this machine, all co-located)");
    print_table_head(&[
        "mapping",
        "rows/s (round a / b)",
        "apply CPU µs/row (a / b)",
    ]);
    for (name, runs) in [
        ("1:1 (8 columns as they are)", &plain),
        ("5 expressions + a value map + a filter", &mapped),
    ] {
        println!(
            "| {name} | {:.0} / {:.0} | {:.1} / {:.1} |",
            runs[0].rows_per_s, runs[1].rows_per_s, runs[0].cpu_us_per_row, runs[1].cpu_us_per_row
        );
    }
    let best = |runs: &[Run]| runs.iter().map(|r| r.rows_per_s).fold(0.0, f64::max);
    let cpu = |runs: &[Run]| {
        runs.iter()
            .map(|r| r.cpu_us_per_row)
            .fold(f64::MAX, f64::min)
    };
    println!(
        "mapped / 1:1: throughput {:.2} (best of each), CPU per row {:.2} (least of each)",
        best(&mapped) / best(&plain),
        cpu(&mapped) / cpu(&plain)
    );
}
