//! What real servers write goes through the fuzz targets' entry points (`sluice::fuzz`) and is
//! read, not merely survived: every pgoutput message Postgres sends for the type matrix, and
//! every binlog event MariaDB and MySQL 8 write for theirs (inserts, updates, a key change,
//! deletes, a truncate, a DDL). With `SLUICE_FUZZ_SEEDS=<dir>` set, the messages are also
//! written there as the fuzzers' seed corpora (`scripts/fuzz.sh seeds` does this).

use std::path::{Path, PathBuf};

use sluice_test_support::{MariaDb, PgCluster};

use crate::common::mariadb_and_mysql8;

/// Where seeds go, when asked for.
fn seed_dir(target: &str) -> Option<PathBuf> {
    let dir = Path::new(&std::env::var_os("SLUICE_FUZZ_SEEDS")?).join(target);
    std::fs::create_dir_all(&dir).expect("the seed directory");
    Some(dir)
}

fn write_seed(dir: &Option<PathBuf>, name: &str, bytes: &[u8]) {
    if let Some(dir) = dir {
        std::fs::write(dir.join(name), bytes).expect("a seed file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pgoutput_message_of_the_type_matrix_is_read() {
    let pg = PgCluster::start();
    let db = pg.connect("postgres").await;
    let big = "(select string_agg(md5(g::text), '') from generate_series(1, 300) g)";
    db.batch_execute(crate::capture_types::SETUP)
        .await
        .expect("the type matrix");
    for sql in [
        "create publication fz for table types",
        "select pg_create_logical_replication_slot('fz', 'pgoutput')",
    ] {
        db.batch_execute(sql).await.expect("publication and slot");
    }
    db.batch_execute(&crate::capture_types::rows(0))
        .await
        .expect("rows");
    // One transaction each: the TOAST-unchanged update must see the value stored.
    for sql in [
        format!("update types set t = {big} where id = 1"),
        "update types set b = not b where id = 1".into(),
        "update types set id = 50 where id = 3".into(),
        "delete from types where id = 2".into(),
        "alter table types replica identity full".into(),
        "update types set i4 = 7 where id = 1".into(),
        "delete from types where id = 50".into(),
        "alter table types add column extra text".into(),
        "insert into types (id, extra) values (9, 'late')".into(),
        "truncate types".into(),
    ] {
        db.batch_execute(&sql).await.expect("a change");
    }
    let messages = db
        .query(
            "select data from pg_logical_slot_peek_binary_changes('fz', null, null,
               'proto_version', '1', 'publication_names', 'fz')",
            &[],
        )
        .await
        .expect("the slot's messages");
    let seeds = seed_dir("pgoutput");
    let (mut decoded, mut values) = (0, 0);
    for (i, row) in messages.iter().enumerate() {
        let bytes: Vec<u8> = row.get(0);
        let read = sluice::fuzz::pgoutput(&bytes);
        if read > 0 {
            decoded += 1;
            values += read - 1;
        }
        write_seed(&seeds, &format!("pg-{i:03}"), &bytes);
    }
    assert!(messages.len() > 20, "{} messages", messages.len());
    assert_eq!(decoded, messages.len(), "every message decodes");
    assert!(values > 100, "only {values} values decoded");
}

/// `(event type, bytes)` of every event in the server's binlog files.
fn binlog_events(server: &MariaDb) -> Vec<(u8, Vec<u8>)> {
    let mut events = Vec::new();
    for file in server.binlog_files() {
        let bytes = std::fs::read(&file).expect("a binlog file");
        assert_eq!(
            &bytes[..4],
            b"\xfebin",
            "{} is a binlog file",
            file.display()
        );
        let mut at = 4;
        while at + 19 <= bytes.len() {
            let size = u32::from_le_bytes(bytes[at + 9..at + 13].try_into().expect("4 bytes"));
            let end = at + size as usize;
            assert!(
                size >= 19 && end <= bytes.len(),
                "an event at {at} of {size} bytes"
            );
            events.push((bytes[at + 4], bytes[at..end].to_vec()));
            at = end;
        }
    }
    events
}

async fn every_binlog_event_of_the_type_matrix_is_read(server: MariaDb) {
    const FORMAT_DESCRIPTION: u8 = 15;
    const TABLE_MAP: u8 = 19;
    server.execute(None, "create database shop");
    server.execute(Some("shop"), crate::mysql_capture::TYPES);
    server.execute(Some("shop"), &crate::mysql_capture::type_rows(0));
    server.execute(
        Some("shop"),
        "update types set vc = 'changed' where id = 1;
         update types set id = 50 where id = 3;
         delete from types where id = 2;
         alter table types add column extra varchar(10);
         insert into types (id, extra) values (9, 'late');
         truncate table types;",
    );
    let events = binlog_events(&server);
    let fde = events
        .iter()
        .find(|(t, _)| *t == FORMAT_DESCRIPTION)
        .expect("a format description event")
        .1
        .clone();
    let flavor = format!("{:?}", server.flavor()).to_lowercase();
    let seeds = seed_dir("binlog");
    // One seed per rows event: the format description, its table map, the rows.
    let (mut rows_events, mut rows) = (0, 0);
    let mut table_map: Option<&[u8]> = None;
    for (i, (t, bytes)) in events.iter().enumerate() {
        if *t == TABLE_MAP {
            table_map = Some(bytes);
        } else if (23..=25).contains(t) || (30..=32).contains(t) {
            let map = table_map.expect("a table map before a rows event");
            let seed = [fde.as_slice(), map, bytes].concat();
            let read = sluice::fuzz::binlog(&seed);
            // The format description, the table map, the rows event, then its rows.
            assert!(read > 3, "rows event {i} of {flavor}: only {read} read");
            rows_events += 1;
            rows += read - 3;
            write_seed(&seeds, &format!("{flavor}-{i:03}"), &seed);
        }
    }
    // And the whole log as one stream, as far as the entry point reads (64 events).
    let whole: Vec<u8> = events.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(sluice::fuzz::binlog(&whole) >= 64.min(events.len()));
    write_seed(
        &seeds,
        &format!("{flavor}-all"),
        &whole[..whole.len().min(64 * 1024)],
    );
    assert!(rows_events >= 5, "{flavor}: {rows_events} rows events");
    assert!(rows >= 7, "{flavor}: {rows} rows");
}

mariadb_and_mysql8!(
    every_binlog_event_of_the_type_matrix_is_read,
    every_mariadb_binlog_event_of_the_type_matrix_is_read,
    every_mysql8_binlog_event_of_the_type_matrix_is_read
);
