//! Checks before anything runs (`sluice check`, and `sluice run` before it starts): Kafka,
//! every source and sink answers and is set up as Sluice needs, object stores accept writes,
//! and mappings fit the source tables. Each problem names the setting and the fix.

use std::process::ExitCode;

use sluice_core::Problem;

use crate::apply;
use crate::cli::Side;
use crate::config::Config;
use crate::load;

/// Every problem found with `config` (only the side `only` names, when given).
pub async fn preflight(config: &Config, only: Option<Side>) -> Vec<Problem> {
    let kafka = config.kafka.clone();
    let mut problems = tokio::task::spawn_blocking(move || sluice_kafka::preflight(&kafka))
        .await
        .unwrap_or_else(|e| {
            vec![Problem::new(
                "kafka",
                format!("preflight did not finish: {e}"),
            )]
        });
    if only != Some(Side::Apply) {
        for (name, source) in &config.sources {
            if let Some(settings) = config.postgres_source(name) {
                problems.extend(sluice_postgres::preflight::preflight(&settings).await);
            }
            if let Some(my) = &source.mysql {
                let tables = config.source_tables(name);
                problems.extend(sluice_mysql::preflight::preflight(name, my, &tables).await);
            }
        }
    }
    if only != Some(Side::Capture) {
        for (name, sink) in &config.sinks {
            problems.extend(apply::preflight(name, sink, &config.kafka.topic_prefix).await);
        }
        problems.extend(check_mappings_against_sources(config).await);
        problems.extend(check_stores(config).await);
    }
    problems
}

/// Every store a sink's blob columns use: credentials in the environment, bucket reachable.
async fn check_stores(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut used: Vec<&String> = config
        .sinks
        .values()
        .flat_map(|s| {
            s.tables
                .iter()
                .flat_map(|t| t.blobs.values().map(|b| &b.store))
        })
        .collect();
    used.sort();
    used.dedup();
    for name in used {
        let Some(cfg) = config.stores.get(name) else {
            continue; // reported by the config's validation
        };
        let subject = format!("store {name}");
        match crate::blobs::store::Store::new(name, cfg) {
            Err(e) => problems.push(Problem::new(subject, e)),
            Ok(store) => {
                if let Err(e) = store.check().await {
                    let text = e.to_string();
                    let problem = if text.contains("UnknownIssuer") {
                        Problem::new(
                            subject,
                            format!("{e}: the endpoint's TLS certificate is not signed by a CA Sluice trusts: set stores.{name}.ca_file to the PEM file of the CA that signed it"),
                        )
                    } else {
                        Problem::unreachable(
                            subject,
                            format!(
                                "{e}: check stores.{name}.endpoint, region, bucket and path_style, and the credentials in ${} / ${}",
                                cfg.access_key_id_env, cfg.secret_access_key_env
                            ),
                        )
                    };
                    problems.push(problem);
                }
            }
        }
    }
    problems
}

/// Checks every mapping whose source table a source of this config captures against that
/// table's live columns (the names a mapping reads must exist there), and its target key
/// against the source key. Each table is read once, however many mappings name it.
async fn check_mappings_against_sources(config: &Config) -> Vec<Problem> {
    let mut tables = LiveTables::default();
    let mut problems = Vec::new();
    for (sink_name, sink) in &config.sinks {
        for (i, m) in sink.tables.iter().enumerate() {
            let Some(table) = m.source_table() else {
                continue;
            };
            let Some((source_name, source)) = config
                .sources
                .iter()
                .find(|(n, _)| config.source_tables(n).contains(&table))
            else {
                continue;
            };
            let source_db = Db::of(source.postgres.as_ref(), source.mysql.as_ref());
            // A missing table or an unreachable source is reported by the source's checks.
            let Some((columns, source_key)) = tables.get(source_name, source_db, &table).await
            else {
                continue;
            };
            let at = format!("sinks.{sink_name}.tables[{i}]");
            let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            let mut found = crate::mapping::check_source(m, &table, &names, &at);
            // The target's key and types, from the target (its absence is reported by the
            // sink's checks).
            if let Some(target) = m.target_table() {
                let sink_db = Db::of(sink.postgres.as_ref(), sink.mysql.as_ref());
                if let Some((target_columns, key)) = tables.get(sink_name, sink_db, &target).await {
                    found.extend(crate::mapping::check_key(
                        m,
                        &target,
                        &key,
                        &source_key,
                        &at,
                    ));
                    found.extend(crate::mapping::check_types(
                        m,
                        &columns,
                        &target,
                        &target_columns,
                        &at,
                    ));
                }
            }
            for p in found {
                problems.push(Problem::new(
                    format!("sink {sink_name}"),
                    format!("{p} (source {source_name})"),
                ));
            }
        }
    }
    problems
}

/// A database a source or sink connects to.
#[derive(Clone, Copy)]
enum Db<'a> {
    Postgres(&'a sluice_postgres::PostgresConnection),
    MySql(&'a sluice_mysql::MySqlConnection),
    None,
}

impl<'a> Db<'a> {
    fn of(
        pg: Option<&'a sluice_postgres::PostgresConnection>,
        my: Option<&'a sluice_mysql::MySqlConnection>,
    ) -> Db<'a> {
        match (pg, my) {
            (Some(pg), _) => Db::Postgres(pg),
            (None, Some(my)) => Db::MySql(my),
            (None, None) => Db::None,
        }
    }
}

/// Live tables' (columns, key), read once per (source or sink, table).
type Described = Option<(Vec<sluice_core::ColumnDesc>, Vec<String>)>;

#[derive(Default)]
struct LiveTables {
    read: std::collections::HashMap<(String, sluice_core::TableId), Described>,
}

impl LiveTables {
    async fn get(&mut self, owner: &str, db: Db<'_>, table: &sluice_core::TableId) -> Described {
        let key = (owner.to_owned(), table.clone());
        if let Some(d) = self.read.get(&key) {
            return d.clone();
        }
        let described = match db {
            Db::Postgres(pg) => sluice_postgres::catalog::source_columns(pg, table)
                .await
                .ok()
                .flatten(),
            Db::MySql(my) => {
                let id = sluice_core::TableId::new(my.database_of(table), table.name.clone());
                sluice_mysql::source::source_columns(my, &id)
                    .await
                    .ok()
                    .flatten()
            }
            Db::None => None,
        };
        self.read.insert(key, described.clone());
        described
    }
}

/// `sluice check`.
pub async fn check(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("config {}: ok", path.display());
    let problems = preflight(&config, None).await;
    if problems.is_empty() {
        println!("kafka {}: ok", config.kafka.brokers);
        for name in config.sources.keys() {
            println!("source {name}: ok");
        }
        for (name, sink) in &config.sinks {
            if let Some(target) = apply::target::TargetConnection::of(sink) {
                println!(
                    "sink {name}: ok (dead letters go to table {} in {})",
                    target.dead_letter_table(),
                    target.describe()
                );
            }
        }
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        println!("{} problem(s) found", problems.len());
        ExitCode::FAILURE
    }
}
