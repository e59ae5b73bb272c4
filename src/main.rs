//! The `sluice` binary: command line, config, and the wiring of sources to Kafka.

mod apply;
mod blobs;
mod capture;
mod cli;
mod config;
mod control;
mod progress;
mod replay;
mod resync;
mod telemetry;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use sluice_core::Problem;
use tokio::sync::watch;

use crate::cli::{Cli, Command, Side};
use crate::config::Config;
use crate::telemetry::error_chain;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Check { config } => check(&config).await,
            Command::Reload { config, wait } => control::reload(&config, wait).await,
            Command::Snapshot {
                config,
                table,
                source,
                predicate,
                wait,
            } => {
                resync::run(
                    &config,
                    source.as_deref(),
                    &table,
                    predicate.as_deref(),
                    wait,
                )
                .await
            }
            Command::Replay {
                config,
                sink,
                from,
                table,
                wait,
            } => replay::run(&config, &sink, &from, &table, wait).await,
            Command::Blobs {
                action:
                    cli::BlobsAction::Verify {
                        config,
                        sink,
                        repair,
                        grace_s,
                    },
            } => blobs_verify(&config, sink.as_deref(), repair, grace_s).await,
            Command::Run {
                config,
                only,
                resnapshot,
            } => run(&config, only, resnapshot).await,
        }
    })
}

async fn blobs_verify(
    path: &std::path::Path,
    only: Option<&str>,
    repair: bool,
    grace_s: i64,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sinks = blobs::verify::blob_sinks(&config);
    if sinks.is_empty() {
        eprintln!("error: no sink of {} has blob columns", path.display());
        return ExitCode::from(2);
    }
    let mut left = 0;
    for (sink, stores) in sinks {
        if only.is_some_and(|o| o != sink) {
            continue;
        }
        match blobs::verify::verify_sink(&config, &sink, &stores, repair, grace_s).await {
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

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn preflight(config: &Config, only: Option<Side>) -> Vec<Problem> {
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
        match blobs::store::Store::new(name, cfg) {
            Err(e) => problems.push(Problem::new(subject, e)),
            Ok(store) => {
                if let Err(e) = store.check().await {
                    problems.push(Problem::unreachable(
                        subject,
                        format!(
                            "{e}: check stores.{name}.endpoint, region, bucket and path_style, and the credentials in ${} / ${}",
                            cfg.access_key_id_env, cfg.secret_access_key_env
                        ),
                    ));
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
            let mut found = apply::mapping::check_source(m, &table, &names, &at);
            // The target's key and types, from the target (its absence is reported by the
            // sink's checks).
            if let Some(target) = m.target_table() {
                let sink_db = Db::of(sink.postgres.as_ref(), sink.mysql.as_ref());
                if let Some((target_columns, key)) = tables.get(sink_name, sink_db, &target).await {
                    found.extend(apply::mapping::check_key(
                        m,
                        &target,
                        &key,
                        &source_key,
                        &at,
                    ));
                    found.extend(apply::mapping::check_types(
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

async fn check(path: &std::path::Path) -> ExitCode {
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

async fn run(path: &std::path::Path, only: Option<Side>, resnapshot: Vec<String>) -> ExitCode {
    // Listen for signals first, so that a stop at any moment is a clean one.
    let signals = Signals::register();
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for name in &resnapshot {
        if !config.sources.contains_key(name) {
            eprintln!(
                "error: --resnapshot {name}: no source of that name in the config (sources: {})",
                config.source_names()
            );
            return ExitCode::from(2);
        }
    }
    let runs_capture = only != Some(Side::Apply) && !config.sources.is_empty();
    let runs_apply = only != Some(Side::Capture) && !config.sinks.is_empty();
    if !runs_capture && !runs_apply {
        eprintln!(
            "error: nothing to run: {} has no {} section",
            path.display(),
            match only {
                Some(Side::Capture) => "[sources.<name>]",
                Some(Side::Apply) => "[sinks.<name>]",
                None => "[sources.<name>] or [sinks.<name>]",
            }
        );
        return ExitCode::from(2);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("stopping: finishing in-flight work and writing checkpoints");
        let _ = stop_tx.send(true);
    });
    // A system that does not answer yet (a broker or database still starting) is waited for;
    // anything else stops here, named with its fix.
    let mut backoff = sluice_core::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    loop {
        let problems = preflight(&config, only).await;
        if problems.is_empty() {
            break;
        }
        if problems.iter().all(|p| p.unreachable) {
            let delay = backoff.next_delay();
            for p in &problems {
                tracing::warn!(waiting_for = %p.subject, retry_in_s = delay.as_secs(), "{}", p.message);
            }
            let mut stop = stop_rx.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => continue,
                _ = stop.wait_for(|s| *s) => {
                    eprintln!("stopped while waiting for {}", problems.iter().map(|p| p.subject.as_str()).collect::<Vec<_>>().join(", "));
                    return ExitCode::SUCCESS;
                }
            }
        }
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("error: {} preflight problem(s); nothing was started (run `sluice check` after fixing them)", problems.len());
        return ExitCode::FAILURE;
    }

    let mut pipeline = Pipeline::default();
    for c in components(&config, only, &resnapshot) {
        pipeline.launch(c);
    }
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut stop_rx = stop_rx;
    let mut stopping = false;
    let mut failed = false;
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        tokio::select! {
            joined = pipeline.tasks.join_next() => {
                let Some(joined) = joined else { break };
                match joined {
                    Ok((what, Ok(()))) => {
                        tracing::info!("{what} stopped");
                        pipeline.ended(&what, stopping);
                    }
                    Ok((what, Err(e))) => {
                        failed = true;
                        tracing::error!(error = %format!("{e:#}"), "{what} failed");
                        eprintln!("error: {what}: {e:#}");
                        pipeline.ended(&what, true);
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("error: a pipeline task was lost: {}", error_chain(&e));
                    }
                }
                if pipeline.tasks.is_empty() && pipeline.waiting.is_empty() {
                    break;
                }
            }
            _ = hup, if !stopping => {
                reload(path, only, &mut pipeline).await;
            }
            _ = stop_rx.changed(), if !stopping => {
                stopping = true;
                pipeline.stop_all();
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One part of the pipeline: a source's capture or a sink's apply.
struct Component {
    /// `capture <source>` or `apply <sink>`.
    what: String,
    /// What it runs with, to tell whether a reload changed it.
    fingerprint: String,
    launch: Box<dyn FnOnce(watch::Receiver<bool>) -> ComponentFuture + Send>,
}

type ComponentFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (String, anyhow::Result<()>)> + Send>>;

/// The running components, each with its own stop switch, and those waiting for their old
/// instance to stop before they start (a reload that changed them).
#[derive(Default)]
struct Pipeline {
    tasks: tokio::task::JoinSet<(String, anyhow::Result<()>)>,
    running: std::collections::HashMap<String, (watch::Sender<bool>, String)>,
    waiting: std::collections::HashMap<String, Component>,
}

impl Pipeline {
    fn launch(&mut self, c: Component) {
        let (tx, rx) = watch::channel(false);
        self.running.insert(c.what.clone(), (tx, c.fingerprint));
        self.tasks.spawn((c.launch)(rx));
    }

    /// A component's task ended: start its replacement, if a reload is waiting for that.
    fn ended(&mut self, what: &str, no_restart: bool) {
        self.running.remove(what);
        if let Some(next) = self.waiting.remove(what) {
            if !no_restart {
                tracing::info!("{what}: starting with the reloaded config");
                self.launch(next);
            }
        }
    }

    fn stop_all(&mut self) {
        self.waiting.clear();
        for (stop, _) in self.running.values() {
            let _ = stop.send(true);
        }
    }
}

/// The components a config runs.
fn components(config: &Config, only: Option<Side>, resnapshot: &[String]) -> Vec<Component> {
    let mut out = Vec::new();
    let kafka_print = format!("{:?}", config.kafka);
    if only != Some(Side::Apply) {
        for name in config.sources.keys() {
            let source = match (config.postgres_source(name), config.mysql_source(name)) {
                (Some(pg), _) => capture::SourceKind::Postgres(pg),
                (None, Some(my)) => capture::SourceKind::MySql(my),
                (None, None) => continue,
            };
            let interval = Duration::from_millis(config.sources[name].checkpoint_interval_ms);
            let settings = capture::CaptureSettings {
                source,
                checkpoint_interval: interval,
                resnapshot: resnapshot.contains(name),
            };
            let kafka = config.kafka.clone();
            let what = format!("capture {name}");
            let label = what.clone();
            out.push(Component {
                fingerprint: format!("{kafka_print}{:?}", config.sources[name]),
                what,
                launch: Box::new(move |stop| {
                    Box::pin(async move {
                        let r = capture::run(&kafka, settings, stop).await;
                        (label, r)
                    })
                }),
            });
        }
    }
    if only != Some(Side::Capture) {
        for (name, sink) in &config.sinks {
            let kafka = config.kafka.clone();
            let (name, sink) = (name.clone(), sink.clone());
            let stores = config.stores.clone();
            let what = format!("apply {name}");
            let label = what.clone();
            out.push(Component {
                fingerprint: format!("{kafka_print}{sink:?}{stores:?}"),
                what,
                launch: Box::new(move |stop| {
                    Box::pin(async move {
                        let r = apply::run(&kafka, &name, &sink, &stores, stop).await;
                        (label, r)
                    })
                }),
            });
        }
    }
    out
}

/// SIGHUP: reads the config again; if it is valid and passes the preflight checks, stops the
/// components it removes or changes and starts the ones it adds or changes (a changed one
/// once its old instance has stopped). An invalid config changes nothing.
async fn reload(path: &std::path::Path, only: Option<Side>, pipeline: &mut Pipeline) {
    tracing::info!(config = %path.display(), "reload requested: checking the config");
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the config is invalid; the pipeline keeps running as it was");
            return;
        }
    };
    let problems = preflight(&config, only).await;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        tracing::error!(problems = %list.join("; "), "reload refused: preflight problems; the pipeline keeps running as it was");
        return;
    }
    let next = components(&config, only, &[]);
    let mut started = Vec::new();
    let mut restarted = Vec::new();
    let mut stopped = Vec::new();
    let names: Vec<&String> = next.iter().map(|c| &c.what).collect();
    let gone: Vec<String> = pipeline
        .running
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect();
    for what in gone {
        if let Some((stop, _)) = pipeline.running.get(&what) {
            let _ = stop.send(true);
        }
        stopped.push(what);
    }
    for c in next {
        match pipeline.running.get(&c.what) {
            Some((_, fingerprint)) if *fingerprint == c.fingerprint => {}
            Some((stop, _)) => {
                let _ = stop.send(true);
                restarted.push(c.what.clone());
                pipeline.waiting.insert(c.what.clone(), c);
            }
            None => {
                started.push(c.what.clone());
                pipeline.launch(c);
            }
        }
    }
    tracing::info!(
        started = %started.join(", "),
        restarted = %restarted.join(", "),
        stopped = %stopped.join(", "),
        "reload applied; unchanged parts kept running"
    );
}

/// SIGINT and SIGTERM, registered synchronously so that no signal is missed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
