//! Sluice as a library: the `sluice` binary is [`main`]; the modules stay private to it.
//! [`fuzz`] exposes the decoders and evaluators that read untrusted input, for the fuzz
//! targets in `fuzz/`.

mod apply;
mod blobs;
mod capture;
mod cli;
mod config;
mod control;
mod http;
mod mapping;
mod preflight;
mod progress;
mod replay;
mod resync;
mod run;
mod status;
mod status_cmd;
mod telemetry;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::config::Config;

#[doc(hidden)]
pub mod fuzz;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    sluice_core::tls::install_provider();
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
            Command::Check { config } => preflight::check(&config).await,
            Command::Status { config } => status_cmd::run(&config).await,
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
            } => blobs::verify::command(&config, sink.as_deref(), repair, grace_s).await,
            Command::Run {
                config,
                only,
                resnapshot,
            } => run::run(&config, only, resnapshot).await,
        }
    })
}

/// Loads the config, or says what is wrong with it (exit code 2).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
