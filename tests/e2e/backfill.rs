//! Incremental backfill and re-sync: a table added to a running pipeline is backfilled while
//! the other tables keep flowing, a crash resumes it after its last chunk, rows written while
//! they are backfilled end right, and `sluice snapshot --where` heals exactly its key range.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_test_support::sluice::run_to_end;
use sluice_test_support::TopicReader;

use crate::common::{column, count, logged_number, wait_count, LONG, SLUICE};
use crate::pipeline::Pipeline;

const LOAD_TABLES: [&str; 3] = ["a", "b", "c"];

const SQL: &str = "create table a (id int primary key, v text);
                   create table b (id int primary key, v text);
                   create table c (id int primary key, v text);
                   create table big (id int primary key, v text, n int8);";

fn mappings(tables: &[&str]) -> String {
    tables
        .iter()
        .map(|t| format!("[[sinks.target.tables]]\nfrom = \"public.{t}\"\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_table_is_backfilled_under_load_and_resumes_after_a_crash() {
    let mut p = Pipeline::new(&LOAD_TABLES, SQL, SQL, "").await;
    // The rate limit makes the backfill last at least 10 s, so the crash below, once 10,000
    // rows are checkpointed, lands in its middle however fast the machine is.
    p.source_extra = "backfill_chunk_rows = 1000\nbackfill_max_rows_per_second = 10000".into();
    p.write_sink("", &mappings(&LOAD_TABLES));
    let src = p.source_db().await;
    src.batch_execute(
        "insert into big select g, md5(g::text), g * 7 from generate_series(1, 100000) g",
    )
    .await
    .expect("big rows");
    let mut sluice = p.run("sluice", &[]);

    // A steady load on a, b and c: one row each every 10 ms, with the time it was written.
    let written: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (written, stop) = (written.clone(), stop.clone());
        let db = p.source_db().await;
        tokio::spawn(async move {
            let mut id = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                id += 1;
                db.batch_execute(&format!(
                    "insert into a values ({id}, 'a'); insert into b values ({id}, 'b'); \
                     insert into c values ({id}, 'c');"
                ))
                .await
                .expect("load insert");
                written.lock().expect("lock").push(Instant::now());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            id
        })
    };
    // Apply lag of the loaded tables: how long ago the oldest row not yet in the target was
    // written, sampled every 100 ms.
    let max_lag = Arc::new(Mutex::new(Duration::ZERO));
    let watcher = {
        let (written, stop, max_lag) = (written.clone(), stop.clone(), max_lag.clone());
        let dst = p.target_db().await;
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for t in LOAD_TABLES {
                    let have: i32 = dst
                        .query_one(&format!("select coalesce(max(id), 0) from {t}"), &[])
                        .await
                        .expect("max id")
                        .get(0);
                    let lag = written
                        .lock()
                        .expect("lock")
                        .get(have as usize)
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    let mut m = max_lag.lock().expect("lock");
                    *m = (*m).max(lag);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let dst = p.target_db().await;
    sluice_test_support::wait_for("the load flowing", LONG, || async {
        (count(&dst, "select count(*) from c").await > 50).then_some(())
    })
    .await;

    // Add `big` to the source and the sink, and reload.
    p.tables.push("big".into());
    p.write_sink("", &mappings(&["a", "b", "c", "big"]));
    let (status, out, err) = run_to_end(
        std::path::Path::new(SLUICE),
        &["reload", "--config", p.config.to_str().expect("utf-8 path")],
        LONG,
    );
    assert!(status.success(), "sluice reload: {out}{err}");
    sluice.wait_log("backfill started", 1, LONG);

    // Crash in the middle of the backfill, once a checkpoint recorded 10,000 rows of it.
    let brokers = p.broker.brokers();
    let progress = tokio::task::spawn_blocking(move || {
        let mut reader = TopicReader::new(&brokers, "sluice.__sluice_capture.app");
        let rows = |r: &sluice_test_support::kafka::Record| {
            r.value.as_ref()?["backfills"][0]["rows"].as_u64()
        };
        reader.read_until(LONG, "backfill progress in a checkpoint", |records| {
            records.iter().any(|r| rows(r).is_some_and(|n| n >= 10_000))
        });
        reader.records.iter().filter_map(rows).max().unwrap_or(0)
    })
    .await
    .expect("checkpoint reader");
    sluice.kill9();
    let before_crash = sluice.log_text();
    let lag_before_crash = *max_lag.lock().expect("lock");
    let applied_at_crash = count(&dst, "select count(*) from big").await;
    assert!(
        !before_crash.contains("backfill finished"),
        "the backfill finished before the crash; nothing to resume"
    );
    let mut sluice = p.run("sluice-after-crash", &[]);
    sluice.wait_log("backfill finished", 1, LONG);
    // The reader logs its total on its own thread, not always before the stream's "finished".
    sluice.wait_log("backfill read complete", 1, LONG);
    let log = sluice.log_text();
    assert!(
        log.contains("backfill resumed"),
        "before the crash:\n{before_crash}\nafter:\n{log}"
    );
    let reread = logged_number(&log, "backfill read complete", "rows_read").expect("rows_read");
    assert!(
        reread < 100_000,
        "the resumed backfill read {reread} rows: it started over instead of after its last chunk"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer.await.expect("writer");
    watcher.await.expect("watcher");
    let counts = p.wait_equal(LONG).await;
    assert_eq!(
        counts,
        vec![last as i64, last as i64, last as i64, 100_000],
        "a, b, c, big"
    );
    let max_lag = *max_lag.lock().expect("lock");
    println!(
        "backfill under load: max apply lag of the loaded tables {:.2} s during the backfill, \
         {:.2} s including the crash and restart; a checkpoint held {progress} backfilled rows \
         at the crash ({applied_at_crash} applied); {reread} read after it",
        lag_before_crash.as_secs_f64(),
        max_lag.as_secs_f64()
    );
    assert!(
        max_lag < Duration::from_secs(60),
        "apply lag of the other tables reached {max_lag:?} during the backfill"
    );
    assert!(sluice.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_while_backfilled_end_as_the_source_has_them() {
    let mut p = Pipeline::new(&["a"], SQL, SQL, "").await;
    p.source_extra = "backfill_chunk_rows = 200".into();
    let api = format!("127.0.0.1:{}", sluice_test_support::free_port());
    let http = format!("\n[http]\nlisten = \"{api}\"\n");
    p.write_sink("", &(mappings(&["a"]) + &http));
    let src = p.source_db().await;
    src.batch_execute(
        "insert into big select g, 'v' || g, 0 from generate_series(1, 20000) g;
         insert into a values (1, 'a');",
    )
    .await
    .expect("rows");
    let mut sluice = p.run("sluice", &[]);
    p.wait_equal(LONG).await;

    // `sluice reload` refuses an invalid config and signals nothing.
    p.edit_config(|t| t.replace("tables = [", "tables = 7 # ["));
    let (status, out, err) = run_to_end(
        std::path::Path::new(SLUICE),
        &["reload", "--config", p.config.to_str().expect("utf-8 path")],
        LONG,
    );
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("tables"), "the error names the field: {err}");
    assert!(err.contains("not asked to reload"), "{err}");

    p.tables.push("big".into());
    p.write_sink("", &(mappings(&["a", "big"]) + &http));
    // Updates, deletes and inserts spread over every chunk's key range, while it is read.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = p.source_db().await;
        tokio::spawn(async move {
            let mut round = 0i64;
            // At most 1,500 rounds: on a loaded machine an endless writer could keep the stream,
            // and so the backfill's markers, behind for longer than the test waits.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && round < 1500 {
                round += 1;
                db.batch_execute(&format!(
                    "update big set n = n + 1, v = 'u{round}' where id % 1999 = {m};
                     delete from big where id = {d};
                     insert into big values ({new}, 'new', {round}) on conflict (id) do update set n = -1;",
                    m = round % 1999,
                    d = (round * 7919) % 20000 + 1,
                    new = 20000 + round,
                ))
                .await
                .expect("writes");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            round
        })
    };
    let (status, out, err) = run_to_end(
        std::path::Path::new(SLUICE),
        &[
            "reload",
            "--config",
            p.config.to_str().expect("utf-8 path"),
            "--wait",
        ],
        LONG,
    );
    assert!(status.success(), "sluice reload --wait: {out}{err}");
    assert!(out.contains("every table backfilled"), "{out}{err}");
    assert!(
        sluice.log_text().contains("backfill finished"),
        "reload --wait returned before the backfill finished"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    let counts = p.wait_equal(LONG).await;
    let log = sluice.log_text();
    let superseded =
        logged_number(&log, "backfill finished", "superseded").expect("superseded count");
    println!(
        "{rounds} rounds of writes during the backfill; {superseded} chunk rows superseded by \
         newer changes; {} rows in big",
        counts[1]
    );
    assert!(
        superseded > 0,
        "no chunk row met a concurrent change: the test did not exercise the rule\n{log}"
    );
    // The backfill's progress is in /metrics: every row its log says it read.
    let read = logged_number(&log, "backfill read complete", "rows_read").expect("rows read");
    let (_, metrics) = sluice_test_support::http_get(&api, "/metrics", None).expect("metrics");
    let gauge = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("sluice_backfill_rows_read{source=\"app\",table=\"public.big\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(gauge, Some(read as f64), "{metrics}");
    assert!(sluice.stop(LONG).success());
}

/// `sluice snapshot --wait` of the rows of `big` that `predicate` selects.
fn snapshot_big_where<'a>(config: &'a str, predicate: &'a str) -> [&'a str; 8] {
    [
        "snapshot", "--config", config, "--table", "big", "--where", predicate, "--wait",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_where_heals_exactly_its_key_range() {
    let rows = "insert into big select g, 'v' || g, g from generate_series(1, 1000) g";
    let (p, mut sluice, _) = Pipeline::equal_after(&["big"], SQL, rows).await;
    let src = p.source_db().await;

    // Damage the target inside and outside the range 100–199.
    let dst = p.target_db().await;
    dst.batch_execute(
        "delete from big where id between 120 and 139;
         update big set v = 'damaged' where id between 190 and 210 or id between 500 and 505;",
    )
    .await
    .expect("damage");

    let config = p.config.to_str().expect("utf-8 path");
    let (status, out, err) = run_to_end(
        std::path::Path::new(SLUICE),
        &[
            "snapshot", "--config", config, "--table", "big", "--where", "nope = 1",
        ],
        LONG,
    );
    assert!(!status.success(), "a bad predicate is refused: {out}{err}");
    assert!(err.contains("does not work on public.big"), "{err}");

    let (status, out, err) = run_to_end(
        std::path::Path::new(SLUICE),
        &snapshot_big_where(config, "id between 100 and 199"),
        LONG,
    );
    assert!(status.success(), "sluice snapshot: {out}{err}");
    assert!(out.contains("100 row(s) match"), "{out}");
    assert!(out.contains("finished"), "{out}");
    // The re-read rows are in Kafka; wait until the sink applied them.
    let healed = "select count(*) from big where id between 100 and 199 and v = 'v' || id";
    wait_count(&dst, healed, |n| n == 100).await;
    let damaged: Vec<i32> =
        column(&dst, "select id from big where v = 'damaged' order by id").await;
    let expected: Vec<i32> = (200..=210).chain(500..=505).collect();
    assert_eq!(damaged, expected, "only the requested range is re-read");
    assert_eq!(count(&dst, "select count(*) from big").await, 1000);

    // A predicate that stops working between the request and the read (it names a table
    // dropped meanwhile) abandons the re-sync, and `--wait` says so with the reason instead
    // of reporting it finished.
    assert!(sluice.stop(LONG).success());
    src.batch_execute("create table helper (id int)")
        .await
        .expect("helper");
    let mut waiter = std::process::Command::new(SLUICE)
        .args(snapshot_big_where(config, "exists (select 1 from helper)"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice snapshot");
    let mut out = std::io::BufReader::new(waiter.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("queued") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("snapshot output");
        assert!(n > 0, "sluice snapshot ended before queueing its request");
    }
    src.batch_execute("drop table helper")
        .await
        .expect("drop helper");
    let mut sluice = p.run("sluice-after-drop", &[]);
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = waiter.try_wait().expect("snapshot status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice snapshot --wait never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut waiter.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("was abandoned") && err.contains("helper"),
        "{err}"
    );
    assert!(sluice.stop(LONG).success());
}
