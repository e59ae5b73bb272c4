//! `sluice snapshot`: re-read a table's rows (all, or those matching a predicate) through the
//! running capture, with the same rule as a backfill, so that no re-read row overwrites a newer
//! change.
//!
//! The request is written into the source's WAL as a logical decoding message; the capture
//! stream reads it in order, records it in its checkpoint (so it survives a restart) and hands
//! it to its backfill driver. Nothing needs to be running when the request is made: a stopped
//! pipeline picks it up when it resumes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_core::event::{binlog_file_seq, parse_lsn};
use sluice_core::{SnapshotRequest, TableId};
use sluice_kafka::CheckpointStore;
use sluice_mysql::backfill::{count_rows as count_mysql_rows, queue_snapshot};
use sluice_mysql::table::BinlogPos;
use sluice_postgres::backfill::{count_matching, emit_message, REQUEST_PREFIX};
use sluice_postgres::client::connect;

use crate::config::Config;
use crate::progress::Progress;

pub async fn run(
    path: &std::path::Path,
    source: Option<&str>,
    table: &str,
    predicate: Option<&str>,
    wait: bool,
) -> ExitCode {
    let config = match crate::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match request(&config, source, table, predicate, wait).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The one source capturing `table` (or `only`, checked).
fn source_of(config: &Config, only: Option<&str>, table: &TableId) -> Result<String, String> {
    let matching: Vec<String> = config
        .sources
        .keys()
        .filter(|name| only.is_none_or(|o| o == name.as_str()))
        .filter(|name| config.source_tables(name).contains(table))
        .cloned()
        .collect();
    match (matching.len(), only) {
        (1, _) => Ok(matching[0].clone()),
        (0, Some(o)) => Err(format!(
            "--table {table}: source {o} does not capture it (see sources.{o}.tables)"
        )),
        (0, None) => Err(format!(
            "--table {table}: no source captures it (sources: {})",
            config.source_names()
        )),
        _ => Err(format!(
            "--table {table}: captured by several sources ({}): name one with --source",
            matching.join(", ")
        )),
    }
}

/// Where a source's log stood just after a request was written: the capture has read the
/// request once its checkpoint is at or past it.
enum Written {
    Lsn(u64),
    Binlog(BinlogPos),
}

impl Written {
    fn reached_by(&self, checkpoint: &str) -> bool {
        match self {
            Written::Lsn(after) => parse_lsn(checkpoint).is_some_and(|p| p >= *after),
            Written::Binlog(after) => BinlogPos::parse(checkpoint).is_some_and(|p| {
                (binlog_file_seq(&p.file), p.pos) >= (binlog_file_seq(&after.file), after.pos)
            }),
        }
    }
}

/// What a predicate error says, without Sluice's context.
fn predicate_refused(predicate: Option<&str>, table: &TableId, message: String) -> String {
    format!(
        "--where {:?} does not work on {table}: {message}",
        predicate.unwrap_or("")
    )
}

/// Writes the request into the source's log: a WAL message for Postgres, a row of the signal
/// table for MySQL/MariaDB. Returns the rows it matches and where the log stood after it.
async fn queue(
    config: &Config,
    source: &str,
    id: &TableId,
    request: &SnapshotRequest,
) -> Result<(i64, Written), String> {
    let predicate = request.predicate.as_deref();
    if let Some(settings) = config.mysql_source(source) {
        return match queue_snapshot(&settings, request, id).await {
            Ok((total, at)) => Ok((total, Written::Binlog(at))),
            Err(e) => match e.server_message() {
                Some(m) if e.sqlstate().is_some_and(|s| s.starts_with("42")) => {
                    Err(predicate_refused(predicate, id, m.to_owned()))
                }
                _ => Err(sluice_core::error_chain(&e)),
            },
        };
    }
    let Some(settings) = config.postgres_source(source) else {
        return Err(format!("source {source} is not configured"));
    };
    let client = connect(&settings.connection, "snapshot request")
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let total = count_matching(&client, id, predicate).await.map_err(|e| {
        predicate_refused(
            predicate,
            id,
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        )
    })?;
    let body = serde_json::to_string(request).map_err(|e| e.to_string())?;
    emit_message(&client, REQUEST_PREFIX, &body)
        .await
        .map_err(|e| format!("writing the request into the WAL of source {source}: {e}"))?;
    let after: String = client
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| format!("reading the WAL position: {e}"))?
        .get(0);
    Ok((total, Written::Lsn(parse_lsn(&after).unwrap_or(0))))
}

async fn request(
    config: &Config,
    only: Option<&str>,
    table: &str,
    predicate: Option<&str>,
    wait: bool,
) -> Result<(), String> {
    let parsed = TableId::parse(table, "public")
        .ok_or_else(|| format!("--table {table:?}: name it as schema.table"))?;
    let source = source_of(config, only, &parsed)?;
    // The table as the source names it (a MySQL table without a database is in the
    // connection's).
    let id = config
        .source_tables(&source)
        .into_iter()
        .find(|t| *t == parsed || (parsed.schema == "public" && t.name == parsed.name))
        .unwrap_or(parsed);
    if predicate.is_some_and(|p| p.contains(';')) {
        return Err("--where: a predicate is one SQL expression, without ';'".into());
    }
    let request = SnapshotRequest::new(&source, id.to_string(), predicate.map(str::to_owned));
    let request_id = request.id.clone();
    let (total, written) = queue(config, &source, &id, &request).await?;
    println!(
        "re-sync {request_id} of {id} queued in source {source}: {total} row(s) match{}; the \
         running capture reads them in chunks (its log shows progress)",
        predicate.map(|p| format!(" {p:?}")).unwrap_or_default()
    );
    if !wait {
        return Ok(());
    }
    let store = CheckpointStore::open(&config.kafka, &source)
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let mut progress = Progress::new("re-sync", "rows");
    let mut rows = 0i64;
    loop {
        match store.load().await {
            Ok(Some(cp)) => {
                let reached = written.reached_by(&cp.position);
                match cp.backfills.iter().find(|b| b.id == request_id) {
                    Some(bf) => rows = bf.rows as i64,
                    None if reached => {
                        if let Some(a) = cp.abandoned.iter().find(|a| a.id == request_id) {
                            progress.finish();
                            return Err(format!(
                                "re-sync {request_id} of {} was abandoned: {}",
                                a.table, a.reason
                            ));
                        }
                        progress.show(total.max(rows), total);
                        progress.finish();
                        println!(
                            "re-sync {request_id} finished in {:.1} s",
                            progress.elapsed_s()
                        );
                        return Ok(());
                    }
                    None => {}
                }
                progress.show(rows, total);
            }
            Ok(None) => {}
            Err(e) => eprintln!("reading the capture checkpoint failed: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// After a reload: follows `source`'s checkpoints until every table it is configured to capture
/// has all its rows in Kafka (no backfill queued or under way), with progress. Waits up to two
/// minutes for the restarted capture to record the tables it was given.
pub async fn follow_backfills(config: &Config, source: &str) -> Result<(), String> {
    if !config.sources.contains_key(source) {
        return Ok(());
    }
    let configured: Vec<String> = config
        .source_tables(source)
        .iter()
        .map(|t| t.to_string())
        .collect();
    let store = CheckpointStore::open(&config.kafka, source)
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let counter = match config.postgres_source(source) {
        Some(settings) => Counter::Postgres(
            connect(&settings.connection, "backfill progress")
                .await
                .map_err(|e| sluice_core::error_chain(&e))?,
        ),
        None => match config.mysql_source(source) {
            Some(settings) => Counter::MySql(settings.connection),
            None => return Ok(()),
        },
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut totals: HashMap<String, i64> = HashMap::new();
    let mut seen: HashMap<String, (String, i64)> = HashMap::new();
    let mut progress: Option<Progress> = None;
    loop {
        let cp = match store.load().await {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("reading the capture checkpoint failed: {e}; retrying");
                None
            }
        };
        let complete = cp.as_ref().and_then(|c| c.tables.clone());
        let backfills = cp.as_ref().map(|c| c.backfills.clone()).unwrap_or_default();
        // Configured tables the capture has not taken up yet (it is still restarting).
        let waiting: Vec<&String> = configured
            .iter()
            .filter(|t| {
                complete.as_ref().is_some_and(|c| !c.contains(t))
                    && !backfills.iter().any(|b| &b.table == *t)
            })
            .collect();
        if backfills.is_empty() && waiting.is_empty() && cp.is_some() {
            if let Some(p) = progress.as_mut() {
                let total: i64 = totals.values().sum();
                p.show(total, total);
                p.finish();
                println!(
                    "source {source}: every table backfilled ({} row(s) in {:.1} s)",
                    total,
                    p.elapsed_s()
                );
            } else {
                // Nothing was under way when first looked at: either nothing was added, or
                // its backfill finished before then (a small table can take less time than
                // the capture's restart takes to be seen).
                println!("source {source}: every table backfilled (none under way)");
            }
            return Ok(());
        }
        if progress.is_none() && backfills.is_empty() && Instant::now() > deadline {
            return Err(format!(
                "source {source}: the capture has not taken up table(s) {} within 2 minutes; \
                 is `sluice run` running with this config? (see its log)",
                waiting
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for bf in &backfills {
            if !totals.contains_key(&bf.id) {
                let total = counter.count(&bf.table, bf.predicate.as_deref()).await;
                totals.insert(bf.id.clone(), total);
            }
            seen.insert(bf.id.clone(), (bf.table.clone(), bf.rows as i64));
        }
        if !backfills.is_empty() {
            let p = progress.get_or_insert_with(|| Progress::new("backfill", "rows"));
            let done: i64 = seen
                .iter()
                .map(|(id, (_, rows))| {
                    if backfills.iter().any(|b| &b.id == id) {
                        *rows
                    } else {
                        totals.get(id).copied().unwrap_or(*rows)
                    }
                })
                .sum();
            p.show(done, totals.values().sum());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts the rows a backfill will read, for its progress.
enum Counter {
    Postgres(tokio_postgres::Client),
    MySql(sluice_mysql::MySqlConnection),
}

impl Counter {
    async fn count(&self, table: &str, predicate: Option<&str>) -> i64 {
        let Some(id) = TableId::parse(table, "public") else {
            return 0;
        };
        match self {
            Counter::Postgres(client) => count_matching(client, &id, predicate).await.unwrap_or(0),
            Counter::MySql(connection) => count_mysql_rows(connection, &id, predicate)
                .await
                .unwrap_or(0),
        }
    }
}
