//! Every documented type, with edge values, survives Postgres → Kafka exactly, and a snapshot
//! row encodes the same as a streamed row of the same data.

use serde_json::json;

use crate::common::{Fixture, LONG};

/// A table with every documented type (also used by the whole-pipeline tests).
pub const SETUP: &str = r#"
create type mood as enum ('sad', 'happy');
create table types (
    id int primary key,
    b bool, i2 smallint, i4 int, i8 bigint,
    n numeric, n_scale numeric(12,3), f4 real, f8 double precision,
    t text, vc varchar(20), ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz,
    iv interval, u uuid, j json, jb jsonb, by bytea,
    arr_i int[], arr_t text[], arr_empty int[], arr_2d int[][], m mood
);
"#;

pub fn rows(offset: i32) -> String {
    format!(
        r#"
insert into types values
 ({a}, true, -32768, 2147483647, -9223372036854775808,
  '123456789012345678901234567890.123456789', 1.5, 'Infinity', 'NaN',
  E'h\u00e9llo 😀 "q" \\ \n tab\t', 'x', '2024-02-29 23:59:59.999999', '2024-01-01 00:00:00+05',
  '0001-01-01', '00:00:00', '12:34:56.789+05:30', '1 year 2 months 3 days 04:05:06.5',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, 2.5, null]}}', '{{"b": true}}', '\x00ff',
  '{{1,NULL,3}}', '{{"a,b","c\"d",NULL}}', '{{}}', '{{{{1,2}},{{3,4}}}}', 'happy'),
 ({b}, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
  null, null, null, null, null, null, null, null, null, null),
 ({c}, false, 0, 0, 9223372036854775807, 'NaN', -0.001, 1.5, '-Infinity', '', '',
  '-infinity', 'infinity', '0044-03-15 BC', '23:59:59.999999', '00:00:00-02', '-1 days',
  '00000000-0000-0000-0000-000000000000', 'null', '[]', '\x', '{{-1}}', '{{""}}', '{{}}', '{{}}', 'sad');
"#,
        a = 1 + offset,
        b = 2 + offset,
        c = 3 + offset
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_snapshot_and_stream() {
    let f = Fixture::new(&["types"], SETUP).await;
    let db = f.client().await;
    db.batch_execute(&rows(0)).await.expect("snapshot rows");
    let mut sluice = f.start();
    let mut reader = f.reader("types");
    reader.read_until(LONG, "3 snapshot rows", |r| r.len() >= 3);
    db.batch_execute(&rows(100)).await.expect("streamed rows");
    reader.read_until(LONG, "3 streamed rows", |r| r.len() >= 6);
    sluice.stop(LONG);

    let envs = reader.envelopes();
    let by_id = |id: i64| {
        envs.iter()
            .find(|e| e["after"]["id"] == id)
            .unwrap_or_else(|| panic!("no event for id {id}"))
    };
    let first = by_id(1);
    assert_eq!(first["op"], "r");
    assert_eq!(first["source"]["snapshot"], true);
    let a = &first["after"];
    let expected = [
        ("b", json!(true)),
        ("i2", json!(-32768)),
        ("i4", json!(2147483647)),
        ("i8", json!(i64::MIN)),
        ("n", json!("123456789012345678901234567890.123456789")),
        ("n_scale", json!("1.500")),
        ("f4", json!("Infinity")),
        ("f8", json!("NaN")),
        ("t", json!("h\u{e9}llo 😀 \"q\" \\ \n tab\t")),
        ("ts", json!("2024-02-29T23:59:59.999999")),
        ("tstz", json!("2023-12-31T19:00:00.000000Z")),
        ("d", json!("0001-01-01")),
        ("tm", json!("00:00:00.000000")),
        ("tmtz", json!("12:34:56.789000+05:30")),
        ("iv", json!("P1Y2M3DT4H5M6.5S")),
        ("u", json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        ("j", json!({"a": [1, 2.5, null]})),
        ("jb", json!({"b": true})),
        ("by", json!("AP8=")),
        ("arr_i", json!([1, null, 3])),
        ("arr_t", json!(["a,b", "c\"d", null])),
        ("arr_empty", json!([])),
        ("arr_2d", json!([[1, 2], [3, 4]])),
        ("m", json!("happy")),
    ];
    for (column, value) in expected {
        assert_eq!(a[column], value, "column {column}");
    }

    let nulls = &by_id(2)["after"];
    let obj = nulls.as_object().expect("object");
    assert_eq!(obj.len(), 26, "every column present: {nulls}");
    assert!(obj
        .iter()
        .filter(|(k, _)| *k != "id")
        .all(|(_, v)| v.is_null()));

    let third = &by_id(3)["after"];
    assert_eq!(third["i8"], json!(i64::MAX));
    assert_eq!(third["n"], "NaN");
    assert_eq!(third["n_scale"], "-0.001");
    assert_eq!(third["f4"], 1.5);
    assert_eq!(third["f8"], "-Infinity");
    assert_eq!(third["t"], "");
    assert_eq!(third["ts"], "-infinity");
    assert_eq!(third["tstz"], "infinity");
    assert_eq!(
        third["d"], "-0043-03-15",
        "a BC date as an astronomical year"
    );
    assert_eq!(third["tmtz"], "00:00:00.000000-02:00");
    assert_eq!(third["iv"], "P-1D");
    assert_eq!(third["j"], json!(null));
    assert_eq!(third["jb"], json!([]));
    assert_eq!(third["by"], "");
    assert_eq!(third["arr_t"], json!([""]));

    // The stream encodes exactly like the snapshot.
    for id in 1..=3 {
        let snap = &by_id(id)["after"];
        let streamed = by_id(id + 100);
        assert_eq!(streamed["op"], "c");
        assert_eq!(streamed["source"]["snapshot"], false);
        let mut streamed_after = streamed["after"].clone();
        streamed_after["id"] = json!(id);
        assert_eq!(
            &streamed_after, snap,
            "row {id}: stream and snapshot differ"
        );
    }
    // Keys are the primary key as JSON.
    let rec = reader
        .records
        .iter()
        .find(|r| r.value.as_ref().is_some_and(|v| v["after"]["id"] == 1))
        .expect("record");
    assert_eq!(rec.key, Some(json!({"id": 1})));
}
