//! `sluice blobs verify [--repair]`: the ledger against the buckets.
//!
//! Every live ledger entry's object must exist with its size and SHA-256; every object under
//! a store's prefix must be named by some ledger entry. `--repair` re-uploads missing or
//! damaged objects from their source files (when the file still has the recorded content),
//! deletes released objects no row references, and deletes orphans older than the grace
//! period (younger ones may belong to a batch being written right now).

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;

use super::content_type_of;
use super::ledger;
use super::store::Store;
use crate::config::Config;

/// What one sink's check found (and, with repair, did).
#[derive(Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub missing: Vec<String>,
    pub damaged: Vec<String>,
    pub orphans: Vec<String>,
    pub released: Vec<String>,
    pub repaired: Vec<String>,
    pub unrepairable: Vec<String>,
}

impl Report {
    /// Problems left after the run.
    pub fn problems(&self, repaired: bool) -> usize {
        if repaired {
            self.unrepairable.len()
        } else {
            self.missing.len() + self.damaged.len() + self.orphans.len() + self.released.len()
        }
    }
}

/// The sinks with blob columns, and the stores each uses.
pub fn blob_sinks(config: &Config) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (name, sink) in &config.sinks {
        let mut stores: Vec<String> = sink
            .tables
            .iter()
            .flat_map(|t| t.blobs.values().map(|b| b.store.clone()))
            .collect();
        stores.sort();
        stores.dedup();
        if !stores.is_empty() {
            out.push((name.clone(), stores));
        }
    }
    out
}

/// Checks one sink's ledger against its stores.
pub async fn verify_sink(
    config: &Config,
    sink_name: &str,
    stores: &[String],
    repair: bool,
    grace_s: i64,
) -> Result<Report, String> {
    let sink = config
        .sinks
        .get(sink_name)
        .ok_or_else(|| format!("no sink named {sink_name}"))?;
    let pg = sink
        .postgres
        .as_ref()
        .ok_or_else(|| format!("sinks.{sink_name}: blob columns need a Postgres target"))?;
    let client = sluice_postgres::client::connect(pg, "blobs verify")
        .await
        .map_err(|e| crate::telemetry::error_chain(&e))?;
    let sql_err = |e: tokio_postgres::Error| {
        format!(
            "reading sluice.blobs: {}",
            crate::telemetry::error_chain(&e)
        )
    };
    let mut opened: HashMap<String, Store> = HashMap::new();
    for s in stores {
        let cfg = config
            .stores
            .get(s)
            .ok_or_else(|| format!("no [stores.{s}] section"))?;
        opened.insert(s.clone(), Store::new(s, cfg)?);
    }
    let entries = ledger::all(&client, sink_name).await.map_err(sql_err)?;
    let mut report = Report::default();
    let mut live_keys: HashSet<(String, String)> = HashSet::new();
    for e in entries.iter().filter(|e| e.state == "live") {
        live_keys.insert((e.store.clone(), e.object_key.clone()));
    }
    let mut checked_objects: HashSet<(String, String)> = HashSet::new();
    for e in entries.iter().filter(|e| e.state == "live") {
        if !checked_objects.insert((e.store.clone(), e.object_key.clone())) {
            continue;
        }
        let Some(store) = opened.get(&e.store) else {
            continue;
        };
        report.checked += 1;
        let what = format!(
            "{}/{} ({} {} {})",
            e.store, e.object_key, e.target_table, e.target_key, e.url_column
        );
        let head = store.head(&e.object_key).await.map_err(|x| x.to_string())?;
        let problem = match head {
            None => Some(("missing", &mut report.missing)),
            Some(h)
                if h.size as i64 != e.size
                    || h.sha256.as_deref().is_some_and(|s| s != e.sha256) =>
            {
                Some(("damaged", &mut report.damaged))
            }
            Some(_) => None,
        };
        let Some((kind, list)) = problem else {
            continue;
        };
        list.push(what.clone());
        if !repair {
            continue;
        }
        // Read and hashed as the apply step does: a large file is streamed, not held whole.
        let read = e
            .source_path
            .as_deref()
            .and_then(|p| super::stage::read_file(std::path::Path::new(p), store.stream_above()));
        match read {
            Some((body, sha)) if sha == e.sha256 => {
                let ct = if e.content_type.is_empty() {
                    content_type_of("").to_owned()
                } else {
                    e.content_type.clone()
                };
                store
                    .put(&e.object_key, body, &e.sha256, &ct)
                    .await
                    .map_err(|x| x.to_string())?;
                report.repaired.push(format!("{kind} {what}: uploaded again from {}", e.source_path.as_deref().unwrap_or("")));
            }
            _ => report.unrepairable.push(format!(
                "{kind} {what}: its source {} no longer holds the recorded content; replay the sink to write it again",
                e.source_path.as_deref().unwrap_or("(a byte column)")
            )),
        }
    }
    // Released objects no live row references, and objects no entry names.
    for store_name in stores {
        let Some(store) = opened.get(store_name) else {
            continue;
        };
        let known = ledger::known_keys(&client, store_name)
            .await
            .map_err(sql_err)?;
        let referenced_any: HashSet<String> = {
            let keys: Vec<String> = known.iter().cloned().collect();
            ledger::referenced(&client, store_name, &keys)
                .await
                .map_err(sql_err)?
                .into_keys()
                .collect()
        };
        let listed = store.list().await.map_err(|x| x.to_string())?;
        for (key, _size, age) in listed {
            let what = format!("{store_name}/{key}");
            if !known.contains(&key) {
                report.orphans.push(what.clone());
                if repair {
                    if age < grace_s {
                        report.unrepairable.push(format!(
                            "orphan {what}: only {age} s old, younger than the grace period ({grace_s} s): it may belong to a batch being written; run again later"
                        ));
                    } else {
                        store.delete(&key).await.map_err(|x| x.to_string())?;
                        report.repaired.push(format!("orphan {what}: deleted"));
                    }
                }
            } else if !referenced_any.contains(&key)
                && entries
                    .iter()
                    .any(|e| e.store == *store_name && e.object_key == key && e.state == "released")
            {
                report.released.push(what.clone());
                if repair {
                    store.delete(&key).await.map_err(|x| x.to_string())?;
                    ledger::forget_released(&client, store_name, &key)
                        .await
                        .map_err(sql_err)?;
                    report.repaired.push(format!("released {what}: deleted"));
                }
            }
        }
    }
    Ok(report)
}

/// `sluice blobs verify`.
pub async fn command(
    path: &std::path::Path,
    only: Option<&str>,
    repair: bool,
    grace_s: i64,
) -> ExitCode {
    let config = match crate::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sinks = blob_sinks(&config);
    if sinks.is_empty() {
        eprintln!("error: no sink of {} has blob columns", path.display());
        return ExitCode::from(2);
    }
    let mut left = 0;
    for (sink, stores) in sinks {
        if only.is_some_and(|o| o != sink) {
            continue;
        }
        match verify_sink(&config, &sink, &stores, repair, grace_s).await {
            Ok(r) => {
                println!(
                    "sink {sink}: {} object(s) checked; {} missing, {} damaged, {} orphaned, {} released but not deleted",
                    r.checked,
                    r.missing.len(),
                    r.damaged.len(),
                    r.orphans.len(),
                    r.released.len()
                );
                for (kind, list) in [
                    ("missing", &r.missing),
                    ("damaged", &r.damaged),
                    ("orphan", &r.orphans),
                    ("released", &r.released),
                ] {
                    for item in list {
                        println!("  {kind}: {item}");
                    }
                }
                for item in &r.repaired {
                    println!("  repaired: {item}");
                }
                for item in &r.unrepairable {
                    println!("  not repaired: {item}");
                }
                left += r.problems(repair);
            }
            Err(e) => {
                println!("sink {sink}: {e}");
                left += 1;
            }
        }
    }
    if left == 0 {
        println!("blobs: ok");
        ExitCode::SUCCESS
    } else {
        println!("blobs: {left} problem(s) left");
        ExitCode::FAILURE
    }
}
