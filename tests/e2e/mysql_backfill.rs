//! Backfill and re-sync from a MariaDB and a MySQL 8 source: a table added to a running source
//! is backfilled through the signal table's watermarks while its rows are being updated,
//! deleted and inserted, and ends equal to the source; `sluice snapshot --where` heals a
//! damaged key range and nothing else; the checkpoint carries the backfill's progress. On
//! MySQL, the initial snapshot is read the same way: under writes, killed mid-way, it starts
//! over and deletes the rows the source lost meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_test_support::sluice::run_to_end;
use sluice_test_support::{MariaDb, PgCluster};

use crate::common::{
    column, deref_workdir, logged_number, mariadb_and_mysql8, mysql, postgres, sink_section,
    source_section, table_maps, wait_rows, wait_same_rows, Workdir, LONG, SLUICE,
};

const SOURCE: &str = "create table a (id int primary key, v varchar(50));
                      create table big (id int primary key, v varchar(50), n bigint not null);
                      create table pairs (g varchar(10), n int, v varchar(20), primary key (g, n));
                      create table bins (k varbinary(8) primary key, v int);";
const TARGET: &str = "create table a (id int primary key, v text);
                      create table big (id int primary key, v text, n int8 not null);
                      create table pairs (g text, n int, v text, primary key (g, n));
                      create table bins (k bytea primary key, v int);";
const PAIRS: &str = "select concat_ws('|', g, n, v) from pairs";
/// Rows as text, the same query on both sides.
const BIG: &str = "select concat_ws('|', id, v, n) from big";

struct Setup {
    source: MariaDb,
    target: PgCluster,
    work: Workdir,
    /// Extra source settings.
    extra: String,
}

deref_workdir!(Setup);

impl Setup {
    /// A MariaDB `shop` with `a` (one row) and `big` (`rows` rows), and an empty target.
    async fn new(rows: u32, extra: &str) -> Setup {
        Self::on(MariaDb::start(), rows, extra).await
    }

    /// The same on a server of the caller's choice (MySQL 8: [`MariaDb::start_mysql8`]).
    async fn on(source: MariaDb, rows: u32, extra: &str) -> Setup {
        source.execute(None, "create database shop");
        source.execute(Some("shop"), SOURCE);
        for start in (1..=rows).step_by(5000) {
            let values: Vec<String> = (start..=rows.min(start + 4999))
                .map(|i| format!("({i}, 'v{i}', 0)"))
                .collect();
            source.execute(
                Some("shop"),
                &format!("insert into big values {}", values.join(",")),
            );
        }
        source.execute(Some("shop"), "insert into a values (1, 'a')");
        let target = PgCluster::start();
        target.database_with("warehouse", TARGET).await;
        Setup {
            source,
            target,
            work: Workdir::new("mysql-backfill"),
            extra: extra.to_owned(),
        }
    }

    /// Writes the config capturing `tables` of `shop` and applying each to `public`; returns
    /// its path.
    fn write_config(&self, tables: &[&str]) -> std::path::PathBuf {
        let maps: Vec<_> = tables
            .iter()
            .map(|t| (format!("shop.{t}"), format!("public.{t}")))
            .collect();
        let source_extra = format!("backfill_chunk_rows = 500\n{}", self.extra);
        let sections = source_section("shop", &mysql(&self.source, "shop"), tables, &source_extra)
            + &sink_section("warehouse", &postgres(&self.target, "warehouse"), "")
            + &table_maps("warehouse", &maps);
        self.configure(3, "", &sections);
        self.config.clone()
    }

    /// Waits (on a blocking thread) until `big`'s topic holds `n` snapshot records; returns
    /// how many records it read.
    async fn wait_snapshot_records(&self, n: usize) -> usize {
        let brokers = self.broker.brokers();
        tokio::task::spawn_blocking(move || {
            let mut reader = sluice_test_support::TopicReader::new(&brokers, "sluice.shop.big");
            reader.read_until(LONG, &format!("{n} snapshot rows"), |records| {
                records
                    .iter()
                    .filter(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r"))
                    .count()
                    >= n
            });
            reader.envelopes().len()
        })
        .await
        .expect("topic reader")
    }

    /// Waits until `sql` (a query of rows as text) returns the same rows in the source and
    /// the target; returns their number.
    async fn wait_equal(&self, sql: &str) -> usize {
        self.wait_equal_as(sql, sql).await
    }

    /// [`Setup::wait_equal`] with a query of its own for each side.
    async fn wait_equal_as(&self, source_sql: &str, sql: &str) -> usize {
        let dst = self.target.connect("warehouse").await;
        wait_same_rows(&format!("{sql}: Postgres against MariaDB"), || {
            let dst = &dst;
            async move {
                vec![(
                    self.source.query("shop", source_sql),
                    column(dst, sql).await,
                )]
            }
        })
        .await[0]
    }
}

fn sluice(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    run_to_end(std::path::Path::new(SLUICE), args, LONG)
}

/// Updates, deletes and inserts spread over every 500-row chunk of `big` (20,000 rows),
/// through one open client session, until `stop` (or 3000 rounds); returns the rounds run.
fn write_all_over_big(source: &MariaDb, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<i64> {
    let mut session = source.session("shop");
    std::thread::spawn(move || {
        let mut round = 0i64;
        while !stop.load(Ordering::Relaxed) && round < 3000 {
            round += 1;
            let m = round % 1999;
            let ids = (0..10)
                .map(|k| (m + k * 1999 + 1).to_string())
                .collect::<Vec<_>>()
                .join(",");
            session.send(&format!(
                "update big set n = n + 1, v = 'u{round}' where id in ({ids});
                 delete from big where id = {d};
                 insert into big values ({new}, 'new', {round}) on duplicate key update n = -1;",
                d = (round * 7919) % 20000 + 1,
                new = 20000 + round,
            ));
        }
        session.finish();
        round
    })
}

mariadb_and_mysql8!(
    table_added_under_writes_is_backfilled_and_resynced,
    mariadb_table_added_under_writes_is_backfilled_and_resynced_by_key_range,
    mysql8_table_added_under_writes_is_backfilled_and_resynced_by_key_range
);

async fn table_added_under_writes_is_backfilled_and_resynced(db: MariaDb) {
    let server = format!("{:?}", db.flavor());
    let s = Setup::on(db, 20_000, "").await;
    let dst = s.target.connect("warehouse").await;
    let config = s.write_config(&["a"]);
    let config = config.to_str().expect("utf-8 path");
    let mut run = s.start();
    wait_rows(&dst, "select count(*) from a", 1).await;

    // Writes all over `big` while it is added and backfilled.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_all_over_big(&s.source, stop.clone());
    s.write_config(&["a", "big"]);
    let (status, out, err) = sluice(&["reload", "--config", config, "--wait"]);
    assert!(status.success(), "sluice reload --wait: {out}{err}");
    assert!(out.contains("every table backfilled"), "{out}{err}");
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    let rows = s.wait_equal(BIG).await;
    let log = run.log_text();
    assert!(log.contains("backfill finished"), "{log}");
    let superseded = logged_number(&log, "backfill finished", "superseded").expect("superseded");
    println!(
        "{server} backfill under {rounds} rounds of writes: big equal ({rows} rows); \
         {superseded} chunk rows superseded by newer changes"
    );

    // Damage the target inside and outside 100–199; re-sync exactly that range.
    dst.batch_execute(
        "delete from big where id between 120 and 139;
         update big set v = 'damaged' where id between 190 and 210 or id between 500 and 505;",
    )
    .await
    .expect("damage");
    let (status, out, err) = sluice(&[
        "snapshot", "--config", config, "--table", "shop.big", "--where", "nope = 1",
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("nope"), "the error names the problem: {err}");
    let (status, out, err) = sluice(&[
        "snapshot",
        "--config",
        config,
        "--table",
        "shop.big",
        "--where",
        "id between 100 and 199",
        "--wait",
    ]);
    assert!(status.success(), "sluice snapshot: {out}{err}");
    assert!(out.contains("finished"), "{out}");
    // The re-read rows are in Kafka; wait until the sink applied them: the range, deleted
    // rows included, equal to the source's.
    s.wait_equal("select concat_ws('|', id, v, n) from big where id between 100 and 199")
        .await;
    let damaged: Vec<i32> =
        column(&dst, "select id from big where v = 'damaged' order by id").await;
    // Of the damaged rows outside the range, those the writes above left in the source.
    let expected: Vec<i32> = s
        .source
        .query(
            "shop",
            "select id from big where id between 200 and 210 or id between 500 and 505 order by id",
        )
        .iter()
        .map(|l| l.parse().expect("id"))
        .collect();
    assert_eq!(damaged, expected, "only 100–199 were healed");
    assert!(run.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_backfill_resumes_after_a_crash_from_its_last_chunk() {
    // Capped at 10,000 rows/s, the 60k-row backfill lasts at least 6 s: the crash below,
    // once 10,000 rows are checkpointed, lands inside it. `pairs`, added with it, has a
    // two-column key: its chunks resume by (g, n). `bins` has binary keys in 500-row chunks
    // whose last keys are, in key order, `it's` (resumed from an escaped string literal), a
    // key that is not UTF-8 (from a hex literal), and `k\z` (a backslash, escaped).
    let s = Setup::new(60_000, "backfill_max_rows_per_second = 10000").await;
    s.source.execute(
        Some("shop"),
        "insert into pairs select char(65 + seq % 7), seq, concat('p', seq) from seq_1_to_3000",
    );
    s.source.execute(
        Some("shop"),
        r"insert into bins values ('', -1), ('''', -2), ('\\', -3), ('a\\b', -4), ('it''s', -5), ('k\\z', -6);
          insert into bins select concat('a', lpad(seq, 4, '0')), seq from seq_1_to_495;
          insert into bins select concat('j', unhex('ff'), lpad(seq, 4, '0')), 1000 + seq from seq_1_to_500;
          insert into bins select concat('k', lpad(seq, 4, '0')), 2000 + seq from seq_1_to_499;
          insert into bins select concat('m', unhex('80'), seq), 3000 + seq from seq_1_to_5;",
    );
    assert_eq!(
        s.source.query(
            "shop",
            "select hex(k) from (select k, row_number() over (order by k) n from bins) t \
             where n in (500, 1000, 1500) order by n",
        ),
        ["69742773", "6AFF30353030", "6B5C7A"],
        "the chunks of bins end on the keys this test is about"
    );
    s.write_config(&["a"]);
    let mut run = s.start();
    run.wait_log("binlog stream started", 1, LONG);
    let config = s.write_config(&["a", "big", "pairs", "bins"]);
    let (status, out, err) = sluice(&["reload", "--config", config.to_str().expect("utf-8")]);
    assert!(status.success(), "sluice reload: {out}{err}");
    let brokers = s.broker.brokers();
    tokio::task::spawn_blocking(move || {
        let mut reader =
            sluice_test_support::TopicReader::new(&brokers, "sluice.__sluice_capture.shop");
        reader.read_until(LONG, "backfill progress in a checkpoint", |records| {
            records.iter().any(|r| {
                r.value
                    .as_ref()
                    .and_then(|v| v["backfills"][0]["rows"].as_u64())
                    >= Some(10_000)
            })
        });
    })
    .await
    .expect("checkpoint reader");
    run.kill9();
    let before = run.log_text();
    assert!(
        !before.contains("backfill finished"),
        "the backfill finished before the crash: nothing to resume"
    );
    let mut run = s.start();
    run.wait_log("backfill finished", 1, LONG);
    // The reader logs its total on its own thread, not always before the stream's "finished".
    run.wait_log("backfill read complete source=shop table=shop.big", 1, LONG);
    let log = run.log_text();
    assert!(log.contains("backfill resumed"), "{log}");
    let reread = logged_number(
        &log,
        "backfill read complete source=shop table=shop.big",
        "rows_read",
    )
    .expect("rows_read of big");
    assert!(
        reread < 60_000,
        "the resumed backfill read {reread} rows: it started over"
    );
    let rows = s.wait_equal(BIG).await;
    let pairs = s.wait_equal(PAIRS).await;
    let bins = s
        .wait_equal_as(
            "select concat_ws('|', hex(k), v) from bins",
            "select concat_ws('|', upper(encode(k, 'hex')), v) from bins",
        )
        .await;
    assert_eq!(bins, 1505, "every binary-keyed row is in the source");
    println!(
        "MariaDB backfill killed mid-way: resumed, {reread} rows read after the crash; big \
         equal ({rows} rows), pairs equal ({pairs} rows, two-column key), bins equal ({bins} \
         rows, binary keys)"
    );
    assert!(run.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_initial_snapshot_under_writes_reads_each_row_once_and_restarts_whole() {
    // No `binlog_snapshot_file` on MySQL: the initial snapshot is read in 500-row chunks
    // between watermarks while the binlog streams. 20,000 rows at most 4,000 rows/s: the
    // kill below lands inside it.
    let s = Setup::on(
        MariaDb::start_mysql8(),
        20_000,
        "backfill_max_rows_per_second = 4000",
    )
    .await;
    s.write_config(&["a", "big"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_all_over_big(&s.source, stop.clone());
    let mut run = s.start();
    let read_before = s.wait_snapshot_records(4000).await;
    run.kill9();
    // Every record of the second run is handled after this.
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let log = run.log_text();
    assert!(
        !log.contains("initial snapshot published"),
        "the snapshot ended before the kill: nothing to start over"
    );
    // Rows the first snapshot published, deleted while no capture runs: only a reconciling
    // delete can remove them from the target.
    s.source
        .execute(Some("shop"), "delete from big where id <= 300");

    let mut run = s.start();
    run.wait_log("initial snapshot published", 1, LONG);
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    let rows = s.wait_equal(BIG).await;
    s.wait_equal("select concat_ws('|', id, v) from a").await;
    let log = run.log_text();
    assert!(
        log.contains("the new snapshot deletes those the source no longer has"),
        "the second run reconciled the topics of the first: {log}"
    );

    // The second snapshot read each row at most once.
    let brokers = s.broker.brokers();
    let envs: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
        let mut reader = sluice_test_support::TopicReader::new(&brokers, "sluice.shop.big");
        reader.read_to_end(LONG);
        reader.envelopes().into_iter().cloned().collect()
    })
    .await
    .expect("topic reader");
    let mut reads: Vec<i64> = envs
        .iter()
        .filter(|e| e["op"] == "r" && e["ts_ms"].as_i64() > Some(killed_at_ms))
        .filter_map(|e| e["after"]["id"].as_i64())
        .collect();
    let total = reads.len();
    reads.sort_unstable();
    reads.dedup();
    assert_eq!(reads.len(), total, "a row was read twice by one snapshot");
    assert!(
        reads.iter().all(|id| *id > 300),
        "the second snapshot read a deleted row"
    );
    // Nor did it publish again a row state a change of the same run had published: a sink
    // would write that state twice.
    let mut last_change: std::collections::HashMap<i64, &serde_json::Value> = Default::default();
    let mut repeated = Vec::new();
    for e in envs
        .iter()
        .filter(|e| e["ts_ms"].as_i64() > Some(killed_at_ms))
    {
        let Some(id) = e["after"]["id"].as_i64().or(e["before"]["id"].as_i64()) else {
            continue;
        };
        match e["op"].as_str() {
            Some("r") => {
                if last_change.get(&id) == Some(&&e["after"]) {
                    repeated.push(id);
                }
            }
            _ => {
                last_change.insert(id, &e["after"]);
            }
        }
    }
    assert!(
        repeated.is_empty(),
        "the snapshot published again the state a change had published, keys {repeated:?}"
    );
    println!(
        "MySQL 8 initial snapshot under {rounds} rounds of writes, killed after {read_before} \
         records and started over: big equal ({rows} rows); {total} rows read by the second \
         snapshot, none twice, none repeating a change's row"
    );
    assert!(run.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_initial_snapshot_cut_by_a_source_crash_starts_over_and_deletes_what_it_lost() {
    // The source crashes while the running Sluice (frozen meanwhile) is reading its initial
    // snapshot, and rows that snapshot already published are deleted before Sluice notices.
    // Its next session takes a new snapshot, which must delete them: they are neither in it
    // nor in the stream after it.
    let mut s = Setup::on(
        MariaDb::start_mysql8(),
        20_000,
        "backfill_max_rows_per_second = 2500",
    )
    .await;
    s.write_config(&["a", "big"]);
    let run = s.start();
    s.wait_snapshot_records(3000).await;
    run.freeze(true);
    assert!(
        !run.log_text().contains("initial snapshot published"),
        "the snapshot ended before the crash: nothing to start over"
    );
    s.source.kill9();
    s.source.start_again();
    s.source
        .execute(Some("shop"), "delete from big where id <= 600");
    run.freeze(false);
    run.wait_log("initial snapshot; it starts over", 1, LONG);
    run.wait_log("initial snapshot published", 1, LONG);
    let rows = s.wait_equal(BIG).await;
    let mut run = run;
    assert!(run.stop(LONG).success());
    println!(
        "MySQL 8 initial snapshot cut by a source crash, started over: big equal ({rows} rows)"
    );
}
