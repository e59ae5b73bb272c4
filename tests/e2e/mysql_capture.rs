//! MariaDB binlog → broker: every MySQL type with its edge values through the snapshot and
//! the stream (the two must agree), DDL mid-stream, and a purged checkpoint position refused
//! with the way out.

use std::path::Path;

use serde_json::{json, Value};
use sluice_test_support::{Flavor, MariaDb, SluiceProcess, TopicReader};

use crate::common::{
    deref_workdir, mariadb_and_mysql8, mysql, source_section, Workdir, LONG, SLUICE,
};

/// A MariaDB (database `shop`), a broker, and a config capturing `tables` of `shop`.
pub struct MyFixture {
    pub db: MariaDb,
    pub work: Workdir,
}

deref_workdir!(MyFixture);

impl MyFixture {
    pub fn new(setup_sql: &str, tables: &[&str], extra_config: &str) -> MyFixture {
        Self::on(MariaDb::start(), setup_sql, tables, extra_config)
    }

    /// The same on a server of the caller's choice (MySQL 8: [`MariaDb::start_mysql8`]).
    pub fn on(db: MariaDb, setup_sql: &str, tables: &[&str], extra_config: &str) -> MyFixture {
        db.execute(None, "create database shop");
        db.execute(Some("shop"), setup_sql);
        let work = Workdir::new("mysql-capture");
        let tables: Vec<String> = tables.iter().map(|t| format!("shop.{t}")).collect();
        work.configure(
            1,
            "",
            &source_section("shop", &mysql(&db, "shop"), &tables, extra_config),
        );
        MyFixture { db, work }
    }

    pub fn reader(&self, table: &str) -> TopicReader {
        TopicReader::new(&self.broker.brokers(), &format!("sluice.shop.{table}"))
    }
}

pub const TYPES: &str = r#"
create table types (
  id int primary key,
  ti tinyint, tiu tinyint unsigned, si smallint, siu smallint unsigned,
  mi mediumint, miu mediumint unsigned, i int, iu int unsigned, bi bigint, biu bigint unsigned,
  dec65 decimal(65,30), f float, d double, b1 bit(1), b12 bit(12), b64 bit(64),
  dt date, tm time(6), dtm datetime(6), ts timestamp(6) null default null, yr year,
  c char(10), vc varchar(100), tx text, bin binary(4), vb varbinary(10), bl blob,
  js json, en enum('small','medium','large'), st set('a','b','c'),
  lat varchar(20) character set latin1
);
"#;

/// The rows, with ids offset by `offset` (0: read by the snapshot, 100: streamed).
pub fn type_rows(offset: i32) -> String {
    let id = |n: i32| n + offset;
    format!(
        "set time_zone = '+00:00'; set sql_mode = '';
insert into types values
 ({}, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
  '-99999999999999999999999999999999999.999999999999999999999999999999', -3.40282e38,
  -1.7976931348623157e308, b'0', b'000000000001', b'0', '1000-01-01', '-838:59:59.000000',
  '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 1901, '', '', '', x'00000000',
  x'', '', '[]', 'small', '', ''),
 ({}, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
  9223372036854775807, 18446744073709551615,
  '99999999999999999999999999999999999.999999999999999999999999999999', 3.40282e38,
  1.7976931348623157e308, b'1', b'111111111111', b'1111111111111111111111111111111111111111111111111111111111111111',
  '9999-12-31', '838:59:59.000000', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999',
  2155, 'abc', 'emoji \u{1F600} \u{fc} \"q\" \\\\ tab\t', repeat('long text ', 500), x'01020000', x'00ff00',
  x'deadbeef', '{{\"a\": [1, 2.5, \"x\"], \"b\": null}}', 'large', 'a,c', 'caf\u{e9}'),
 ({}, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
  null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null),
 ({}, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, '0.000000000000000000000000000001', 0.1, 0.1, b'1',
  b'101', b'1', '0000-00-00', '-00:00:01.500000', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 0,
  'x', 'y', 'z', x'ff', x'00', x'00', '{{}}', 'medium', 'b', 'x');",
        id(1),
        id(2),
        id(3),
        id(4)
    )
}

/// The `after` image each row must have (without its id).
pub fn expected(n: i32) -> Value {
    match n {
        1 => json!({
            "ti": -128, "tiu": 0, "si": -32768, "siu": 0, "mi": -8388608, "miu": 0,
            "i": -2147483648i64, "iu": 0, "bi": i64::MIN, "biu": 0,
            "dec65": "-99999999999999999999999999999999999.999999999999999999999999999999",
            "f": -3.40282e38, "d": -1.7976931348623157e308, "b1": "0", "b12": "000000000001",
            "b64": "0".repeat(64), "dt": "1000-01-01", "tm": "-838:59:59.000000",
            "dtm": "1000-01-01T00:00:00.000000", "ts": "1970-01-01T00:00:01.000000Z", "yr": 1901,
            "c": "", "vc": "", "tx": "", "bin": "AAAAAA==", "vb": "", "bl": "", "js": [],
            "en": "small", "st": "", "lat": ""
        }),
        2 => json!({
            "ti": 127, "tiu": 255, "si": 32767, "siu": 65535, "mi": 8388607, "miu": 16777215,
            "i": 2147483647, "iu": 4294967295u64, "bi": i64::MAX, "biu": u64::MAX,
            "dec65": "99999999999999999999999999999999999.999999999999999999999999999999",
            "f": 3.40282e38, "d": 1.7976931348623157e308, "b1": "1", "b12": "111111111111",
            "b64": "1".repeat(64), "dt": "9999-12-31", "tm": "838:59:59.000000",
            "dtm": "9999-12-31T23:59:59.999999", "ts": "2038-01-19T03:14:07.999999Z", "yr": 2155,
            "c": "abc", "vc": "emoji \u{1F600} \u{fc} \"q\" \\ tab\t", "tx": "long text ".repeat(500),
            "bin": "AQIAAA==", "vb": "AP8A", "bl": "3q2+7w==",
            "js": {"a": [1, 2.5, "x"], "b": null}, "en": "large", "st": "a,c", "lat": "caf\u{e9}"
        }),
        3 => {
            let mut all = expected(2);
            for v in all.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                *v = Value::Null;
            }
            all
        }
        _ => json!({
            "ti": -1, "tiu": 1, "si": -1, "siu": 1, "mi": -1, "miu": 1, "i": -1, "iu": 1,
            "bi": -1, "biu": 1, "dec65": "0.000000000000000000000000000001", "f": 0.1, "d": 0.1,
            "b1": "1", "b12": "000000000101", "b64": format!("{}1", "0".repeat(63)),
            // Zero dates have no instant: null (documented).
            "dt": null, "tm": "-00:00:01.500000", "dtm": null, "ts": null, "yr": 0,
            "c": "x", "vc": "y", "tx": "z", "bin": "/wAAAA==", "vb": "AA==", "bl": "AA==",
            "js": {}, "en": "medium", "st": "b", "lat": "x"
        }),
    }
}

/// Once the binlog streams: writes 4 `types` rows (ids 101 to 104), updates 102, deletes 103;
/// reads until `reader` holds `records` records, then stops `sluice`.
pub fn stream_type_changes(
    f: &MyFixture,
    reader: &mut TopicReader,
    mut sluice: SluiceProcess,
    records: usize,
) {
    sluice.wait_log("binlog stream started", 1, LONG);
    f.db.execute(Some("shop"), &type_rows(100));
    f.db.execute(
        Some("shop"),
        "set time_zone = '+00:00'; update types set mi = -5, ts = '2001-02-03 04:05:06.7' where id = 102; delete from types where id = 103;",
    );
    reader.read_until(LONG, "4 streamed rows, an update, a delete", |r| {
        r.len() >= records
    });
    assert!(sluice.stop(LONG).success());
}

/// The envelope of `envs` with operation `op` on row `id`.
pub fn event<'a>(envs: &[&'a Value], op: &str, id: i64) -> &'a Value {
    envs.iter()
        .find(|e| e["op"] == op && (e["after"]["id"] == id || e["before"]["id"] == id))
        .unwrap_or_else(|| panic!("no {op} event for id {id} in {envs:#?}"))
}

pub fn without_id(row: &Value) -> Value {
    let mut row = row.clone();
    if let Some(o) = row.as_object_mut() {
        o.remove("id");
    }
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mysql_type_round_trips_through_snapshot_and_binlog() {
    let f = MyFixture::new(TYPES, &["types"], "");
    f.db.execute(Some("shop"), &type_rows(0));
    let sluice = f.start();
    let mut reader = f.reader("types");
    reader.read_until(LONG, "4 snapshot rows", |r| r.len() >= 4);
    stream_type_changes(&f, &mut reader, sluice, 10);
    let envs = reader.envelopes();
    let find = |op: &str, id: i64| event(&envs, op, id);
    for n in 1..=4 {
        let snap = find("r", n as i64);
        assert_eq!(without_id(&snap["after"]), expected(n), "snapshot row {n}");
        assert_eq!(snap["source"]["connector"], "mysql");
        assert_eq!(snap["source"]["snapshot"], true);
        let streamed = find("c", 100 + n as i64);
        assert_eq!(
            without_id(&streamed["after"]),
            expected(n),
            "streamed row {n}"
        );
        assert!(streamed["source"]["gtid"]
            .as_str()
            .is_some_and(|g| g.starts_with("0-1-")));
        assert!(streamed["source"]["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("binlog.")));
    }
    let update = find("u", 102);
    assert_eq!(
        without_id(&update["before"]),
        expected(2),
        "update before image"
    );
    let mut after = expected(2);
    after["mi"] = json!(-5);
    after["ts"] = json!("2001-02-03T04:05:06.700000Z");
    assert_eq!(without_id(&update["after"]), after, "update after image");
    let delete = find("d", 103);
    assert_eq!(
        without_id(&delete["before"]),
        expected(3),
        "delete before image"
    );
    assert_eq!(delete["after"], Value::Null);
    // Keys are the primary key; positions increase through the stream.
    let streamed: Vec<&&Value> = envs.iter().filter(|e| e["op"] != "r").collect();
    let positions: Vec<(String, u64, u64)> = streamed
        .iter()
        .map(|e| {
            let s = &e["source"];
            (
                s["file"].as_str().unwrap_or_default().to_owned(),
                s["pos"].as_u64().unwrap_or(0),
                s["row"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "stream positions must increase");
    assert_eq!(reader.records[0].key, Some(json!({"id": 1})));
}

mariadb_and_mysql8!(
    ddl_mid_stream,
    ddl_mid_stream_changes_the_columns_of_later_events_only,
    mysql8_ddl_mid_stream_changes_the_columns_of_later_events_only
);

async fn ddl_mid_stream(db: MariaDb) {
    let f = MyFixture::on(
        db,
        "create table t (id int primary key, a int, b varchar(10))",
        &["t"],
        "",
    );
    let mut sluice = f.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    let mut reader = f.reader("t");
    f.db.execute(
        Some("shop"),
        "insert into t values (1, 1, 'one');
         alter table t add column c int not null default 7;
         insert into t values (2, 2, 'two', 8);
         update t set a = 10 where id = 1;
         alter table t drop column b;
         insert into t values (3, 3, 9);
         alter table t modify column a bigint;
         insert into t values (4, 1099511627776, 10);
         truncate table t;
         insert into t values (5, 5, 5);",
    );
    reader.read_until(LONG, "6 changes and a truncate", |r| r.len() >= 7);
    assert!(sluice.stop(LONG).success());
    let envs = reader.envelopes();
    let afters: Vec<&Value> = envs.iter().map(|e| &e["after"]).collect();
    assert_eq!(*afters[0], json!({"id": 1, "a": 1, "b": "one"}));
    assert_eq!(*afters[1], json!({"id": 2, "a": 2, "b": "two", "c": 8}));
    assert_eq!(*afters[2], json!({"id": 1, "a": 10, "b": "one", "c": 7}));
    assert_eq!(
        envs[2]["before"],
        json!({"id": 1, "a": 1, "b": "one", "c": 7})
    );
    assert_eq!(*afters[3], json!({"id": 3, "a": 3, "c": 9}));
    assert_eq!(*afters[4], json!({"id": 4, "a": 1099511627776i64, "c": 10}));
    assert_eq!(envs[5]["op"], "t", "{:#?}", envs[5]);
    assert_eq!(*afters[6], json!({"id": 5, "a": 5, "c": 5}));
}

mariadb_and_mysql8!(
    purged_checkpoint_position,
    a_purged_checkpoint_position_is_refused_with_the_way_out,
    mysql8_a_purged_checkpoint_position_is_refused_with_the_way_out
);

async fn purged_checkpoint_position(db: MariaDb) {
    let f = MyFixture::on(db, "create table t (id int primary key)", &["t"], "");
    f.db.execute(Some("shop"), "insert into t values (1)");
    let mut sluice = f.start();
    sluice.wait_snapshot_checkpointed(LONG);
    let mut reader = f.reader("t");
    f.db.execute(Some("shop"), "insert into t values (2)");
    reader.read_until(LONG, "the snapshot row and a streamed row", |r| {
        r.len() >= 2
    });
    assert!(sluice.stop(LONG).success());

    // The server moves on and purges the file the checkpoint points into.
    f.db.execute(
        Some("shop"),
        "insert into t values (3); flush binary logs; insert into t values (4); flush binary logs;",
    );
    let logs = f.db.query("shop", "show binary logs");
    let last = logs
        .last()
        .and_then(|l| l.split('\t').next())
        .expect("a binlog file")
        .to_owned();
    // MariaDB keeps a file until InnoDB has made its transactions durable (its binlog
    // checkpoint): purge until the server lets go of the first file.
    sluice_test_support::wait_for("the server to purge the first binlog file", LONG, || {
        f.db.execute(Some("shop"), &format!("purge binary logs to '{last}'"));
        let first = f.db.query("shop", "show binary logs");
        let gone = first.first().is_some_and(|l| l.starts_with(&last));
        async move { gone.then_some(()) }
    })
    .await;

    let (status, _out, err) = sluice_test_support::sluice::run_to_end(
        Path::new(SLUICE),
        &["run", "--config", f.config.to_str().unwrap_or_default()],
        LONG,
    );
    assert!(
        !status.success(),
        "a purged position must stop capture: {err}"
    );
    assert!(err.contains("purged"), "{err}");
    assert!(err.contains("--resnapshot shop"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The way out works: a new snapshot brings every row.
    let mut sluice = f.start_with(&["--resnapshot", "shop"]);
    reader.read_until(LONG, "4 rows of the new snapshot", |r| {
        r.iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r"))
            .count()
            >= 5
    });
    assert!(sluice.stop(LONG).success());
}

/// A table added to a stopped MariaDB source has its existing rows backfilled when capture
/// starts again (through the signal table it creates), then its changes streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_a_mysql_source_is_backfilled_then_streamed() {
    let f = MyFixture::new(
        "create table t (id int primary key); create table u (id int primary key)",
        &["t"],
        "",
    );
    f.db.execute(
        Some("shop"),
        "insert into t values (1); insert into u values (1)",
    );
    let mut sluice = f.start();
    sluice.wait_snapshot_checkpointed(LONG);
    let mut reader = f.reader("t");
    f.db.execute(Some("shop"), "insert into t values (2)");
    reader.read_until(LONG, "t streamed", |r| r.len() >= 2);
    assert!(sluice.stop(LONG).success());

    f.edit_config(|t| t.replace("tables = [\"shop.t\"]", "tables = [\"shop.t\", \"shop.u\"]"));
    let mut sluice = f.start();
    sluice.wait_log("backfill finished", 1, LONG);
    f.db.execute(Some("shop"), "insert into u values (2)");
    let mut u = f.reader("u");
    u.read_until(LONG, "u's existing row and its new one", |r| r.len() >= 2);
    let mut ops: Vec<(i64, String)> = u
        .envelopes()
        .iter()
        .filter_map(|e| Some((e["after"]["id"].as_i64()?, e["op"].as_str()?.to_owned())))
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        vec![(1, "r".to_owned()), (2, "c".to_owned())],
        "the existing row as a read, the new one as an insert"
    );
    let log = sluice.log_text();
    assert!(
        log.contains("its existing rows will be backfilled"),
        "{log}"
    );
    let signal =
        f.db.query("shop", "select kind from sluice_signal order by kind");
    assert_eq!(signal, vec!["marker".to_owned()], "the watermark row");
    assert!(sluice.stop(LONG).success());
}

mariadb_and_mysql8!(
    table_id_reused_after_restart,
    a_table_id_reused_after_a_server_restart_is_read_afresh,
    mysql8_a_table_id_reused_after_a_server_restart_is_read_afresh,
    [""],
    [""]
);

/// Table ids in the binlog hold for one server run: after a restart the server hands the ids
/// out again, to whichever table is opened first. A capture that resumes before the restart
/// reads the old file (where an id names one table) and then the new one (where it names
/// another), and must read each rows event with its own file's table map.
async fn table_id_reused_after_restart(db: MariaDb, extra_config: &str) {
    let mut f = MyFixture::on(
        db,
        "create table wide (id int primary key, a varchar(50), b bigint, c text);
         create table narrow (id int primary key, n int);",
        &["wide", "narrow"],
        extra_config,
    );
    let mut sluice = f.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    let mut wide = f.reader("wide");
    let mut narrow = f.reader("narrow");
    f.db.execute(
        Some("shop"),
        "insert into wide values (1, 'one', 1, 'first')",
    );
    wide.read_until(LONG, "row 1 of wide", |r| !r.is_empty());
    assert!(sluice.stop(LONG).success());

    // Capture is down: wide changes in this server run, the server restarts, and narrow is
    // the first table written after it. MySQL 8 hands out ids from a counter that its own
    // tables advance, so wide must be the first table opened in a server run too: one more
    // restart before it.
    if f.db.flavor() == Flavor::MySql8 {
        f.db.restart();
    }
    f.db.execute(
        Some("shop"),
        "insert into wide values (2, 'two', 2, 'second')",
    );
    f.db.restart();
    f.db.execute(Some("shop"), "insert into narrow values (1, 10), (2, 20)");
    let ids = |file: &str, table: &str| -> Vec<String> {
        f.db.query("shop", &format!("show binlog events in '{file}'"))
            .into_iter()
            .filter(|l| {
                l.contains(&format!("(`shop`.`{table}`)")) || l.contains(&format!("(shop.{table})"))
            })
            .filter_map(|l| {
                let at = l.find("table_id: ")? + "table_id: ".len();
                Some(l[at..].split_whitespace().next()?.to_owned())
            })
            .collect()
    };
    let files = f.db.query("shop", "show binary logs");
    let names: Vec<String> = files
        .iter()
        .map(|l| l.split('\t').next().expect("file").to_owned())
        .collect();
    let (last, before) = names.split_last().expect("binlog files");
    let wide_ids: Vec<String> = before.iter().flat_map(|f| ids(f, "wide")).collect();
    let narrow_ids = ids(last, "narrow");
    assert!(
        narrow_ids.iter().any(|n| wide_ids.contains(n)),
        "precondition: after the restart narrow has an id wide had before it (wide {wide_ids:?} in {before:?}, narrow {narrow_ids:?} in {last})"
    );

    let _sluice = f.start();
    wide.read_until(LONG, "row 2 of wide", |r| r.len() >= 2);
    narrow.read_until(LONG, "both rows of narrow", |r| r.len() >= 2);
    let rows: Vec<Value> = narrow
        .envelopes()
        .iter()
        .map(|e| e["after"].clone())
        .collect();
    assert_eq!(
        rows,
        vec![json!({"id": 1, "n": 10}), json!({"id": 2, "n": 20})]
    );
    assert_eq!(wide.envelopes()[1]["after"]["c"], json!("second"));
}

/// A capture killed after its initial snapshot reached Kafka but before its first checkpoint
/// starts over with a new snapshot. Rows deleted between the two snapshots are in neither
/// the new snapshot nor the stream that follows it, yet the first snapshot's records of them
/// stay in the topic: a sink would keep them. So the new snapshot also publishes the delete
/// of every key the topic holds alive that it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_between_an_abandoned_snapshot_and_the_next_are_deleted() {
    let f = MyFixture::new(
        "create table t (id int primary key, v int);
         insert into t select seq, seq from seq_1_to_10;",
        &["t"],
        "",
    );
    // No checkpoint for ten minutes: the snapshot reaches Kafka, its checkpoint does not.
    let mut reader = f.abandon_first_snapshot(&["--only", "capture"], || f.reader("t"), 10);

    f.db.execute(Some("shop"), "delete from t where id <= 3");
    f.snapshot_again_without_rows_1_to_3(&["--only", "capture"], &mut reader);
}
