//! `sluice run`: starts every configured capture and apply, restarts what a reload changes,
//! and stops cleanly on SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use sluice_core::source::SnapshotMode;
use tokio::sync::watch;

use crate::cli::Side;
use crate::config::Config;
use crate::preflight::preflight;
use crate::telemetry::error_chain;
use crate::{apply, capture, load};

/// `sluice run`.
pub async fn run(path: &std::path::Path, only: Option<Side>, resnapshot: Vec<String>) -> ExitCode {
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
    // The API first: it answers (not ready) while the systems are waited for.
    if let Some(http) = &config.http {
        if let Err(e) = crate::http::start(http, stop_rx.clone()).await {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
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
                name: name.clone(),
                snapshots: config.sources[name].snapshot.mode() == SnapshotMode::Initial,
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
                        let r = Box::pin(capture::run(&kafka, settings, stop)).await;
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
