//! Checks that a MySQL/MariaDB server can be captured from, each failure explained with its fix.

use mysql_async::prelude::*;
use mysql_async::Conn;
use sluice_core::{Problem, TableId};

use crate::client::connect;
use crate::config::MySqlConnection;
use crate::error::MySqlError;

/// Runs every check against the live server. An empty list means capture could start.
pub async fn preflight(
    name: &str,
    connection: &MySqlConnection,
    tables: &[TableId],
) -> Vec<Problem> {
    let subject = format!("source {name}");
    let mut conn = match connect(connection).await {
        Ok(c) => c,
        Err(e) => {
            let section = format!("sources.{name}.mysql");
            return vec![Problem::of_connect(subject, &e, &section)];
        }
    };
    let problems = match checks(&mut conn, connection, tables, &subject).await {
        Ok(p) => p,
        Err(e) => vec![Problem::of_error(subject, &e)],
    };
    let _ = conn.disconnect().await;
    problems
}

async fn checks(
    conn: &mut Conn,
    connection: &MySqlConnection,
    tables: &[TableId],
    subject: &str,
) -> Result<Vec<Problem>, MySqlError> {
    let mut problems = Vec::new();
    let mut problem = |m: String| problems.push(Problem::new(subject, m));
    let vars: Vec<(String, String)> = conn
        .query(
            "show global variables where variable_name in
               ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'log_bin_compress',
                'binlog_transaction_compression', 'binlog_row_value_options', 'version_comment', 'version')",
        )
        .await
        .map_err(MySqlError::query("reading the server's binlog settings"))?;
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_uppercase())
    };
    if var("log_bin").as_deref() != Some("ON") {
        problem(
            "the binary log is off (log_bin = OFF): start the server with log-bin (and a server-id) in its config, then restart it".into(),
        );
    }
    match var("binlog_format").as_deref() {
        Some("ROW") => {}
        other => problem(format!(
            "binlog_format is {}, capture needs ROW: set binlog_format = ROW in the server's config (and `set global binlog_format = ROW`; sessions keep the old format until they reconnect)",
            other.unwrap_or("unknown")
        )),
    }
    match var("binlog_row_image").as_deref() {
        Some("FULL") => {}
        other => problem(format!(
            "binlog_row_image is {}, capture needs FULL (complete before and after rows): set binlog_row_image = FULL",
            other.unwrap_or("unknown")
        )),
    }
    match var("binlog_row_metadata").as_deref() {
        Some("FULL") => {}
        None => problem(
            "the server has no binlog_row_metadata (MariaDB before 10.5, MySQL before 8.0.1): column names cannot be read from the binlog; upgrade the server".into(),
        ),
        Some(other) => problem(format!(
            "binlog_row_metadata is {other}, capture needs FULL (column names in the binlog): set binlog_row_metadata = FULL"
        )),
    }
    if var("log_bin_compress").as_deref() == Some("ON") {
        problem(
            "log_bin_compress is ON: compressed binlog events cannot be decoded; set log_bin_compress = OFF".into(),
        );
    }
    if var("binlog_transaction_compression").as_deref() == Some("ON") {
        problem(
            "binlog_transaction_compression is ON: compressed transaction payloads cannot be decoded; set binlog_transaction_compression = OFF in the server's config (and `set global binlog_transaction_compression = OFF`)".into(),
        );
    }
    if var("binlog_row_value_options").is_some_and(|v| v.contains("PARTIAL_JSON")) {
        problem(
            "binlog_row_value_options is PARTIAL_JSON: a JSON update would be logged as a diff, without the column's new value; set binlog_row_value_options = '' in the server's config (and `set global binlog_row_value_options = ''`)".into(),
        );
    }
    // MariaDB names itself in its version; its monitor grant differs from MySQL's.
    let mariadb = ["version", "version_comment"]
        .iter()
        .any(|v| var(v).is_some_and(|v| v.contains("MARIADB")));
    let monitor = if mariadb {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };

    let grants: Vec<String> = conn
        .query("show grants")
        .await
        .map_err(MySqlError::query("reading the user's grants"))?;
    let global: Vec<String> = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |privilege: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(privilege))
    };
    if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
        problem(format!(
            "user {} lacks REPLICATION SLAVE, needed to read the binlog: grant replication slave on *.* to {}",
            connection.user, connection.user
        ));
    }
    if !has("BINLOG MONITOR") && !has("REPLICATION CLIENT") && !has("SUPER") {
        problem(format!(
            "user {} lacks {monitor}, needed to read binlog positions: grant {} on *.* to {}",
            connection.user,
            monitor.to_ascii_lowercase(),
            connection.user
        ));
    }

    for t in tables {
        let db = connection.database_of(t).to_owned();
        let exists: Option<String> = conn
            .exec_first(
                "select table_type from information_schema.tables where table_schema = ? and table_name = ?",
                (&db, &t.name),
            )
            .await
            .map_err(MySqlError::query(format!("looking up table {db}.{}", t.name)))?;
        match exists.as_deref() {
            None => {
                problem(format!(
                    "table {db}.{} does not exist (or the user cannot see it): fix the name in tables, or grant select on it",
                    t.name
                ));
                continue;
            }
            Some("BASE TABLE") => {}
            Some(other) => {
                problem(format!(
                    "{db}.{} is a {other}, not a table: only tables have row events in the binlog",
                    t.name
                ));
                continue;
            }
        }
        let key =
            crate::source::primary_key(conn, &TableId::new(db.clone(), t.name.clone())).await?;
        if key.is_empty() {
            problem(format!(
                "table {db}.{} has no primary key: Sluice keys every change by it (alter table {db}.{} add primary key (…))",
                t.name, t.name
            ));
        }
        let select = format!(
            "select 1 from {}.{} limit 0",
            crate::client::quote_ident(&db),
            crate::client::quote_ident(&t.name)
        );
        if let Err(e) = conn.query_drop(select).await {
            problem(format!(
                "cannot read {db}.{} ({e}): grant select on {db}.{} to {}",
                t.name, t.name, connection.user
            ));
        }
    }
    Ok(problems)
}
