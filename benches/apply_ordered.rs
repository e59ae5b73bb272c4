//! Apply throughput of two tables that a target foreign key links next to the same two tables
//! without it, over the same Kafka records in the same run.
//!
//! `cargo bench --bench apply_ordered` (release build). Tables a target foreign key links are
//! applied by one worker in source commit order, up to capture checkpoints (see "Target
//! foreign keys" in the README); tables no constraint links are applied per partition by
//! `workers` connections. The bench writes `BENCH_ROWS` row changes (default 300000) into a
//! source Postgres while `--only capture` runs: transactions of 10 parents and 90 children
//! each, and every tenth transaction moves 50 children to other parents and deletes a parent
//! with its children. When every change is in Kafka, capture stops, and `--only apply` runs
//! four times, one sink at a time, alternating `free` (target tables without the foreign key)
//! and `linked` (with it), each into its own target database, emptied between rounds. Each
//! run's rate is counted from the group's assignment (logged) to the moment the target equals
//! the source (polled every 250 ms); CPU per change and peak RSS from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_test_support::bench::{
    config_head, env_number, print_table_head, run_only, source_target_broker,
};
use sluice_test_support::{process, PgCluster, TempDir};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const LONG: Duration = Duration::from_secs(1800);

const SOURCE: &str = "create table parents (id bigint primary key, name text not null);
create table children (id bigint primary key, parent_id bigint not null, name text not null)";

const FREE: &str = "create table parents (id bigint primary key, name text not null);
create table children (id bigint primary key, parent_id bigint not null, name text not null)";

const LINKED: &str = "create table parents (id bigint primary key, name text not null);
create table children (id bigint primary key,
    parent_id bigint not null references parents (id), name text not null)";

/// A digest of both tables, the same text on source and target.
const DIGEST: &str = "select (select count(*) from parents)::text || '/' || (select count(*) from children)::text
    || '/' || coalesce((select md5(string_agg(id || ':' || parent_id, ',' order by id)) from children), '')";

struct Run {
    changes_per_s: f64,
    cpu_us_per_change: f64,
    peak_rss_mb: f64,
}

/// One source transaction: 10 parents and 90 children; every tenth also moves 50 children to
/// the newest parents and deletes an older parent with its children.
fn transaction(t: i64) -> (String, u64) {
    let p = t * 10;
    let c = t * 90;
    let mut sql = format!(
        "begin;
         insert into parents select g, 'parent ' || g from generate_series({p} + 1, {p} + 10) g;
         insert into children select g, {p} + 1 + g % 10, 'child ' || g
           from generate_series({c} + 1, {c} + 90) g;"
    );
    let mut changes = 100;
    if t % 10 == 9 {
        let old = (t - 5) * 10 + 1;
        sql.push_str(&format!(
            "update children set parent_id = {p} + 1 + id % 10
              where id in (select id from children where parent_id < {p} order by id desc limit 50);
             delete from children where parent_id = {old};
             delete from parents where id = {old};"
        ));
        changes += 60;
    }
    sql.push_str("commit;");
    (sql, changes)
}

async fn apply(
    dir: &Path,
    head: &str,
    target: &PgCluster,
    database: &str,
    group: &str,
    want: &str,
    changes: u64,
) -> Run {
    let config = format!(
        "{head}\n[sinks.{group}]\npostgres = {}\n\n\
         [[sinks.{group}.tables]]\nfrom = \"public.parents\"\n\n\
         [[sinks.{group}.tables]]\nfrom = \"public.children\"\n",
        target.sluice_connection(database)
    );
    let mut sluice = run_only(Path::new(SLUICE), dir, "apply", group, &config);
    let pid = sluice.pid();
    let db = target.connect(database).await;
    // From the moment the group assigned the partitions: the ordered worker applies a whole
    // backlog in one transaction, so "first row seen" would start its clock at its end.
    sluice.wait_log("partitions assigned", 1, LONG);
    let (t0, cpu0) = (Instant::now(), process::cpu_seconds(pid));
    let deadline = t0 + LONG;
    loop {
        let got: String = db
            .query_one(DIGEST, &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{group}: the target never equalled the source"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds(pid) - cpu0;
    let rss = process::peak_rss_mb(pid);
    assert!(sluice.stop(LONG).success());
    let changes = changes as f64;
    Run {
        changes_per_s: changes / secs,
        cpu_us_per_change: cpu * 1e6 / changes,
        peak_rss_mb: rss,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = env_number("BENCH_ROWS", 300_000);
    let (source, target, broker) = source_target_broker(&[]);
    source.create_database("bench").await;
    let src = source.connect("bench").await;
    src.batch_execute(SOURCE).await.expect("source schema");
    for (db, schema) in [("free", FREE), ("linked", LINKED)] {
        target.database_with(db, schema).await;
    }

    let dir = TempDir::new("bench-ordered");
    let head = config_head(
        &broker.brokers(),
        "partitions = 4",
        "app",
        &format!(
            "postgres = {}\ntables = [\"public.parents\", \"public.children\"]",
            source.sluice_connection("bench")
        ),
    );
    let mut capture = run_only(Path::new(SLUICE), dir.path(), "capture", "capture", &head);
    capture.wait_log("replication stream started", 1, LONG);
    let mut written = 0u64;
    let mut t = 0;
    while (written as i64) < rows {
        let (sql, n) = transaction(t);
        src.batch_execute(&sql).await.expect("workload");
        written += n;
        t += 1;
    }
    // Every change is in Kafka once capture's slot confirms the WAL that holds them (capture
    // confirms only what a durable checkpoint covers).
    let end: String = src
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let deadline = Instant::now() + LONG;
    loop {
        let done: bool = src
            .query_one(
                "select coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false)
                   from pg_replication_slots where slot_name like 'sluice%'",
                &[&end],
            )
            .await
            .expect("slot")
            .get(0);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture did not confirm the workload"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(capture.stop(LONG).success());
    let want: String = src.query_one(DIGEST, &[]).await.expect("digest").get(0);
    let changes: i64 = src
        .query_one(
            "select sum(n_tup_ins + n_tup_upd + n_tup_del)::int8 from pg_stat_user_tables
              where relname in ('parents', 'children')",
            &[],
        )
        .await
        .expect("stats")
        .get(0);
    let changes = changes as u64;

    let mut free = Vec::new();
    let mut linked = Vec::new();
    for round in ["a", "b"] {
        for db in ["free", "linked"] {
            target
                .connect(db)
                .await
                .batch_execute("truncate children, parents")
                .await
                .expect("empty the target");
        }
        free.push(
            apply(
                dir.path(),
                &head,
                &target,
                "free",
                &format!("free_{round}"),
                &want,
                changes,
            )
            .await,
        );
        linked.push(
            apply(
                dir.path(),
                &head,
                &target,
                "linked",
                &format!("linked_{round}"),
                &want,
                changes,
            )
            .await,
        );
    }
    println!();
    println!("ordered apply benchmark ({changes} row changes in {t} source transactions, two tables, topics of 4 partitions, into a target Postgres; Apache Kafka; this machine, all co-located)");
    print_table_head(&[
        "target tables",
        "changes/s (round a / b)",
        "apply CPU µs/change (a / b)",
        "peak RSS MB (a / b)",
    ]);
    for (name, runs) in [
        ("no foreign key: per-partition workers", &free),
        (
            "children → parents foreign key: one worker, commit order",
            &linked,
        ),
    ] {
        println!(
            "| {name} | {:.0} / {:.0} | {:.1} / {:.1} | {:.0} / {:.0} |",
            runs[0].changes_per_s,
            runs[1].changes_per_s,
            runs[0].cpu_us_per_change,
            runs[1].cpu_us_per_change,
            runs[0].peak_rss_mb,
            runs[1].peak_rss_mb
        );
    }
    let best = |runs: &[Run]| runs.iter().map(|r| r.changes_per_s).fold(0.0, f64::max);
    println!(
        "linked / free throughput: {:.2} (best of each; goal ≥ 0.5)",
        best(&linked) / best(&free)
    );
}
