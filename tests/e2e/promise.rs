//! The target equals the source where it used to break: deletes read from a compacted topic,
//! and a key change that leaves a large (TOASTed) value unchanged.

use std::time::Duration;

use sluice_test_support::kafka::Record;
use sluice_test_support::{wait_for, SluiceProcess, TopicReader};

use crate::common::{count, wait_rows};
use crate::pipeline::{Pipeline, WAIT};

/// The table the tests here replicate, the same on both sides.
const ITEMS: &str = "create table items (id int primary key, v text not null)";

/// Table topics that Kafka compacts within a second of a segment rolling.
const FAST_COMPACTION: &str = r#"topic_configs = { "cleanup.policy" = "compact", "segment.ms" = "100", "min.cleanable.dirty.ratio" = "0.0001", "delete.retention.ms" = "86400000" }"#;

/// Segments roll only when a record arrives after `segment.ms`: writes filler rows of other
/// keys (ids from 1000 on) into `items` until `done` says yes of a reader of `topic`.
async fn fill_until(
    p: &Pipeline,
    src: &tokio_postgres::Client,
    topic: &'static str,
    what: &str,
    done: impl Fn(&mut TopicReader) -> bool + Send + Sync + 'static,
) {
    let mut filler = 1000;
    let done = std::sync::Arc::new(done);
    wait_for(what, WAIT, || {
        filler += 10;
        let sql = format!(
            "insert into items select g, 'filler' from generate_series({filler}, {}) g",
            filler + 9
        );
        let brokers = p.broker.brokers();
        let done = done.clone();
        async move {
            src.batch_execute(&sql).await.expect("filler");
            tokio::task::spawn_blocking(move || done(&mut TopicReader::new(&brokers, topic)))
                .await
                .expect("reader")
                .then_some(())
        }
    })
    .await;
}

/// The `id` in a record's key.
fn key_id(r: &Record) -> Option<i64> {
    r.key.as_ref().and_then(|k| k["id"].as_i64())
}

/// Rows 1–5 replicated; apply stopped; rows 1–3 deleted and 4 updated; the broker compacts
/// the topic until the deletes' own records are gone and only their tombstones remain; apply
/// started again. The target must lose rows 1–3 and carry row 4's update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_survive_topic_compaction() {
    let mut p = Pipeline::new(&["items"], ITEMS, ITEMS, "").await;
    p.kafka_extra = FAST_COMPACTION.into();
    p.write_sink("", "[[sinks.target.tables]]\nfrom = \"public.items\"\n");
    let src = p.source_db().await;
    let _capture = applied_then_apply_stopped(&p, &src, 5).await;

    src.batch_execute(
        "delete from items where id <= 3; update items set v = 'changed' where id = 4",
    )
    .await
    .expect("delete and update");
    // Segments roll only when a record arrives after segment.ms: keep writing rows of other
    // keys until every partition holding keys 1–3 rolled and was compacted.
    let topic = "sluice.public.items";
    fill_until(
        &p,
        &src,
        topic,
        "compaction to drop the deletes' records",
        |reader| {
            reader.read_to_end(Duration::from_secs(30));
            let records = &reader.records;
            let deleted = |r: &&Record| key_id(r).is_some_and(|id| id <= 3);
            let envelopes = records
                .iter()
                .filter(deleted)
                .filter(|r| r.value.is_some())
                .count();
            let tombstones = records
                .iter()
                .filter(deleted)
                .filter(|r| r.value.is_none())
                .count();
            envelopes == 0 && tombstones == 3
        },
    )
    .await;

    let _apply = p.run("apply2", &["--only", "apply"]);
    p.wait_equal(WAIT).await;
    let dst = p.target_db().await;
    let left = count(&dst, "select count(*) from items where id <= 3").await;
    assert_eq!(
        left, 0,
        "rows deleted in the source are still in the target"
    );
}

/// Runs capture and apply as two processes until rows 1..=`n` of `items` are in the target,
/// then stops apply; returns capture, still running.
async fn applied_then_apply_stopped(
    p: &Pipeline,
    src: &tokio_postgres::Client,
    n: u32,
) -> SluiceProcess {
    let capture = p.run("capture", &["--only", "capture"]);
    let mut apply = p.run("apply", &["--only", "apply"]);
    src.batch_execute(&format!(
        "insert into items select g, 'v' || g from generate_series(1, {n}) g"
    ))
    .await
    .expect("insert");
    p.wait_equal(WAIT).await;
    apply.stop(Duration::from_secs(30));
    capture
}

/// A sink stopped for longer than a topic's retention: the records after its stored offsets
/// are deleted. It must not jump to what is left (those changes would be lost in silence):
/// each such partition stops, and the log says what was lost and how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_behind_retention_stops_and_says_so() {
    let p = Pipeline::new(&["items"], ITEMS, ITEMS, "").await;
    let src = p.source_db().await;
    // Thirty keys: every one of the three partitions gets a stored offset.
    let _capture = applied_then_apply_stopped(&p, &src, 30).await;

    // While apply is stopped, the topic keeps a second's worth of records: rows 31-60 and then
    // everything written before the filler's last segments are deleted.
    src.batch_execute("insert into items select g, 'v' || g from generate_series(31, 60) g")
        .await
        .expect("insert");
    let topic = "sluice.public.items";
    // Every partition's records up to here must go: its earliest offset must pass its
    // present end (watermarks, not records: retention deletes records under a reader).
    let brokers = p.broker.brokers();
    let ends: Vec<i64> = tokio::task::spawn_blocking(move || {
        let mut reader = TopicReader::new(&brokers, topic);
        reader.read_until(WAIT, "rows 1-60 published", |r| r.len() >= 60);
        reader
            .watermarks()
            .into_iter()
            .map(|(_, end)| end)
            .collect()
    })
    .await
    .expect("reader");
    p.broker.alter_topic_config(
        topic,
        &[
            ("cleanup.policy", "delete"),
            ("retention.ms", "500"),
            ("segment.ms", "100"),
        ],
    );
    fill_until(
        &p,
        &src,
        topic,
        "retention to delete rows 1-60 from the topic",
        move |reader| {
            reader
                .watermarks()
                .iter()
                .zip(&ends)
                .all(|((earliest, _), end)| earliest >= end)
        },
    )
    .await;

    let apply = p.run("apply2", &["--only", "apply"]);
    apply.wait_log("a stored offset is no longer in Kafka", 3, WAIT);
    let dst = p.target_db().await;
    let count = |sql: &'static str| {
        let dst = &dst;
        async move {
            dst.query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    // Written while capture ran: what is in the target is rows 1-30 and nothing after them.
    assert_eq!(
        count("select count(*) from items").await,
        30,
        "the sink skipped ahead"
    );
    let log = apply.log_text();
    assert!(
        log.contains("sluice run --resnapshot"),
        "the way out is named: {log}"
    );
    assert!(
        log.contains("partition=0") && log.contains("records_lost="),
        "the partitions and what they lost are named: {log}"
    );
}

/// An update that changes the key of a row whose large value stays the same (default replica
/// identity: Postgres sends neither the old nor the new value) reaches the target with the
/// value, not NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_keeps_an_unchanged_toasted_value() {
    let schema = "create table docs (id int primary key, title text, body text);
                  alter table docs alter column body set storage external;";
    let p = Pipeline::new(&["docs"], schema, schema, "").await;
    let src = p.source_db().await;
    let _sluice = p.run("sluice", &[]);
    src.batch_execute(
        "insert into docs select g, 't' || g, repeat(md5(g::text), 400) from generate_series(1, 20) g",
    )
    .await
    .expect("insert");
    p.wait_equal(WAIT).await;
    src.batch_execute(
        "update docs set id = id + 100 where id <= 10;
         begin; update docs set id = 200 where id = 11; update docs set title = 'moved' where id = 200; commit;
         update docs set id = 300, title = 'both' where id = 12",
    )
    .await
    .expect("key changes");
    p.wait_equal(WAIT).await;
    let dst = p.target_db().await;
    let blank = count(&dst, "select count(*) from docs where body is null").await;
    assert_eq!(blank, 0, "a key change blanked unchanged large values");
}

/// `sluice run` started while the broker is down waits for it (saying so) instead of
/// exiting, and replicates once the broker is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_a_broker_that_is_not_up_yet() {
    let mut p = Pipeline::new(&["items"], ITEMS, ITEMS, "").await;
    p.broker.kill();
    let mut sluice = p.run("sluice", &[]);
    sluice.wait_log("cannot reach the brokers", 1, WAIT);
    assert!(
        sluice.is_running(),
        "sluice exited while the broker was down"
    );
    p.source_db()
        .await
        .batch_execute("insert into items select g, 'v' || g from generate_series(1, 50) g")
        .await
        .expect("insert");
    p.broker.restart();
    assert_eq!(p.wait_equal(WAIT).await, vec![50]);
}

/// A broker killed with `kill -9` and started again while capture and apply run under writes:
/// the running process reconnects by itself, and the target ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_outlives_a_broker_kill() {
    let mut p = Pipeline::new(&["items"], ITEMS, ITEMS, "").await;
    let _sluice = p.run("sluice", &[]);
    let src = p.source_db().await;
    let writer = crate::common::PacedWriter::start(src, |n| {
        format!("insert into items values ({n}, 'v{n}') on conflict (id) do update set v = 'again'")
    });
    // Rows in the target.
    wait_rows(&p.target_db().await, "select count(*) from items", 200).await;
    p.broker.kill();
    let before = writer.count();
    wait_for("writes while the broker is down", WAIT, || async {
        (writer.count() >= before + 300).then_some(())
    })
    .await;
    p.broker.restart();
    let during = writer.count();
    wait_for("writes after the broker restarted", WAIT, || async {
        (writer.count() >= during + 300).then_some(())
    })
    .await;
    let written = writer.stop().await;
    let counts = p.wait_equal(WAIT).await;
    assert_eq!(counts, vec![written as i64]);
}

/// Target tables linked by a foreign key, fed from a source without one (parents deleted
/// before their children, children moved to parents inserted later): after a backlog built
/// while apply was stopped, the target converges on the source with no dead letter, where
/// partitions applied independently would each wait on a row the other holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_linked_tables_converge_after_a_backlog() {
    linked_tables_after_a_backlog("foreign_key_wait_ms = 20000").await;
}

/// The same with target transactions of a few events: the backlog goes in many slices of
/// whole source transactions, some ending at a source state the target's foreign key refuses
/// (a parent deleted one transaction before its children), which the next attempt goes past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_linked_tables_converge_after_a_backlog_in_small_slices() {
    linked_tables_after_a_backlog("foreign_key_wait_ms = 20000\nmax_batch_events = 2").await;
}

async fn linked_tables_after_a_backlog(sink_settings: &str) {
    let source = "create table institutes (id int primary key, name text not null);
                  create table members (id int primary key, institute_id int not null, name text not null);
                  insert into institutes select g, 'institute ' || g from generate_series(1, 10) g;
                  insert into members select i * 100 + k, i, 'member ' || k
                    from generate_series(1, 10) i, generate_series(0, 9) k;";
    let target = "create table institutes (id int primary key, name text not null);
                  create table members (id int primary key,
                    institute_id int not null references institutes (id), name text not null);";
    let p = Pipeline::new(&["institutes", "members"], source, target, sink_settings).await;
    let _capture = p.run("capture", &["--only", "capture"]);
    let mut apply = p.run("apply", &["--only", "apply"]);
    p.wait_equal(WAIT).await;
    apply.stop(Duration::from_secs(30));

    let src = p.source_db().await;
    for r in 11..=70 {
        let old = r - 10;
        src.batch_execute(&format!(
            "delete from institutes where id = {old};
             begin;
             insert into members select {r} * 100 + k, {r}, 'member ' || k from generate_series(0, 4) k;
             insert into institutes values ({r}, 'institute {r}');
             commit;
             update members set institute_id = {r} where institute_id = {old} and id % 3 = 0;
             delete from members where institute_id = {old};"
        ))
        .await
        .expect("workload round");
    }
    let _apply = p.run("apply2", &["--only", "apply"]);
    let counts = p.wait_equal(WAIT).await;
    assert_eq!(counts[0], 10, "institutes");
    let dead: i64 = p
        .target_db()
        .await
        .query_one("select count(*) from sluice.dead_letters", &[])
        .await
        .expect("dead letters")
        .get(0);
    assert_eq!(dead, 0, "valid changes went to the dead letters");
}
