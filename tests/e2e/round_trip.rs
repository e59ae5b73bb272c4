//! Every value Sluice captures, Sluice applies: the whole type matrix with extreme values goes
//! source → Kafka → target of the same kind, through the snapshot and the stream (updates
//! that leave large values unchanged included), and every row is compared. Postgres →
//! Postgres; MariaDB → MariaDB and MySQL 8 → MySQL 8 (one server, two databases).

use sluice_test_support::{Flavor, MariaDb};

use crate::common::{mariadb_and_mysql8, mysql, sink_section, source_section, table_maps, Workdir};
use crate::pipeline::Pipeline;

/// Values at the edges of each Postgres type, beyond the capture type test's rows.
const PG_EXTREMES: &str = r#"
insert into types (id, n, n_scale, f4, f8, ts, tstz, d, tm, tmtz, iv, j, jb, t, by, arr_t, i8) values
 -- a 400-digit number inside jsonb and json, and as a numeric; BC dates and times
 (1001, ('1' || repeat('0', 399))::numeric, -999999999.999, '-0', 2.2250738585072014e-308,
  '4713-01-01 00:00:00 BC', '0044-03-15 12:00:00+00 BC', '4713-01-01 BC', '24:00:00', '24:00:00+15:59',
  '-178000000 years', ('{"n": ' || '1' || repeat('0', 399) || ', "s": "\u00e9"}')::json,
  ('{"n": ' || '9' || repeat('9', 399) || '.5, "e": 1e-300, "deep": [[[[[]]]]]}')::jsonb,
  '', '\x', '{"", "NULL", null, "a\\b", "{}"}', -9223372036854775808),
 -- infinities and NaN everywhere they exist; the far future
 (1002, 'Infinity', 'NaN', '-Infinity', 'Infinity', '294276-12-31 23:59:59.999999',
  '294276-12-31 23:59:59.999999+00', '5874897-12-31', '00:00:00', '00:00:00-15:59',
  '178000000 years', '[]', '{}', repeat('€', 400000), decode(repeat('00ff', 600000), 'hex'),
  '{}', 9223372036854775807),
 (1003, '-Infinity', 0, 'NaN', 'NaN', '-infinity', 'infinity', '-infinity', '23:59:59.999999',
  '23:59:59.999999+00', '-1 microseconds', 'null', '"\ud83d\ude00 \"q\" \\"',
  repeat(md5('x'), 40000), '\x00', '{" spaces ", "\"quoted\"", "comma,inside"}', 0);
"#;

/// Postgres → Postgres: the capture type test's rows (snapshot and stream) and the extremes,
/// then updates that leave the large values unchanged, a key change and a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_type_matrix_with_extreme_values_round_trips() {
    let p = Pipeline::new(
        &["types"],
        crate::capture_types::SETUP,
        crate::capture_types::SETUP,
        "",
    )
    .await;
    let snapshot = format!("{}{PG_EXTREMES}", crate::capture_types::rows(0));
    let (src, sluice) = p.start_after(&snapshot).await;
    sluice.wait_log("replication stream started", 1, crate::common::LONG);
    let streamed = PG_EXTREMES.replace("(100", "(200");
    src.batch_execute(&format!("{}{streamed}", crate::capture_types::rows(100)))
        .await
        .expect("streamed rows");
    src.batch_execute(
        "update types set i4 = 1 where id in (1002, 1003, 2002);
         update types set id = 3001 where id = 2003;
         delete from types where id = 101;",
    )
    .await
    .expect("updates");
    assert_eq!(p.wait_equal(crate::common::LONG).await, vec![11]);
    let dst = p.target_db().await;
    let dead = crate::common::count(&dst, "select count(*) from sluice.dead_letters").await;
    assert_eq!(dead, 0);
}

/// The MySQL-family type matrix's extremes, beyond the capture type test's rows.
const MY_EXTREMES: &str = "set time_zone = '+00:00';
insert into types (id, dec65, f, d, tx, bl, js, vc, dtm, tm) values
 (1001, '0.000000000000000000000000000000', -1.17549e-38, 2.2250738585072014e-308,
  repeat('€', 300000), repeat(x'00ff', 600000),
  '{\"n\": 1000000000000000000000000000000000000000000000000000000000000001, \"s\": \"\u{e9}\"}',
  '\\\\ \\' \" `', '2000-02-29 12:00:00.000001', '00:00:00.000001'),
 (1002, '-0.000000000000000000000000000001', 1.17549e-38, -2.2250738585072014e-308, '', '',
  '[[[[[]]]]]', '', '1970-01-01 00:00:00.000000', '-00:00:00.000001');";

async fn mysql_type_matrix_round_trips(server: MariaDb) {
    server.execute(None, "create database shop; create database warehouse");
    server.execute(Some("shop"), crate::mysql_capture::TYPES);
    server.execute(Some("warehouse"), crate::mysql_capture::TYPES);
    server.execute(
        Some("shop"),
        &format!("{}{MY_EXTREMES}", crate::mysql_capture::type_rows(0)),
    );
    let work = Workdir::new("mysql-round-trip");
    let sections = source_section("shop", &mysql(&server, "shop"), &["types"], "")
        + &sink_section("warehouse", &mysql(&server, "warehouse"), "")
        + &table_maps("warehouse", &[("shop.types", "warehouse.types")]);
    work.configure(3, "", &sections);
    let sluice = work.start();
    sluice.wait_log("binlog stream started", 1, crate::common::LONG);
    server.execute(
        Some("shop"),
        &format!(
            "{}{}",
            crate::mysql_capture::type_rows(100),
            MY_EXTREMES.replace("(100", "(200")
        ),
    );
    server.execute(
        Some("shop"),
        "update types set i = 1 where id in (1001, 2002);
         update types set id = 3001 where id = 103;
         delete from types where id = 101;",
    );
    // Every column as the server prints it, the two large ones by their md5. MariaDB keeps
    // JSON as the text written: it is compared normalized (its spacing is not its value; nor
    // is the spelling of an escape, `\u00e9` or `é`, which normalizing keeps, hence none in
    // the rows above). Zero dates are published as null: they have no ISO form.
    let json = match server.flavor() {
        Flavor::MariaDb => "json_normalize(js)",
        Flavor::MySql8 => "js",
    };
    let all = &format!(
        "set sql_mode = '';
         select id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec65, f, d, b1, b12, b64,
           nullif(dt, '0000-00-00'), tm, nullif(dtm, '0000-00-00 00:00:00'),
           nullif(ts, '0000-00-00 00:00:00'), yr, c, vc, md5(tx), bin, vb, md5(bl), {json},
           en, st, lat from types"
    );
    let counts =
        crate::common::wait_same_rows("the target database against the source", || async {
            vec![(server.query("shop", all), server.query("warehouse", all))]
        })
        .await;
    assert_eq!(counts, vec![11]);
    let dead = server.query("warehouse", "select count(*) from sluice_dead_letters");
    assert_eq!(dead, vec!["0".to_string()], "no dead letter");
    drop(sluice);
}

mariadb_and_mysql8!(
    mysql_type_matrix_round_trips,
    mariadb_type_matrix_with_extreme_values_round_trips,
    mysql8_type_matrix_with_extreme_values_round_trips
);
