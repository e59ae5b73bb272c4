//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Sluice streams row changes from Postgres and MySQL/MariaDB through Kafka into target
/// databases.
///
/// Capture: a consistent initial snapshot, then every insert, update, delete and truncate, one
/// topic per table (<prefix>.<schema>.<table>), keyed by primary key, in a Debezium-style JSON
/// envelope; a source position is checkpointed only after Kafka has every change up to it.
/// Apply: consumer groups write mapped upserts and deletes (renames, CEL expressions, value
/// maps, filters, soft deletes) into target Postgres or MySQL/MariaDB databases, each batch in
/// one transaction together with its Kafka offsets, so every change takes effect exactly once;
/// files and byte columns can go to S3-compatible stores first, their URLs into the rows. Logs
/// go to stderr; SLUICE_LOG sets the filter (e.g. SLUICE_LOG=debug). See README.md for the
/// config file.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until interrupted (Ctrl-C or SIGTERM stop it cleanly; SIGHUP reloads
    /// the config).
    ///
    /// Runs every configured source (capture) and sink (apply), after the preflight checks; it
    /// refuses to start if any fails. Capture resumes from its durable checkpoint in Kafka,
    /// apply from the offsets stored in each target: no change is lost or applied twice.
    /// SIGHUP reads the config again: a config that fails its checks is refused (the
    /// pipeline keeps running); otherwise only the sources and sinks it changes restart.
    Run {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Run only one side of the pipeline. Several `--only apply` processes with the same
        /// config share each sink's partitions (one consumer group per sink).
        #[arg(long, value_enum)]
        only: Option<Side>,
        /// Start this source over with a new snapshot, ignoring its checkpoint: for Postgres
        /// the replication slot is dropped and recreated (after a slot was dropped or
        /// invalidated); for MySQL/MariaDB streaming restarts at the new snapshot's binlog
        /// position (after the checkpoint's binlog file was purged).
        #[arg(long, value_name = "SOURCE")]
        resnapshot: Vec<String>,
    },
    /// Apply a sink's changes again from a point in Kafka, then carry on live.
    ///
    /// Moves the sink's stored offsets (in its target) back to the start of every partition,
    /// to each partition's first record at or after a time, or to one partition's offset, and
    /// forgets the last applied source positions so nothing is skipped. Applying is idempotent,
    /// so rows already right stay right and damaged or missing rows are written again. A
    /// running sink notices within seconds and reads again from there; a stopped one does when
    /// it starts. Topics keep their history only as far as their retention allows: Sluice
    /// creates table topics compacted (the last change of every key is kept), so replaying
    /// from the beginning rebuilds a target's current rows.
    Replay {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// The sink to replay.
        #[arg(long, value_name = "SINK")]
        sink: String,
        /// `beginning`, `time:2026-11-22T10:00:00Z` (RFC 3339) or
        /// `offset:TOPIC/PARTITION/OFFSET`.
        #[arg(long, value_name = "FROM")]
        from: String,
        /// Only this source table's topic, named as in the mapping's `from` (`schema.table`;
        /// `database.table` for MySQL sources); repeatable. Default: every table the sink maps.
        #[arg(long, value_name = "TABLE")]
        table: Vec<String>,
        /// Wait until the sink has applied everything up to where the topics ended when the
        /// replay started, showing progress (a running sink is needed).
        #[arg(long)]
        wait: bool,
    },
    /// Re-read a table's rows, or those matching a predicate, through the running capture.
    ///
    /// For "this patient's files" or "this institute's users" after something went wrong
    /// downstream. The request is written into the source's log (the WAL of a Postgres
    /// source, the signal table of a MySQL/MariaDB one); the running capture (or the next one
    /// to start) reads the matching rows in key-ordered chunks, interleaved with the live
    /// stream: a row changed while it is re-read is published from the change, never from the
    /// older read, so no newer change is overwritten.
    Snapshot {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// The table, as in the source's `tables` (`schema.table`; for MySQL/MariaDB
        /// `database.table`, or `table` for one in the connection's database).
        #[arg(long, value_name = "TABLE")]
        table: String,
        /// The source capturing it, when several do.
        #[arg(long, value_name = "SOURCE")]
        source: Option<String>,
        /// A SQL condition on the table's columns, e.g. `"institute_id = 42"` or
        /// `"id between 1000 and 1999"`. Default: every row.
        #[arg(long = "where", value_name = "PREDICATE")]
        predicate: Option<String>,
        /// Wait until every matching row is in Kafka, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Check the config, then ask every `sluice run` using it to reload it (as SIGHUP does).
    ///
    /// A config that fails validation or the preflight checks is reported here and nothing is
    /// signalled. A running pipeline starts what the new config adds (a table added to a
    /// source is backfilled while everything else keeps flowing), stops what it removes, and
    /// restarts what it changes.
    Reload {
        /// The TOML config file the pipeline runs with.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Then wait until every table the sources capture is backfilled, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Blob columns: check the objects in the buckets against the ledger.
    Blobs {
        #[command(subcommand)]
        action: BlobsAction,
    },
    /// Show the pipeline's state: sources, sinks, lag, dead letters, held partitions.
    ///
    /// Asks the running `sluice run` through its HTTP API when the config has `[http]`;
    /// otherwise (or when it does not answer) reads each source's checkpoint from Kafka and
    /// each sink's applied offsets from its target beside the ends of its partitions.
    Status {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
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

#[derive(Debug, Subcommand)]
pub enum BlobsAction {
    /// Compare each sink's blob ledger (sluice.blobs in its target) with the buckets.
    ///
    /// Every object a live ledger row names must exist with the recorded size and SHA-256;
    /// every object under a store's prefix must be named by the ledger. Prints what is
    /// missing, damaged or orphaned; exits 0 when nothing is (after repairs), 1 otherwise.
    Verify {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Only this sink (default: every sink with blob columns).
        #[arg(long, value_name = "SINK")]
        sink: Option<String>,
        /// Upload missing or damaged objects again from their source files (when a file still
        /// holds the recorded content), delete released objects no row references, and delete
        /// orphans older than --grace-s.
        #[arg(long)]
        repair: bool,
        /// Orphans younger than this many seconds are left alone: they may belong to a batch
        /// being written right now.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        grace_s: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// Sources → Kafka.
    Capture,
    /// Kafka → targets.
    Apply,
}
