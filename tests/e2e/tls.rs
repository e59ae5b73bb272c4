//! TLS to the databases: Postgres, MariaDB and MySQL 8 servers that accept Sluice's user only
//! over TLS, with a CA and server certificates the test makes; capture (snapshot and stream)
//! and apply run with `sslmode = "verify-full"`, and a wrong CA, a wrong host name and a
//! server without TLS are refused by `sluice check` with the setting to change.

use std::path::Path;
use std::time::Duration;

use sluice_test_support::sluice::DB_PASSWORD;
use sluice_test_support::tls::TestCa;
use sluice_test_support::{Broker, MariaDb, PgCluster, TempDir};

use crate::common::{
    assert_refused, kafka_section, sink_section, sluice_check, source_section, start_in,
    table_maps, wait_same_rows, Workdir,
};

/// Clients may use plaintext as `postgres` (the test's own connections) but only TLS, and
/// a password, as `sluice`: a Sluice that did not encrypt could not log in.
const HBA: &str = "local all all trust
hostnossl all postgres 127.0.0.1/32 trust
hostnossl replication postgres 127.0.0.1/32 trust
hostssl all sluice 127.0.0.1/32 scram-sha-256
hostssl replication sluice 127.0.0.1/32 scram-sha-256
";

/// The variable the MySQL tests name in `password_env`.
const PASSWORD_ENV: &str = "SLUICE_TEST_DB_PASSWORD";

/// A cluster that serves `cert`/`key` and the [`HBA`] rules, with a `sluice` superuser.
async fn tls_cluster(cert: &Path, key: &Path, hba: &Path) -> PgCluster {
    let quoted = |p: &Path| format!("'{}'", p.display());
    let pg = PgCluster::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &quoted(cert)),
        ("ssl_key_file", &quoted(key)),
        ("hba_file", &quoted(hba)),
    ]);
    pg.connect("postgres")
        .await
        .batch_execute(&format!(
            "create role sluice login superuser replication password '{DB_PASSWORD}'"
        ))
        .await
        .expect("create role sluice");
    pg
}

/// A `postgres = { … }` value for Sluice's user with these TLS settings; the password is in
/// `password` next to the certificates.
fn connection(pg: &PgCluster, host: &str, db: &str, tls: &str) -> String {
    format!(
        "{{ host = \"{host}\", port = {}, user = \"sluice\", database = \"{db}\", password_file = \"{}\", {tls} }}",
        pg.port(),
        password_file().display()
    )
}

/// A file holding [`DB_PASSWORD`] (written once per test process).
fn password_file() -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("sluice-test-pw-{}", std::process::id()));
    if !file.is_file() {
        std::fs::write(&file, format!("{DB_PASSWORD}\n")).expect("write password file");
    }
    file
}

fn verify(mode: &str, ca: &Path) -> String {
    format!("sslmode = \"{mode}\", sslrootcert = \"{}\"", ca.display())
}

/// `sluice check` on a config whose only source is `source`: (exit code, output).
fn check(dir: &Path, broker: &Broker, source: &str) -> (i32, String) {
    let config = dir.join("check.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n[sources.app]\npostgres = {source}\ntables = [\"public.items\"]\n",
            broker.brokers()
        ),
    )
    .expect("write config");
    let (code, text) = sluice_check(&config);
    assert!(!text.contains("panicked"), "sluice panicked: {text}");
    (code, text)
}

/// Whether every session of `sluice` on the server is encrypted (and there is one).
async fn sessions_encrypted(pg: &PgCluster) -> (i64, i64) {
    let row = pg
        .connect("postgres")
        .await
        .query_one(
            "select count(*) filter (where s.ssl), count(*) filter (where not s.ssl)
               from pg_stat_ssl s join pg_stat_activity a using (pid) where a.usename = 'sluice'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_capture_and_apply_over_verify_full_tls() {
    let dir = TempDir::new("tls-pg");
    let ca = TestCa::new(&dir.path().join("certs"), "Sluice test CA");
    let (cert, key) = ca.issue("server", &["127.0.0.1", "localhost"]);
    let (elsewhere_cert, elsewhere_key) = ca.issue("elsewhere", &["db.elsewhere.example"]);
    let hba = dir.path().join("certs").join("pg_hba.conf");
    std::fs::write(&hba, HBA).expect("write pg_hba.conf");
    let other_ca = TestCa::new(&dir.path().join("other"), "Another CA");
    ca.give_to("postgres");

    let source = tls_cluster(&cert, &key, &hba).await;
    let target = tls_cluster(&cert, &key, &hba).await;
    let src = source
        .database_with(
            "app",
            "create table items (id int primary key, name text, amount numeric(12,2));
             insert into items select g, 'item ' || g, g * 1.5 from generate_series(1, 500) g;",
        )
        .await;
    let dst = target
        .database_with(
            "warehouse",
            "create table items (id int primary key, name text, amount numeric(12,2));",
        )
        .await;
    let broker = Broker::start();
    let full = verify("verify-full", &ca.ca_file());
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "[kafka]\nbrokers = \"{}\"\npartitions = 2\n\n\
             [sources.app]\npostgres = {}\ntables = [\"public.items\"]\ncheckpoint_interval_ms = 200\n\n\
             [sinks.target]\npostgres = {}\n\n[[sinks.target.tables]]\nfrom = \"public.items\"\n",
            broker.brokers(),
            connection(&source, "127.0.0.1", "app", &full),
            connection(&target, "127.0.0.1", "warehouse", &full),
        ),
    )
    .expect("write config");

    let mut sluice = start_in(dir.path(), &[]);
    // The stream, after the snapshot: inserts, updates, deletes.
    src.batch_execute(
        "insert into items select g, 'item ' || g, g * 1.5 from generate_series(501, 1000) g;
         update items set name = name || ' (updated)' where id % 7 = 0;
         delete from items where id % 11 = 0;",
    )
    .await
    .expect("changes");
    let rows = "select id::text || '|' || name || '|' || amount::text from items";
    let counts = wait_same_rows("items over TLS", || async {
        let a = crate::common::column::<String>(&src, rows).await;
        let b = crate::common::column::<String>(&dst, rows).await;
        vec![(a, b)]
    })
    .await;
    assert_eq!(counts, vec![910]);
    // Every session Sluice holds (control, replication, apply) is encrypted.
    for (side, pg) in [("source", &source), ("target", &target)] {
        let (encrypted, plain) = sessions_encrypted(pg).await;
        assert!(encrypted > 0, "{side}: no sluice session");
        assert_eq!(plain, 0, "{side}: a sluice session is not encrypted");
    }
    sluice.stop(Duration::from_secs(30));

    let refused = |pg: &PgCluster, tls: &str, reasons: &[&str]| {
        let (code, text) = check(
            dir.path(),
            &broker,
            &connection(pg, "127.0.0.1", "app", tls),
        );
        assert_eq!(code, 1, "{text}");
        for reason in reasons {
            assert!(text.contains(reason), "{reason:?} not in: {text}");
        }
    };
    // A CA that did not sign the server's certificate.
    let wrong_ca = verify("verify-full", &other_ca.ca_file());
    refused(
        &source,
        &wrong_ca,
        &["not signed by a CA", "set sslrootcert"],
    );

    // A certificate for another host name: verify-full refuses it, verify-ca accepts it.
    let elsewhere = tls_cluster(&elsewhere_cert, &elsewhere_key, &hba).await;
    elsewhere
        .database_with("app", "create table items (id int primary key)")
        .await;
    refused(
        &elsewhere,
        &full,
        &["does not name the host", "sslmode = \"verify-ca\""],
    );
    let ca_only = verify("verify-ca", &ca.ca_file());
    let (code, text) = check(
        dir.path(),
        &broker,
        &connection(&elsewhere, "127.0.0.1", "app", &ca_only),
    );
    assert_eq!(code, 0, "verify-ca checks the CA only: {text}");

    // A server without TLS, where TLS is required.
    let plain = PgCluster::start();
    plain
        .database_with(
            "app",
            &format!("create role sluice login superuser replication password '{DB_PASSWORD}'; create table items (id int primary key)"),
        )
        .await;
    refused(&plain, "sslmode = \"require\"", &["does not accept TLS"]);
}

/// A MySQL-family server that serves a certificate of `ca` for 127.0.0.1, with a `sluice`
/// user that may log in only over TLS, a `shop.items` source and a `copy.items` target.
fn mysql_with_tls(start: fn(&[&str]) -> MariaDb, ca: &TestCa) -> MariaDb {
    let (cert, key) = ca.issue("mysql", &["127.0.0.1", "localhost"]);
    let server = start(&[
        &format!("--ssl-ca={}", ca.ca_file().display()),
        &format!("--ssl-cert={}", cert.display()),
        &format!("--ssl-key={}", key.display()),
    ]);
    server.execute(
        None,
        &format!("create user 'sluice'@'%' identified by '{DB_PASSWORD}' require ssl; grant all on *.* to 'sluice'@'%';
         create database shop; create database copy;
         create table shop.items (id int primary key, name varchar(100), amount decimal(12,2));
         create table copy.items (id int primary key, name varchar(100), amount decimal(12,2));
         insert into shop.items values (1, 'one', 1.5), (2, 'two', 3.0), (3, 'three', 4.5);"),
    );
    server
}

/// `mysql = { … }` for the `sluice` user with these TLS settings.
fn mysql_connection(server: &MariaDb, db: &str, tls: &str) -> String {
    format!(
        "mysql = {{ host = \"127.0.0.1\", port = {}, user = \"sluice\", database = \"{db}\", password_env = \"{PASSWORD_ENV}\", {tls} }}",
        server.port()
    )
}

async fn mysql_capture_and_apply_over_tls(start: fn(&[&str]) -> MariaDb) {
    std::env::set_var(PASSWORD_ENV, DB_PASSWORD);
    let w = Workdir::new("tls-mysql");
    let ca = TestCa::new(&w.dir.path().join("certs"), "Sluice test CA");
    let server = mysql_with_tls(start, &ca);
    let full = verify("verify-full", &ca.ca_file());
    let sections = source_section(
        "shop",
        &mysql_connection(&server, "shop", &full),
        &["shop.items"],
        "",
    ) + &sink_section("copy", &mysql_connection(&server, "copy", &full), "")
        + &table_maps("copy", &[("shop.items", "copy.items")]);
    w.configure(2, "", &sections);
    let mut sluice = w.start();
    server.execute(
        Some("shop"),
        "insert into items values (4, 'four', 6.0), (5, 'five', 7.5);
         update items set name = 'ONE' where id = 1; delete from items where id = 2;",
    );
    let rows = "select concat_ws('|', id, name, amount) from items order by id";
    let counts = wait_same_rows("items over TLS", || async {
        vec![(server.query("shop", rows), server.query("copy", rows))]
    })
    .await;
    assert_eq!(counts, vec![4]);
    sluice.stop(Duration::from_secs(30));

    // A CA that did not sign the server's certificate: named, with the setting.
    let other = TestCa::new(&w.dir.path().join("other"), "Another CA");
    let wrong = verify("verify-full", &other.ca_file());
    std::fs::write(
        &w.config,
        kafka_section(&w.broker.brokers(), 2, "")
            + &source_section(
                "shop",
                &mysql_connection(&server, "shop", &wrong),
                &["shop.items"],
                "",
            ),
    )
    .expect("write config");
    let (code, text) = sluice_check(&w.config);
    assert_refused(code, &text, &["not signed by a CA", "set sslrootcert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_capture_and_apply_over_verify_full_tls() {
    mysql_capture_and_apply_over_tls(MariaDb::start_with).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_capture_and_apply_over_verify_full_tls() {
    mysql_capture_and_apply_over_tls(MariaDb::start_mysql8_with).await;
}
