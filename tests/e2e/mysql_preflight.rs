//! `sluice check` on a MariaDB and a MySQL 8 source: every problem that would stop binlog
//! capture is named with its fix (binlog settings, grants, tables), and `run` refuses to start
//! on them.

use std::path::Path;

use sluice_test_support::sluice::run_to_end;
use sluice_test_support::{Broker, Flavor, MariaDb, TempDir};

use crate::common::{assert_refused, LONG, SLUICE};

fn check(
    broker: &Broker,
    server: &MariaDb,
    user: &str,
    tables: &str,
    dir: &TempDir,
) -> (i32, String) {
    let config = dir.path().join(format!("{user}-{}.toml", server.port()));
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n[sources.directory]\nmysql = {{ host = \"127.0.0.1\", port = {}, user = \"{user}\", database = \"app\" }}\ntables = [{tables}]\n",
            broker.brokers(),
            server.port()
        ),
    )
    .expect("config");
    let (status, out, err) = run_to_end(
        Path::new(SLUICE),
        &["check", "--config", config.to_str().expect("path")],
        LONG,
    );
    assert!(!err.contains("panicked"), "{err}");
    (status.code().unwrap_or(-1), out)
}

/// A server of `flavor` with extra options.
fn server(flavor: Flavor, extra: &[&str]) -> MariaDb {
    match flavor {
        Flavor::MariaDb => MariaDb::start_with(extra),
        Flavor::MySql8 => MariaDb::start_mysql8_with(extra),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_source_problems_are_explained() {
    source_problems_are_explained(Flavor::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_source_problems_are_explained() {
    source_problems_are_explained(Flavor::MySql8).await;
}

async fn source_problems_are_explained(flavor: Flavor) {
    // The grant that lets a user read binlog positions has another name on each server.
    let monitor = match flavor {
        Flavor::MariaDb => "binlog monitor",
        Flavor::MySql8 => "replication client",
    };
    let broker = Broker::start();
    let dir = TempDir::new("mysql-preflight");

    // A well-configured server: only the table problems are reported.
    let good = server(flavor, &[]);
    good.execute(
        None,
        &format!(
            "create database app;
             create table app.users (id int primary key, name text);
             create table app.logs (line text);
             create view app.names as select name from app.users;
             create user 'plain'@'%';
             grant select on app.* to 'plain'@'%';
             create user 'capture'@'%';
             grant select on app.* to 'capture'@'%';
             grant replication slave, {monitor} on *.* to 'capture'@'%';"
        ),
    );
    // The grants the README documents are enough: the key is seen, nothing else is reported.
    let (code, out) = check(&broker, &good, "capture", "\"users\"", &dir);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("no primary key"), "{out}");
    let (code, out) = check(&broker, &good, "root", "\"users\"", &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("source directory: ok"), "{out}");
    let (code, out) = check(
        &broker,
        &good,
        "root",
        "\"users\", \"logs\", \"names\", \"app.missing\"",
        &dir,
    );
    assert_refused(
        code,
        &out,
        &[
            "table app.logs has no primary key",
            "app.names is a VIEW, not a table",
            "table app.missing does not exist",
        ],
    );
    assert!(!out.contains("binlog_format"), "{out}");

    // A user without the replication grants.
    let (code, out) = check(&broker, &good, "plain", "\"users\"", &dir);
    assert_refused(
        code,
        &out,
        &[
            "lacks REPLICATION SLAVE",
            &format!(
                "lacks {}, needed to read binlog positions: grant {monitor} on *.* to plain",
                monitor.to_ascii_uppercase()
            ),
        ],
    );

    // Binlog settings capture cannot work with.
    let mut options = vec![
        "--binlog-format=STATEMENT",
        "--binlog-row-image=MINIMAL",
        "--binlog-row-metadata=MINIMAL",
    ];
    if flavor == Flavor::MySql8 {
        // MySQL only: compressed transactions, and JSON updates logged as diffs.
        options.extend([
            "--binlog-transaction-compression=ON",
            "--binlog-row-value-options=PARTIAL_JSON",
        ]);
    }
    let statement = server(flavor, &options);
    statement.execute(
        None,
        "create database app; create table app.users (id int primary key)",
    );
    let (code, out) = check(&broker, &statement, "root", "\"users\"", &dir);
    assert_refused(
        code,
        &out,
        &[
            "binlog_format is STATEMENT, capture needs ROW",
            "binlog_row_image is MINIMAL",
            "binlog_row_metadata is MINIMAL",
        ],
    );
    if flavor == Flavor::MySql8 {
        assert!(
            out.contains("binlog_transaction_compression is ON"),
            "{out}"
        );
        assert!(
            out.contains("binlog_row_value_options is PARTIAL_JSON"),
            "{out}"
        );
    }

    // No binary log at all.
    let no_binlog = server(flavor, &["--skip-log-bin"]);
    no_binlog.execute(
        None,
        "create database app; create table app.users (id int primary key)",
    );
    let (code, out) = check(&broker, &no_binlog, "root", "\"users\"", &dir);
    assert_refused(code, &out, &["the binary log is off"]);

    // `run` refuses on the same problems, with the same explanation and exit status 1.
    let config = dir.path().join(format!("root-{}.toml", no_binlog.port()));
    let (status, _, err) = run_to_end(
        Path::new(SLUICE),
        &["run", "--config", config.to_str().expect("path")],
        LONG,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the binary log is off"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
