//! Logging setup and error formatting.
//!
//! Logs go to standard error as text lines, `SLUICE_LOG` sets the filter (`info` by default;
//! e.g. `SLUICE_LOG=debug` or `SLUICE_LOG=info,sluice_postgres=debug`). Row values, passwords
//! and connection strings with passwords are never logged.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

pub fn init() {
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("rdkafka", tracing::Level::WARN)
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init();
}

pub use sluice_core::error_chain;
