//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Sluice streams row changes out of Postgres into Kafka.
///
/// A consistent initial snapshot, then every insert, update, delete and truncate: one topic per
/// table (<prefix>.<schema>.<table>), keyed by primary key, in a Debezium-style JSON envelope.
/// Nothing is acknowledged to Postgres before Kafka has it. Logs go to stderr; SLUICE_LOG sets
/// the filter (e.g. SLUICE_LOG=debug). See README.md for the config file.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until interrupted (Ctrl-C or SIGTERM stop it cleanly).
    ///
    /// Runs the preflight checks first and refuses to start if any fails. On restart it resumes
    /// from its durable checkpoint in Kafka: no change is lost, and only changes published after
    /// the last checkpoint can be published again.
    Run {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Run only one side of the pipeline.
        #[arg(long, value_enum)]
        only: Option<Side>,
        /// Drop this source's replication slot and capture state and start over with a new
        /// snapshot (for a slot that was dropped or invalidated).
        #[arg(long, value_name = "SOURCE")]
        resnapshot: Vec<String>,
    },
    /// Validate the config and run every preflight check against the configured systems.
    ///
    /// Prints each problem with its fix; exits 0 when all is well, 1 otherwise.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// Sources → Kafka.
    Capture,
    /// Kafka → targets (not built yet).
    Apply,
}
