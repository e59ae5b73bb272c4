//! The whole pipeline, source Postgres → broker → target Postgres: equality after a mixed
//! workload, crashes without loss or double application, a target restart, poison events, two
//! apply processes in one group, and misconfigurations.

use std::time::{Duration, Instant};

use crate::common::{audit, count, table_maps, wait_count, AUDIT, LONG};
use crate::pipeline::{seed, workload_round, Pipeline, SCHEMA, WAIT};

const TABLES: [&str; 3] = ["types", "accounts", "lines"];

/// Rounds of [`workload_round`] until at least `changes` row changes were made.
async fn workload(db: &mut tokio_postgres::Client, changes: u64) -> (i64, u64) {
    let (mut rounds, mut made) = (0, 0);
    while made < changes {
        made += workload_round(db, rounds).await;
        rounds += 1;
    }
    (rounds, made)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_mixed_changes_arrive_equal() {
    let p = Pipeline::new(&TABLES, &SCHEMA, &SCHEMA, "").await;
    let mut src = p.source_db().await;
    seed(&src, 3334).await;
    let mut sluice = p.run("sluice", &[]);
    // The snapshot holds exactly the seeded rows; everything after is streamed.
    sluice.wait_log("replication stream started", 1, LONG);
    let t = Instant::now();
    let (rounds, changes) = workload(&mut src, 50_000).await;
    let counts = p.wait_equal(WAIT).await;
    println!(
        "10k snapshot rows + {changes} changes in {rounds} transactions: target equal after {:?}, rows now {counts:?}",
        t.elapsed()
    );
    let status = sluice.stop(LONG);
    assert!(status.success(), "clean stop: {status:?}");
    let dst = p.target_db().await;
    let dead = count(&dst, "select count(*) from sluice.dead_letters").await;
    assert_eq!(dead, 0, "no dead letters in a clean run");
    // The truncate of round 30 reached the target once.
    let truncates = count(&dst, "select count(*) from sluice.truncates_done").await;
    assert_eq!(truncates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_five_times_loses_nothing_and_applies_nothing_twice() {
    let p = Pipeline::new(&TABLES, &SCHEMA, &format!("{}{AUDIT}", *SCHEMA), "").await;
    let mut src = p.source_db().await;
    seed(&src, 3334).await;
    let dst = p.target_db().await;
    let mut sluice = p.run("sluice", &[]);
    // Crash only once the snapshot is checkpointed: a crash during the snapshot takes it
    // again (documented), which re-applies identical rows.
    wait_count(&dst, "select count(*) from accounts", |n| n >= 3334).await;
    sluice.wait_snapshot_checkpointed(LONG);

    let writer = tokio::spawn(async move {
        let mut made = 0;
        let mut r = 0;
        while made < 50_000 {
            made += workload_round(&mut src, r).await;
            r += 1;
            // Spread the workload over the kills below.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        made
    });
    let mut seed = (std::process::id() as u64) ^ 0x9e37_79b9;
    let mut kills = Vec::new();
    for _ in 0..5 {
        // A random moment 0.3–2 s into this run.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 300 + (seed >> 33) % 1700;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        sluice.kill9();
        kills.push(ms);
        // The killed processes stay members of the consumer group until their sessions
        // (6 s) expire; Kafka's coordinator then hands their partitions to the live member,
        // which the equality wait below waits for.
        sluice = p.run("sluice", &[]);
    }
    let changes = writer.await.expect("writer");
    let counts = p.wait_equal(WAIT).await;
    sluice.stop(LONG);
    let (applied, twice, regressed) = audit(&dst).await;
    println!(
        "{changes} changes, kill -9 after {kills:?} ms: target equal ({counts:?} rows), {applied} account versions applied, {twice} twice, {regressed} regressions"
    );
    assert_eq!(twice, 0, "a row version was applied twice");
    assert_eq!(regressed, 0, "a row went back to an older version");
    // The status tables, written with the rows, count every event applied exactly once
    // across the kills: as many as the distinct change events the topics hold (capture
    // publishes again after a crash, with the same positions; truncates are no row changes).
    let mut delivered = std::collections::HashSet::new();
    for t in TABLES {
        let mut topic = sluice_test_support::TopicReader::new(
            &p.broker.brokers(),
            &format!("sluice.public.{t}"),
        );
        topic.read_all(LONG);
        for v in topic.records.iter().filter_map(|r| r.value.as_ref()) {
            if v["op"] != "t" {
                let s = &v["source"];
                delivered.insert((t, s["commit_lsn"].to_string(), s["seq"].to_string()));
            }
        }
    }
    let counted = count(
        &dst,
        "select coalesce(sum(upserts + updates + deletes + dead_letters), 0)::bigint
           from sluice.table_totals where sink = 'target'",
    )
    .await;
    assert_eq!(counted as usize, delivered.len(), "table_status counts");
    let history = count(
        &dst,
        "select coalesce(sum(events), 0)::bigint from sluice.history_totals where sink = 'target'",
    )
    .await;
    assert_eq!(history as usize, delivered.len(), "sync_history counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_mid_stream_converges() {
    let mut p = Pipeline::new(&TABLES, &SCHEMA, &SCHEMA, "").await;
    let mut src = p.source_db().await;
    seed(&src, 1000).await;
    let sluice = p.run("sluice", &[]);
    p.wait_equal(WAIT).await;
    // Stop the target, keep writing, wait until sluice has noticed, then bring it back.
    p.target.stop();
    let mut made = 0;
    for r in 0..5 {
        made += workload_round(&mut src, r).await;
    }
    sluice.wait_log("target write failed; retrying", 1, LONG);
    p.target.restart();
    for r in 5..10 {
        made += workload_round(&mut src, r).await;
    }
    let counts = p.wait_equal(WAIT).await;
    println!("{made} changes across a target restart: equal, rows {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_go_to_dead_letters_and_the_rest_applies() {
    // The target refuses negative quantities; the source does not.
    let target_schema = SCHEMA.replace("qty int not null,", "qty int not null check (qty >= 0),");
    let p = Pipeline::new(&["lines"], &SCHEMA, &target_schema, "").await;
    let (src, sluice) = p
        .start_after("insert into lines select g, 1, g % 5, 'ok' from generate_series(1, 500) g")
        .await;
    sluice.wait_log("replication stream started", 1, LONG);
    // Bad rows among good ones, in the same transactions.
    src.batch_execute(
        "insert into lines select g, 2, case when g % 100 = 0 then -1 else 7 end, 'mixed'
           from generate_series(1, 500) g;
         update lines set qty = -5 where order_id = 7 and line = 1;",
    )
    .await
    .expect("mixed rows");
    // A record that is not a change envelope at all.
    produce_garbage(&p.broker.brokers(), "sluice.public.lines");
    src.batch_execute("insert into lines values (100000, 1, 1, 'marker')")
        .await
        .expect("marker");

    let dst = p.target_db().await;
    // Everything else arrives: 500 + 495 good rows + the marker.
    wait_count(&dst, "select count(*) from lines", |n| n == 500 + 495 + 1).await;
    let dead = sluice_test_support::wait_for("7 dead letters", LONG, || async {
        let rows = dst
            .query(
                "select coalesce(sqlstate, ''), error, value from sluice.dead_letters order by id",
                &[],
            )
            .await
            .ok()?;
        (rows.len() >= 7).then_some(rows)
    })
    .await;
    let constraint: Vec<_> = dead
        .iter()
        .filter(|r| r.get::<_, String>(0) == "23514")
        .collect();
    // five inserts with qty -1 and the update to -5
    assert_eq!(constraint.len(), 6, "refused by the CHECK constraint");
    assert!(constraint
        .iter()
        .all(|r| r.get::<_, String>(1).contains("lines_qty_check")));
    assert!(dead
        .iter()
        .any(|r| r.get::<_, String>(1).contains("not a JSON change envelope")));
    assert_eq!(dead.len(), 7);
    // The refused update of order 7 line 1 left the row as it was (qty 2).
    let qty: i32 = dst
        .query_one("select qty from lines where order_id = 7 and line = 1", &[])
        .await
        .expect("row 7")
        .get(0);
    assert_eq!(qty, 2, "the refused update left the old row");
    // The target's error quotes the row; that stays in the table, out of the log.
    let log = sluice.log_text();
    assert!(log.contains("recorded in sluice.dead_letters"), "{log}");
    assert!(
        !log.contains("mixed"),
        "a row value reached the log:\n{log}"
    );
}

fn produce_garbage(brokers: &str, topic: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    producer
        .send(
            BaseRecord::to(topic)
                .key("{\"order_id\":1,\"line\":9}")
                .payload("not json {"),
        )
        .map_err(|(e, _)| e)
        .expect("send garbage");
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apply_processes_share_the_partitions() {
    let p = Pipeline::new(&TABLES, &SCHEMA, &SCHEMA, "workers = 2").await;
    let mut src = p.source_db().await;
    seed(&src, 1000).await;
    // An apply process started before capture waits for the topics capture creates.
    let mut a = p.run("apply-a", &["--only", "apply"]);
    a.wait_log("waiting for the sink's topics", 1, LONG);
    let mut capture = p.run("capture", &["--only", "capture"]);
    capture.wait_log("replication stream started", 1, LONG);
    a.wait_log("partitions assigned", 1, LONG);
    let mut b = p.run("apply-b", &["--only", "apply"]);
    // b joins the group: the partitions are split between the two.
    b.wait_log("partitions assigned", 1, LONG);
    let (_, changes) = workload(&mut src, 10_000).await;
    let counts = p.wait_equal(WAIT).await;
    let last_assignment = |log: &str| {
        log.lines()
            .rfind(|l| l.contains("partitions assigned"))
            .map(|l| l.matches('@').count())
            .unwrap_or(0)
    };
    let (na, nb) = (
        last_assignment(&a.log_text()),
        last_assignment(&b.log_text()),
    );
    println!("{changes} changes through two apply processes ({na} + {nb} partitions): equal, rows {counts:?}");
    assert_eq!(
        na + nb,
        9,
        "every partition of the three topics is assigned once"
    );
    assert!(
        na > 0 && nb > 0,
        "both processes got partitions: {na} and {nb}"
    );
    for s in [&mut a, &mut b, &mut capture] {
        assert!(s.stop(LONG).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_ignore_leaves_the_target_as_it_is() {
    let p = Pipeline::new(&["lines"], &SCHEMA, &SCHEMA, "truncate = \"ignore\"").await;
    let (src, sluice) = p
        .start_after("insert into lines select g, 1, 1, 'before' from generate_series(1, 100) g")
        .await;
    p.wait_equal(WAIT).await;
    src.batch_execute(
        "truncate lines; insert into lines select g, 2, 2, 'after' from generate_series(1, 10) g",
    )
    .await
    .expect("truncate and insert");
    let dst = p.target_db().await;
    // The rows written after the truncate arrive.
    wait_count(
        &dst,
        "select count(*) from lines where note = 'after'",
        |n| n == 10,
    )
    .await;
    let before = count(&dst, "select count(*) from lines where note = 'before'").await;
    assert_eq!(before, 100, "truncate = ignore keeps the target's rows");
    assert!(!sluice.log_text().contains("truncate reached"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_sinks_are_explained() {
    let p = Pipeline::new(
        &["lines"],
        &SCHEMA,
        "create table other (id int primary key, label text)",
        "",
    )
    .await;
    let check = |p: &Pipeline| {
        sluice_test_support::sluice::run_to_end(
            std::path::Path::new(crate::common::SLUICE),
            &["check", "--config", p.config.to_str().expect("path")],
            LONG,
        )
    };
    // A mapping from a table no source captures: the config itself is invalid.
    p.write_sink("", "[[sinks.target.tables]]\nfrom = \"public.nope\"\n");
    let (status, _, err) = check(&p);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("sinks.target.tables[0].from"), "{err}");
    assert!(err.contains("not captured by any source"), "{err}");

    // A target table that does not exist.
    p.write_sink("", "[[sinks.target.tables]]\nfrom = \"public.lines\"\n");
    let (status, out, _) = check(&p);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("target table public.lines does not exist"),
        "{out}"
    );

    // A renamed column the target does not have.
    p.write_sink(
        "",
        "[[sinks.target.tables]]\nfrom = \"public.lines\"\nto = \"public.other\"\ncolumns = { id = \"order_id\", lable = \"note\" }\n",
    );
    let (status, out, _) = check(&p);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("sinks.target.tables[0].columns"), "{out}");
    assert!(out.contains("\"lable\""), "{out}");

    // Credentials the target refuses: the message names the section to fix; no panic.
    let text = std::fs::read_to_string(&p.config).expect("config");
    let bad = text.replacen(
        "user = \"postgres\", database = \"warehouse\"",
        "user = \"nobody\", database = \"warehouse\"",
        1,
    );
    assert_ne!(bad, text);
    std::fs::write(&p.config, bad).expect("write");
    let (status, out, err) = check(&p);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.contains("[sinks.target.postgres]"), "{out}");
    assert!(out.contains("nobody"), "{out}");
    assert!(!err.contains("panicked"), "{err}");

    // `run` refuses to start on the same problems, with exit status 1.
    let (status, _, err) = sluice_test_support::sluice::run_to_end(
        std::path::Path::new(crate::common::SLUICE),
        &[
            "run",
            "--only",
            "apply",
            "--config",
            p.config.to_str().expect("path"),
        ],
        LONG,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
}

/// Numbers inside json and jsonb values keep every digit: a 30-digit integer, a 400-digit one
/// and a long decimal arrive in the target as the source has them (no float rounding, no
/// "number out of range" dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_inside_json_documents_keep_every_digit() {
    let big = format!("1{}", "7".repeat(399));
    let rows = format!(
        r#"insert into docs values
             (1, '{{"n": 123456789012345678901234567890, "d": 0.1000000000000000055511151231257827}}', '[1e400]'),
             (2, '{{"n": {big}}}', '{{"m": -{big}}}');"#
    );
    let (p, _sluice, counts) = Pipeline::equal_after(
        &["docs"],
        "create table docs (id int primary key, jb jsonb, j json)",
        &rows,
    )
    .await;
    assert_eq!(counts, vec![2]);
    let dst = p.target_db().await;
    let dead: i64 = count(&dst, "select count(*) from sluice.dead_letters").await;
    assert_eq!(dead, 0);
    let n: String = dst
        .query_one("select jb->>'n' from docs where id = 2", &[])
        .await
        .expect("doc")
        .get(0);
    assert_eq!(n, big);
}

/// Values over 1 MB (a 3 MB text and a 1.5 MB bytea) go through capture, Kafka and apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_one_megabyte_arrive_whole() {
    let rows = "insert into blobs values
                  (1, repeat('0123456789abcdef', 196608), decode(repeat('00ff', 786432), 'hex')),
                  (2, 'small', '\\x01');";
    let (p, _sluice, counts) = Pipeline::equal_after(
        &["blobs"],
        "create table blobs (id int primary key, t text, b bytea)",
        rows,
    )
    .await;
    assert_eq!(counts, vec![2]);
    let dst = p.target_db().await;
    let sizes: (i32, i32) = {
        let r = dst
            .query_one("select length(t), length(b) from blobs where id = 1", &[])
            .await
            .expect("sizes");
        (r.get(0), r.get(1))
    };
    assert_eq!(sizes, (3_145_728, 1_572_864));
}

/// A row whose change event is over `kafka.max_message_bytes` does not stop capture: it
/// becomes a dead letter naming the limit and the fix, in its place in the key's order, and
/// every other change flows; a delete of such a row (its old row over the limit under
/// REPLICA IDENTITY FULL) still deletes, by its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_max_message_bytes_is_a_dead_letter_and_the_rest_flows() {
    let schema = "create table docs (id int primary key, t text);
                  alter table docs replica identity full;";
    let mut p = Pipeline::new(&["docs"], schema, schema, "").await;
    p.kafka_extra = "max_message_bytes = 100000".into();
    p.write_sink("", &table_maps("target", &[("public.docs", "")]));
    let big = "repeat('0123456789', 20000)";
    let (src, sluice) = p
        .start_after(&format!(
            "insert into docs values (1, 'small'), (2, {big}), (3, 'small');"
        ))
        .await;
    sluice.wait_log("replication stream started", 1, LONG);
    src.batch_execute(&format!(
        "insert into docs values (4, {big});
         update docs set t = {big} where id = 3;
         update docs set t = 'still small' where id = 1;
         delete from docs where id = 3;
         insert into docs values (5, 'after');"
    ))
    .await
    .expect("streamed changes");
    let dst = p.target_db().await;
    wait_count(&dst, "select count(*) from docs where id = 5", |n| n == 1).await;
    let dead = sluice_test_support::wait_for("3 dead letters", LONG, || async {
        let rows = dst
            .query("select error from sluice.dead_letters order by id", &[])
            .await
            .ok()?;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    // Rows 2 and 4 (inserts) and the update of row 3; its delete went by key.
    assert_eq!(dead.len(), 3);
    for d in &dead {
        let error: String = d.get(0);
        assert!(
            error.contains("over kafka.max_message_bytes = 100000")
                && error.contains("sluice snapshot --table public.docs"),
            "{error}"
        );
    }
    let rows: Vec<(i32, String)> = dst
        .query("select id, t from docs order by id", &[])
        .await
        .expect("target rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, "still small".to_string()), (5, "after".to_string())]
    );
    assert!(sluice
        .log_text()
        .contains("larger than kafka.max_message_bytes"));
}
