//! What the benchmarks share: their `BENCH_*` settings, their servers, their config heads.

use crate::{Broker, PgCluster};

/// The number in environment variable `name`; `default` when it is unset or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Environment variable `name` as a flag: `0`, `false`, `no`, `off` are false, the rest true.
pub fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.as_str(), "0" | "false" | "no" | "off"),
        Err(_) => default,
    }
}

/// A source and a target Postgres with room for big runs (plus `settings`), and a broker.
pub fn source_target_broker(settings: &[(&str, &str)]) -> (PgCluster, PgCluster, Broker) {
    let mut tuned = vec![("shared_buffers", "256MB"), ("max_wal_size", "4GB")];
    tuned.extend_from_slice(settings);
    let source = PgCluster::start_with(&tuned);
    let target = PgCluster::start_with(&tuned);
    (source, target, Broker::start())
}

/// A config's `[kafka]` section (`brokers` and the lines `kafka`) and its `[sources.<name>]`
/// section (the lines `source`).
pub fn config_head(brokers: &str, kafka: &str, name: &str, source: &str) -> String {
    format!("[kafka]\nbrokers = \"{brokers}\"\n{kafka}\n\n[sources.{name}]\n{source}\n")
}

/// Writes `config` to `sluice.toml` in a new directory (`label` in its name) and runs Sluice
/// with it until its stream (Postgres or binlog) has started and written a checkpoint, then
/// stops it; returns the directory, the config's path and the log's.
pub fn first_checkpoint(
    sluice: &std::path::Path,
    label: &str,
    config: &str,
) -> (crate::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = crate::TempDir::new(label);
    let (path, log) = (
        dir.path().join("sluice.toml"),
        dir.path().join("sluice.log"),
    );
    std::fs::write(&path, config).expect("config");
    let minute = std::time::Duration::from_secs(60);
    let mut run = crate::SluiceProcess::run(sluice, &path, &[], &log);
    run.wait_log("stream started", 1, minute);
    run.wait_log("checkpoint written", 1, minute);
    assert!(run.stop(minute).success());
    (dir, path, log)
}

/// The capture benchmarks' config: source `bench` (`kind` = `connection`, e.g. `postgres =
/// {…}`, capturing `tables`, a TOML array's items) checkpointed every 100 ms, into 3
/// partitions without tombstones.
pub fn capture_config(brokers: &str, kind: &str, connection: &str, tables: &str) -> String {
    capture_config_with(brokers, "", kind, connection, tables)
}

/// [`capture_config`] with more `[kafka]` lines (or sections under it, `[kafka.tls]`).
pub fn capture_config_with(
    brokers: &str,
    kafka: &str,
    kind: &str,
    connection: &str,
    tables: &str,
) -> String {
    let source =
        format!("{kind} = {connection}\ntables = [{tables}]\ncheckpoint_interval_ms = 100");
    config_head(
        brokers,
        &format!("partitions = 3\ntombstones = false\n{kafka}"),
        "bench",
        &source,
    )
}

/// Writes `config` to `dir/<name>.toml` and runs `sluice --only <only>` with it, logging to
/// `dir/<name>.log`.
pub fn run_only(
    sluice: &std::path::Path,
    dir: &std::path::Path,
    only: &str,
    name: &str,
    config: &str,
) -> crate::SluiceProcess {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("config");
    let log = dir.join(format!("{name}.log"));
    crate::SluiceProcess::run(sluice, &path, &["--only", only], &log)
}

/// Prints the header row of a Markdown table of `columns`, and its separator row.
pub fn print_table_head(columns: &[&str]) {
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
}

/// TLS for a benchmark run: a CA made for it, a server certificate for 127.0.0.1, and a
/// client certificate for Sluice; what Postgres, the broker and Sluice's config need to use
/// them (databases with `sslmode = "verify-full"`, Kafka over mutual TLS).
pub struct BenchTls {
    ca: crate::tls::TestCa,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

impl BenchTls {
    pub fn new(dir: &std::path::Path) -> BenchTls {
        let ca = crate::tls::TestCa::new(&dir.join("certs"), "bench CA");
        let (cert, key) = ca.issue("server", &["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = ca.issue("sluice", &["sluice"]);
        ca.give_to("postgres");
        BenchTls {
            ca,
            cert,
            key,
            client_cert,
            client_key,
        }
    }

    /// `postgresql.conf` settings that serve the certificate.
    pub fn pg_settings(&self) -> Vec<(&'static str, String)> {
        let quoted = |p: &std::path::Path| format!("'{}'", p.display());
        vec![
            ("ssl", "on".into()),
            ("ssl_cert_file", quoted(&self.cert)),
            ("ssl_key_file", quoted(&self.key)),
        ]
    }

    /// A broker with a mutual-TLS listener (and a SASL one).
    pub fn broker(&self) -> Broker {
        Broker::start_secure(crate::kafka::SecureListeners::new(
            &self.cert,
            &self.key,
            &self.ca.ca_file(),
            "sluice",
            crate::sluice::KAFKA_PASSWORD,
        ))
    }

    /// The `[kafka.tls]` section of Sluice's config.
    pub fn kafka_section(&self) -> String {
        format!(
            "[kafka.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            self.ca.ca_file().display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }

    /// `connection` (an inline table, `{ host = …, … }`) with `sslmode = "verify-full"` and
    /// this CA.
    pub fn verify_full(&self, connection: &str) -> String {
        format!(
            "{}, sslmode = \"verify-full\", sslrootcert = \"{}\" }}",
            connection.trim_end().trim_end_matches('}').trim_end(),
            self.ca.ca_file().display()
        )
    }
}
