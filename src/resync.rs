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

use sluice_core::event::parse_lsn;
use sluice_core::TableId;
use sluice_kafka::CheckpointStore;
use sluice_postgres::backfill::{count_matching, emit_message, SnapshotRequest, REQUEST_PREFIX};
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

async fn request(
    config: &Config,
    only: Option<&str>,
    table: &str,
    predicate: Option<&str>,
    wait: bool,
) -> Result<(), String> {
    let id = TableId::parse(table, "public")
        .ok_or_else(|| format!("--table {table:?}: name it as schema.table"))?;
    let source = source_of(config, only, &id)?;
    let Some(settings) = config.postgres_source(&source) else {
        return Err(format!(
            "source {source} is a MySQL/MariaDB source: `sluice snapshot` works for Postgres \
             sources only so far; to re-read its rows, replay the sink or use `sluice run \
             --resnapshot {source}`"
        ));
    };
    if predicate.is_some_and(|p| p.contains(';')) {
        return Err("--where: a predicate is one SQL expression, without ';'".into());
    }
    let client = connect(&settings.connection, "snapshot request")
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let total = count_matching(&client, &id, predicate).await.map_err(|e| {
        format!(
            "--where {:?} does not work on {id}: {}",
            predicate.unwrap_or(""),
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string())
        )
    })?;
    let request_id = format!(
        "resync-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let body = serde_json::to_string(&SnapshotRequest {
        source: source.clone(),
        id: request_id.clone(),
        table: id.to_string(),
        predicate: predicate.map(str::to_owned),
    })
    .map_err(|e| e.to_string())?;
    emit_message(&client, REQUEST_PREFIX, &body)
        .await
        .map_err(|e| format!("writing the request into the WAL of source {source}: {e}"))?;
    let after: String = client
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| format!("reading the WAL position: {e}"))?
        .get(0);
    println!(
        "re-sync {request_id} of {id} queued in source {source}: {total} row(s) match{}; the \
         running capture reads them in chunks (its log shows progress)",
        predicate.map(|p| format!(" {p:?}")).unwrap_or_default()
    );
    if !wait {
        return Ok(());
    }
    let after = parse_lsn(&after).unwrap_or(0);
    let store = CheckpointStore::open(&config.kafka, &source)
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let mut progress = Progress::new("re-sync", "rows");
    let mut rows = 0i64;
    loop {
        match store.load().await {
            Ok(Some(cp)) => {
                let reached = parse_lsn(&cp.position).is_some_and(|p| p >= after);
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
    let Some(settings) = config.postgres_source(source) else {
        return Ok(());
    };
    let configured: Vec<String> = settings.tables.iter().map(|t| t.to_string()).collect();
    let store = CheckpointStore::open(&config.kafka, source)
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let client = connect(&settings.connection, "backfill progress")
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
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
                println!("source {source}: nothing to backfill");
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
                let total = count_rows(&client, &bf.table, bf.predicate.as_deref()).await;
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

async fn count_rows(client: &tokio_postgres::Client, table: &str, predicate: Option<&str>) -> i64 {
    match TableId::parse(table, "public") {
        Some(id) => count_matching(client, &id, predicate).await.unwrap_or(0),
        None => 0,
    }
}
