//! The Sluice config file: TOML, parsed strictly, then validated before anything connects.
//!
//! Over 700 lines: every section's types, defaults and checks together, so each error names its field; 300 lines are unit tests.
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! topic_prefix = "sluice"
//!
//! [sources.app]
//! postgres = { host = "127.0.0.1", port = 5432, user = "sluice", password_env = "APP_PG_PASSWORD", database = "app" }
//! tables = ["public.users", "public.orders"]
//! ```
//!
//! Unknown keys are errors that name the key's full path (`sources.app.postgres.hots`).
//! Secrets never appear in the file: `password_env` names the environment variable to read,
//! `password_file` a file that holds the secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::source::SnapshotMode;
use sluice_core::TableId;
use sluice_kafka::KafkaConfig;
use sluice_mysql::{MySqlConnection, MySqlSourceSettings};
use sluice_postgres::{PostgresConnection, SourceSettings};

use crate::mapping::direct::{Ty, Var};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    /// Databases Sluice captures changes from, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Databases Sluice applies changes to, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// S3-compatible object stores that blob columns upload to, by name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// The HTTP API of `sluice run`: health, status and metrics (off without it).
    pub http: Option<crate::http::HttpConfig>,
}

pub use sluice_s3::StoreConfig;

/// `blobs.<url column> = { ... }` in a table mapping: an object uploaded for each row, its URL
/// written into the target column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobColumn {
    /// The `[stores.<name>]` to upload to.
    pub store: String,
    /// A source column holding a file path (relative paths are resolved under `base_dirs`; a
    /// path outside them is refused)…
    pub path: Option<String>,
    /// …or a source byte column (bytea, BLOB) whose bytes become the object; the target row
    /// no longer carries it.
    pub bytes: Option<String>,
    /// Directories files may be read from (with `path`).
    #[serde(default)]
    pub base_dirs: Vec<String>,
    /// The object key: a template over the row's source columns (`sessions/{id}.pdf`), plus
    /// `{sha256}` (the content's hex SHA-256: `sha256/{sha256}` is content-addressed) and
    /// `{ext}` (the file's extension, with its dot).
    pub key: String,
    /// Default: from the file extension, else `application/octet-stream`.
    pub content_type: Option<String>,
    /// Target columns that also receive the content's hex SHA-256 and its size in bytes.
    pub sha256_column: Option<String>,
    pub size_column: Option<String>,
    /// `delete` (default): the object goes once no target row references it (row deleted,
    /// soft-deleted or filtered out, or its file replaced); `keep`: objects stay.
    #[serde(default)]
    pub on_delete: BlobDeleteMode,
    /// How long a row whose file does not exist yet (written after the row) is retried
    /// before it becomes a dead letter, in milliseconds. Its partition waits meanwhile.
    #[serde(default = "default_missing_file_wait_ms")]
    pub missing_file_wait_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlobDeleteMode {
    #[default]
    Delete,
    Keep,
}

fn default_missing_file_wait_ms() -> u64 {
    60_000
}

/// `[sinks.<name>]`: one target database fed from Kafka by one consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Connection to a Postgres target…
    pub postgres: Option<PostgresConnection>,
    /// …or to a MySQL/MariaDB target (exactly one of the two).
    pub mysql: Option<MySqlConnection>,
    /// Kafka consumer group; default `sluice-<sink name>`. Apply processes with the same group
    /// share the partitions.
    pub group: Option<String>,
    /// `apply` (default): a source truncate empties the mapped target tables; `ignore`: it
    /// does not.
    #[serde(default)]
    pub truncate: TruncateSetting,
    /// Target connections; each partition is applied by one of them, in order.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most events in one target transaction.
    #[serde(default = "default_sink_batch_events")]
    pub max_batch_events: usize,
    /// Longest a started batch waits for more events, in milliseconds.
    #[serde(default = "default_sink_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// How long a row a target foreign key refuses (its parent, from another topic, has not
    /// arrived yet) is retried before it becomes a dead letter, in milliseconds; its partition
    /// waits meanwhile, the others go on. 0: a dead letter at once.
    #[serde(default = "default_foreign_key_wait_ms")]
    pub foreign_key_wait_ms: u64,
    /// Source table → target table mappings.
    pub tables: Vec<TableMapping>,
}

/// `[[sinks.<name>.tables]]`: where one source table's changes go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The source table, `schema.table` (its topic is `<topic_prefix>.<schema>.<table>`).
    pub from: String,
    /// The target table; default: the same name as `from`.
    pub to: Option<String>,
    /// Target column = source column, for columns whose names differ. Every other target
    /// column takes the source column of the same name, when the event carries one.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Target column = CEL expression over `after`, `before`, `op` and `source`
    /// (`name = "after.first_name + ' ' + after.last_name"`; a literal is a static value).
    #[serde(default)]
    pub compute: BTreeMap<String, String>,
    /// Target column = a source column's value translated through a table.
    #[serde(default)]
    pub maps: BTreeMap<String, ValueMap>,
    /// Only these target columns (and the key) take source columns of the same name or
    /// renames; computed and mapped columns are always written. Default: all.
    pub include: Option<Vec<String>>,
    /// Target columns never written from the source.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Row filter (CEL, true or false): rows it rejects are not written, and an update that
    /// makes a row stop matching removes it from the target (per `on_delete`).
    pub filter: Option<String>,
    /// What a source delete (or a row leaving the filter) does: `delete` (default), `soft`
    /// (sets the `soft_delete` columns of the existing row) or `ignore`.
    #[serde(default)]
    pub on_delete: DeleteMode,
    /// For `on_delete = "soft"`: target column = CEL expression, e.g.
    /// `{ is_active = "false", deleted_at = "source.commit_time" }`.
    #[serde(default)]
    pub soft_delete: BTreeMap<String, String>,
    /// Target URL column = an object uploaded from a file or byte column (see [`BlobColumn`]).
    #[serde(default)]
    pub blobs: BTreeMap<String, BlobColumn>,
}

/// A value map: `{ from = "user_type", values = { TEACHER = "FACULTY" }, default = "STUDENT" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMap {
    /// The source column whose value is looked up (as text: `1`, `true`, `"ADMIN"`).
    pub from: String,
    /// Source value → target value.
    pub values: BTreeMap<String, serde_json::Value>,
    /// The target value for anything not in `values`; without it, such values pass through.
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    #[default]
    Delete,
    Soft,
    Ignore,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TruncateSetting {
    #[default]
    Apply,
    Ignore,
}

fn default_workers() -> usize {
    4
}

fn default_sink_batch_events() -> usize {
    5000
}

fn default_foreign_key_wait_ms() -> u64 {
    60_000
}

fn default_sink_batch_delay_ms() -> u64 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection to a Postgres source…
    pub postgres: Option<PostgresConnection>,
    /// …or to a MySQL/MariaDB source (binlog capture).
    pub mysql: Option<MySqlConnection>,
    /// Tables to capture, as `schema.table` (or `table` for `public.table`). For MySQL the
    /// schema is the database; `table` alone means a table of the connection's database.
    pub tables: Vec<String>,
    /// Postgres: replication slot name; default `sluice_<source name>`.
    pub slot: Option<String>,
    /// Postgres: publication name; default `sluice_<source name>`.
    pub publication: Option<String>,
    /// MySQL/MariaDB: the server id Sluice registers as a replica with; it must differ from
    /// every other replica's. Default: derived from the source name (1000000000 + a hash).
    pub server_id: Option<u32>,
    /// `initial` (default): a source without a checkpoint starts with a snapshot of existing
    /// rows; `never`: only changes from the moment capture first starts.
    #[serde(default)]
    pub snapshot: SnapshotSetting,
    /// Most events in one batch handed from the source to the publisher.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Longest time a started batch waits for more events, in milliseconds.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// How often the durable capture checkpoint is written, in milliseconds.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Rows per chunk of an incremental backfill (a table added to a running source, or
    /// `sluice snapshot`).
    #[serde(default = "default_backfill_chunk_rows")]
    pub backfill_chunk_rows: usize,
    /// Most rows a backfill reads per second, to spare a busy source; absent or 0: as fast as
    /// the pipeline takes them.
    #[serde(default)]
    pub backfill_max_rows_per_second: u64,
    /// MySQL/MariaDB: the table backfills and `sluice snapshot` write their watermarks into,
    /// `database.table` (or `table` in the connection's database); default `sluice_signal`
    /// in the connection's database. Created when first needed.
    pub signal_table: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotSetting {
    #[default]
    Initial,
    Never,
}

impl SnapshotSetting {
    pub fn mode(self) -> SnapshotMode {
        match self {
            SnapshotSetting::Initial => SnapshotMode::Initial,
            SnapshotSetting::Never => SnapshotMode::Never,
        }
    }
}

fn default_max_batch_events() -> usize {
    4096
}

fn default_backfill_chunk_rows() -> usize {
    8192
}

fn default_max_batch_delay_ms() -> u64 {
    10
}

fn default_checkpoint_interval_ms() -> u64 {
    1000
}

/// A config that could not be loaded: unreadable, not TOML, unknown key, or invalid values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path} is not valid:\n  - {}", problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: display.clone(),
            message,
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: display,
                problems,
            })
        }
    }

    /// Parses TOML text; the error names the offending key's path.
    pub fn parse(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_owned();
            if path.is_empty() || path == "." {
                message
            } else {
                format!("at `{path}`: {message}")
            }
        })
    }

    /// Checks values that parse but make no sense, naming each field.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.kafka.validate();
        if let Some(http) = &self.http {
            problems.extend(http.problems());
        }
        if self.sources.is_empty() && self.sinks.is_empty() {
            problems.push(
                "no [sources.<name>] or [sinks.<name>] section: configure a source to capture from, a sink to apply to, or both".into(),
            );
        }
        for (name, store) in &self.stores {
            let at = format!("stores.{name}");
            if store.bucket.is_empty() || store.region.is_empty() {
                problems.push(format!("{at}: bucket and region must not be empty"));
            }
            if let Some(url) = &store.public_url {
                if !url.contains("{key}") {
                    problems.push(format!(
                        "{at}.public_url: {url:?} has no {{key}}: write e.g. \"https://cdn.example.com/{{key}}\""
                    ));
                }
            }
            if store.public_url.is_none() && !(1..=7 * 24 * 3600).contains(&store.presign_ttl_s) {
                problems.push(format!(
                    "{at}.presign_ttl_s: presigned URLs last from 1 s to 7 days (604800 s)"
                ));
            }
            if store.upload_concurrency == 0 {
                problems.push(format!("{at}.upload_concurrency must be at least 1"));
            }
            if store.multipart_part_mb < 5 {
                problems.push(format!(
                    "{at}.multipart_part_mb: S3 parts are at least 5 MB"
                ));
            }
        }
        for (name, source) in &self.sources {
            let at = format!("sources.{name}");
            if !is_plain_name(name) {
                problems.push(format!(
                    "{at}: source names may use only lower-case letters, digits and '_' (they name replication slots)"
                ));
            }
            match (&source.postgres, &source.mysql) {
                (None, None) => problems.push(format!(
                    "{at}: no connection: add `postgres = {{ host = …, user = …, database = … }}` or `mysql = {{ … }}`"
                )),
                (Some(_), Some(_)) => problems.push(format!(
                    "{at}: both `postgres` and `mysql` are set: a source reads one database; use two sources"
                )),
                _ => {}
            }
            if let Some(pg) = &source.postgres {
                if pg.user.is_empty() || pg.database.is_empty() {
                    problems.push(format!(
                        "{at}.postgres: user and database must not be empty"
                    ));
                }
                for (field, set) in [
                    ("server_id", source.server_id.is_some()),
                    ("signal_table", source.signal_table.is_some()),
                ] {
                    if set {
                        problems.push(format!(
                            "{at}.{field} is a MySQL/MariaDB setting: remove it from this Postgres source"
                        ));
                    }
                }
            }
            if let Some(my) = &source.mysql {
                if my.user.is_empty() || my.database.is_empty() {
                    problems.push(format!("{at}.mysql: user and database must not be empty"));
                }
                for (field, value) in [("slot", &source.slot), ("publication", &source.publication)]
                {
                    if value.is_some() {
                        problems.push(format!(
                            "{at}.{field} is a Postgres setting: remove it from this MySQL/MariaDB source"
                        ));
                    }
                }
                if source.server_id == Some(0) {
                    problems.push(format!(
                        "{at}.server_id must not be 0 (the server refuses replicas with id 0)"
                    ));
                }
                if let Some(t) = &source.signal_table {
                    if TableId::parse(t, &my.database).is_none() {
                        problems.push(format!(
                            "{at}.signal_table: {t:?} is not a table name: write \"database.table\" or \"table\" (a part holding a '.' goes in double quotes: \"\\\"eu.sales\\\".orders\")"
                        ));
                    }
                }
            }
            if source.tables.is_empty() {
                problems.push(format!(
                    "{at}.tables is empty: list the tables to capture as \"schema.table\""
                ));
            }
            for t in &source.tables {
                if TableId::parse(t, "public").is_none() {
                    problems.push(format!(
                        "{at}.tables: {t:?} is not a table name: write \"schema.table\" or \"table\" (a part holding a '.' goes in double quotes: \"\\\"eu.sales\\\".orders\")"
                    ));
                }
            }
            for (field, value) in [("slot", &source.slot), ("publication", &source.publication)] {
                if let Some(v) = value {
                    if !is_plain_name(v) || v.len() > 63 {
                        problems.push(format!(
                            "{at}.{field} {v:?}: use at most 63 lower-case letters, digits and '_'"
                        ));
                    }
                }
            }
            if source.max_batch_events == 0 {
                problems.push(format!("{at}.max_batch_events must be at least 1"));
            }
            if source.backfill_chunk_rows == 0 {
                problems.push(format!("{at}.backfill_chunk_rows must be at least 1"));
            }
            if source.checkpoint_interval_ms == 0 {
                problems.push(format!("{at}.checkpoint_interval_ms must be at least 1"));
            }
        }
        problems.extend(self.tls_problems());
        let mut collisions = self.topic_collisions();
        collisions.dedup();
        problems.extend(collisions);
        for (name, sink) in &self.sinks {
            problems.extend(self.validate_sink(name, sink));
        }
        problems
    }

    /// TLS settings of every database connection that do not hang together or name a file
    /// that cannot be read, found once here rather than at each connection.
    fn tls_problems(&self) -> Vec<String> {
        let sources = self.sources.iter().flat_map(|(name, s)| {
            let pg = s
                .postgres
                .as_ref()
                .map(|c| (format!("sources.{name}.postgres"), c.tls()));
            let my = s
                .mysql
                .as_ref()
                .map(|c| (format!("sources.{name}.mysql"), c.tls()));
            pg.into_iter().chain(my)
        });
        let sinks = self.sinks.iter().flat_map(|(name, s)| {
            let pg = s
                .postgres
                .as_ref()
                .map(|c| (format!("sinks.{name}.postgres"), c.tls()));
            let my = s
                .mysql
                .as_ref()
                .map(|c| (format!("sinks.{name}.mysql"), c.tls()));
            pg.into_iter().chain(my)
        });
        sources
            .chain(sinks)
            .filter_map(|(at, tls)| tls.check().err().map(|e| format!("{at}.{e}")))
            .collect()
    }

    /// Captured tables whose names map to one topic (characters Kafka refuses become `_`, so
    /// `"a b"` and `a_b` meet): their changes would mix in one topic.
    fn topic_collisions(&self) -> Vec<String> {
        let mut seen: std::collections::BTreeMap<String, (String, TableId)> = Default::default();
        let mut problems = Vec::new();
        for name in self.sources.keys() {
            for table in self.source_tables(name) {
                let topic = sluice_core::topic_name(&self.kafka.topic_prefix, &table);
                match seen.get(&topic) {
                    Some((other_source, other)) if other != &table => problems.push(format!(
                        "sources.{name}.tables: table {table} and table {other} (source {other_source}) would both publish to topic {topic} (characters Kafka does not allow in topic names become '_'), mixing their changes: rename one of the two tables, or leave one out of tables"
                    )),
                    Some((other_source, _)) if other_source != name => problems.push(format!(
                        "sources.{name}.tables: table {table} is captured by source {other_source} too; both would publish to topic {topic}, mixing two databases' rows: capture it in one source, or run the other with a config of its own and another kafka.topic_prefix"
                    )),
                    Some(_) => {}
                    None => {
                        seen.insert(topic, (name.clone(), table));
                    }
                }
            }
        }
        problems
    }

    fn validate_sink(&self, name: &str, sink: &SinkConfig) -> Vec<String> {
        let mut problems = Vec::new();
        let at = format!("sinks.{name}");
        if !is_plain_name(name) {
            problems.push(format!(
                "{at}: sink names may use only lower-case letters, digits and '_'"
            ));
        }
        match (&sink.postgres, &sink.mysql) {
            (None, None) => problems.push(format!(
                "{at}: no connection: add `postgres = {{ host = …, user = …, database = … }}` or `mysql = {{ … }}`"
            )),
            (Some(_), Some(_)) => problems.push(format!(
                "{at}: both `postgres` and `mysql` are set: a sink writes to one database; use two sinks"
            )),
            (Some(pg), None) if pg.user.is_empty() || pg.database.is_empty() => problems.push(
                format!("{at}.postgres: user and database must not be empty"),
            ),
            (None, Some(my)) if my.user.is_empty() || my.database.is_empty() => problems.push(
                format!("{at}.mysql: user and database must not be empty"),
            ),
            _ => {}
        }
        if sink.tables.is_empty() {
            problems.push(format!(
                "{at}.tables is empty: add [[{at}.tables]] with from = \"schema.table\""
            ));
        }
        if sink.workers == 0 {
            problems.push(format!("{at}.workers must be at least 1"));
        }
        if sink.max_batch_events == 0 {
            problems.push(format!("{at}.max_batch_events must be at least 1"));
        }
        if let Some(g) = &sink.group {
            if g.trim().is_empty() {
                problems.push(format!("{at}.group must not be empty"));
            }
        }
        let captured: Vec<TableId> = self
            .sources
            .keys()
            .flat_map(|name| self.source_tables(name))
            .collect();
        for (i, m) in sink.tables.iter().enumerate() {
            let at = format!("{at}.tables[{i}]");
            match TableId::parse(&m.from, "public") {
                None => problems.push(format!(
                    "{at}.from: {:?} is not a table name: write \"schema.table\" (a part holding a '.' goes in double quotes: \"\\\"eu.sales\\\".orders\")",
                    m.from
                )),
                // With sources in the same file, a mapping must name a captured table.
                Some(t) if !self.sources.is_empty() && !captured.contains(&t) => {
                    problems.push(format!(
                        "{at}.from: {t} is not captured by any source: add it to a source's tables, or fix the name"
                    ))
                }
                Some(_) => {}
            }
            if let Some(to) = &m.to {
                if TableId::parse(to, "public").is_none() {
                    problems.push(format!(
                        "{at}.to: {to:?} is not a table name: write \"schema.table\" (a part holding a '.' goes in double quotes: \"\\\"eu.sales\\\".orders\")"
                    ));
                }
            }
            for (target, source) in &m.columns {
                if target.is_empty() || source.is_empty() {
                    problems.push(format!("{at}.columns: column names must not be empty"));
                }
            }
            let expressions = m
                .compute
                .iter()
                .map(|(c, e)| (format!("{at}.compute.{c}"), e))
                .chain(m.filter.iter().map(|f| (format!("{at}.filter"), f)))
                .chain(
                    m.soft_delete
                        .iter()
                        .map(|(c, e)| (format!("{at}.soft_delete.{c}"), e)),
                );
            for (path, text) in expressions {
                // Type errors that show without the tables' column types (`'a' + 1`, a filter
                // giving a number) are caught here; the rest by `sluice check` and `run`.
                let unknown = |_: Var, _: &str| Ty::Dyn;
                match crate::mapping::expr::Expr::compile(text) {
                    Err(e) => problems.push(format!("{path}: {e}")),
                    Ok(e) => match e.result_type(&unknown) {
                        Err(e) => problems.push(format!("{path}: {e}")),
                        Ok(ty)
                            if path.ends_with(".filter") && !matches!(ty, Ty::Bool | Ty::Dyn) =>
                        {
                            problems.push(format!(
                                "{path}: {text:?} gives {}, but a filter must give true or false",
                                ty.name()
                            ))
                        }
                        Ok(_) => {}
                    },
                }
            }
            match (m.on_delete, m.soft_delete.is_empty()) {
                (DeleteMode::Soft, true) => problems.push(format!(
                    "{at}.on_delete is \"soft\" but soft_delete is empty: name the columns to set, e.g. soft_delete = {{ is_active = \"false\" }}"
                )),
                (DeleteMode::Delete | DeleteMode::Ignore, false) => problems.push(format!(
                    "{at}.soft_delete is set but on_delete is not \"soft\": add on_delete = \"soft\" or remove soft_delete"
                )),
                _ => {}
            }
            for (column, blob) in &m.blobs {
                let at = format!("{at}.blobs.{column}");
                if sink.mysql.is_some() {
                    problems.push(format!(
                        "{at}: blob columns need a Postgres target (their ledger, sluice.blobs, lives there); MySQL targets do not support them yet"
                    ));
                }
                if !self.stores.contains_key(&blob.store) {
                    let known: Vec<&str> = self.stores.keys().map(String::as_str).collect();
                    problems.push(format!(
                        "{at}.store: no [stores.{}] section (stores: {})",
                        blob.store,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                match (&blob.path, &blob.bytes) {
                    (Some(_), Some(_)) | (None, None) => problems.push(format!(
                        "{at}: set exactly one of `path` (a source column holding a file path) and `bytes` (a source byte column)"
                    )),
                    (Some(_), None) if blob.base_dirs.is_empty() => problems.push(format!(
                        "{at}.base_dirs: name the directories files may be read from, e.g. base_dirs = [\"/var/app/files\"]"
                    )),
                    _ => {}
                }
                if let Err(e) = crate::mapping::keys::KeyTemplate::parse(&blob.key) {
                    problems.push(format!("{at}.key: {e}"));
                }
                if m.compute.contains_key(column) || m.maps.contains_key(column) {
                    problems.push(format!(
                        "{at}: target column {column:?} is also computed or mapped: keep one"
                    ));
                }
            }
            for (target, map) in &m.maps {
                if map.from.is_empty() {
                    problems.push(format!("{at}.maps.{target}.from must name a source column"));
                }
                if m.compute.contains_key(target) {
                    problems.push(format!(
                        "{at}: target column {target:?} is both computed and mapped: keep one"
                    ));
                }
            }
        }
        problems
    }

    /// The sources' names, comma-separated, for messages.
    pub fn source_names(&self) -> String {
        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// A source's tables as they are named in topics: for MySQL/MariaDB, `table` alone is a
    /// table of the connection's database.
    pub fn source_tables(&self, name: &str) -> Vec<TableId> {
        let Some(source) = self.sources.get(name) else {
            return Vec::new();
        };
        source
            .tables
            .iter()
            .filter_map(|t| TableId::parse(t, "public"))
            .map(|t| match &source.mysql {
                Some(my) => TableId::new(my.database_of(&t), t.name.clone()),
                None => t,
            })
            .collect()
    }

    /// The settings of a MySQL/MariaDB source, defaults filled in.
    pub fn mysql_source(&self, name: &str) -> Option<MySqlSourceSettings> {
        let source = self.sources.get(name)?;
        let connection = source.mysql.clone()?;
        let signal_table = source
            .signal_table
            .as_deref()
            .and_then(|t| TableId::parse(t, &connection.database))
            .unwrap_or_else(|| TableId::new(connection.database.clone(), "sluice_signal"));
        Some(MySqlSourceSettings {
            name: name.to_owned(),
            connection,
            tables: self.source_tables(name),
            server_id: source.server_id.unwrap_or_else(|| default_server_id(name)),
            snapshot: source.snapshot.mode(),
            topic_prefix: self.kafka.topic_prefix.clone(),
            max_batch_events: source.max_batch_events,
            max_batch_delay: Duration::from_millis(source.max_batch_delay_ms),
            signal_table,
            backfill_chunk_rows: source.backfill_chunk_rows,
            backfill_max_rows_per_second: source.backfill_max_rows_per_second,
        })
    }

    /// The settings of a Postgres source, defaults filled in.
    pub fn postgres_source(&self, name: &str) -> Option<SourceSettings> {
        let source = self.sources.get(name)?;
        let connection = source.postgres.clone()?;
        Some(SourceSettings {
            name: name.to_owned(),
            connection,
            tables: source
                .tables
                .iter()
                .filter_map(|t| TableId::parse(t, "public"))
                .collect(),
            slot: source
                .slot
                .clone()
                .unwrap_or_else(|| format!("sluice_{name}")),
            publication: source
                .publication
                .clone()
                .unwrap_or_else(|| format!("sluice_{name}")),
            snapshot: source.snapshot.mode(),
            topic_prefix: self.kafka.topic_prefix.clone(),
            max_batch_events: source.max_batch_events,
            max_batch_delay: Duration::from_millis(source.max_batch_delay_ms),
            backfill_chunk_rows: source.backfill_chunk_rows,
            backfill_max_rows_per_second: source.backfill_max_rows_per_second,
        })
    }
}

impl SinkConfig {
    /// The consumer group, default filled in.
    pub fn group(&self, name: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("sluice-{name}"))
    }
}

impl TableMapping {
    pub fn source_table(&self) -> Option<TableId> {
        TableId::parse(&self.from, "public")
    }

    pub fn target_table(&self) -> Option<TableId> {
        TableId::parse(self.to.as_deref().unwrap_or(&self.from), "public")
    }
}

/// 1000000000 + a stable hash of the source name (FNV-1a), below 2^31.
fn default_server_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    1_000_000_000 + h % 1_000_000_000
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[sources.app]
postgres = { host = "127.0.0.1", user = "sluice", database = "app", password_env = "APP_PW" }
tables = ["public.users", "orders"]
"#;

    #[test]
    fn two_sources_capturing_the_same_table_name_are_refused() {
        let cfg = Config::parse(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
[sources.east]
postgres = { user = "sluice", database = "east" }
tables = ["public.users"]
[sources.west]
postgres = { user = "sluice", database = "west" }
tables = ["users", "public.users"]
"#,
        )
        .expect("parses");
        let problems = cfg.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("table public.users is captured by source east too")
                && problems[0].contains("topic sluice.public.users"),
            "{problems:?}"
        );
    }

    #[test]
    fn unreadable_tls_files_are_named_with_their_connection() {
        let cfg = Config::parse(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
[sources.app]
postgres = { user = "sluice", database = "app", sslmode = "verify-full", sslrootcert = "/nonexistent/ca.pem" }
tables = ["users"]
"#,
        )
        .expect("parses");
        let problems = cfg.validate();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("sources.app.postgres.sslrootcert = /nonexistent/ca.pem")),
            "{problems:?}"
        );
    }

    /// The README's configuration example is a config Sluice reads as the README says.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let from = readme
            .find("## Configuration")
            .expect("configuration section");
        let block = &readme[from..];
        let start = block.find("```toml\n").expect("toml block") + "```toml\n".len();
        let text = &block[start..start + block[start..].find("```").expect("block end")];
        let cfg = Config::parse(text).unwrap_or_else(|e| panic!("README example: {e}"));
        let pg = cfg.postgres_source("app").expect("source app");
        assert_eq!(pg.connection.sslmode, sluice_core::tls::SslMode::VerifyFull);
        let sasl = cfg.kafka.sasl.as_ref().expect("[kafka.sasl]");
        assert_eq!(sasl.password, "env:KAFKA_PASSWORD");
    }

    #[test]
    fn parses_and_fills_defaults() {
        let cfg = Config::parse(GOOD).expect("parses");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let s = cfg.postgres_source("app").expect("source");
        assert_eq!(s.slot, "sluice_app");
        assert_eq!(s.tables[1], TableId::new("public", "orders"));
        assert_eq!(s.connection.port, 5432);
        assert_eq!(cfg.kafka.topic_prefix, "sluice");
    }

    #[test]
    fn tables_that_share_a_topic_are_refused_naming_both() {
        let cfg = Config::parse(&GOOD.replace(
            r#"tables = ["public.users", "orders"]"#,
            r#"tables = ["public.users", "public.a b", "a_b"]"#,
        ))
        .expect("parses");
        let problems = cfg.validate().join("\n");
        assert!(
            problems.contains("table public.a_b and table public.a b")
                && problems.contains("topic sluice.public.a_b"),
            "{problems}"
        );
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = GOOD.replace("host =", "hots =");
        let err = Config::parse(&text).expect_err("rejected");
        assert!(err.contains("sources.app.postgres"), "{err}");
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let text = GOOD.replace(
            "tables = [\"public.users\", \"orders\"]",
            "tables = [\"a.b.c\"]\nslot = \"Bad-Slot\"\nsignal_table = \"x\"",
        );
        let cfg = Config::parse(&text).expect("parses");
        let problems = cfg.validate().join("\n");
        assert!(problems.contains("sources.app.tables"), "{problems}");
        assert!(problems.contains("sources.app.slot"), "{problems}");
        assert!(
            problems.contains("sources.app.signal_table is a MySQL/MariaDB setting"),
            "{problems}"
        );
    }

    const SINK: &str = r#"
[sinks.warehouse]
postgres = { host = "127.0.0.1", user = "w", database = "wh" }

[[sinks.warehouse.tables]]
from = "public.users"
to = "people"
columns = { full_name = "name" }
"#;

    #[test]
    fn sinks_parse_with_defaults() {
        let cfg = Config::parse(&format!("{GOOD}{SINK}")).expect("parses");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let sink = &cfg.sinks["warehouse"];
        assert_eq!(sink.group("warehouse"), "sluice-warehouse");
        assert_eq!(sink.truncate, TruncateSetting::Apply);
        assert_eq!(sink.workers, 4);
        let m = &sink.tables[0];
        assert_eq!(m.target_table(), Some(TableId::new("public", "people")));
        assert_eq!(m.columns["full_name"], "name");
    }

    #[test]
    fn a_sink_alone_is_a_valid_config() {
        let text = format!("[kafka]\nbrokers = \"b:9092\"\n{SINK}");
        let cfg = Config::parse(&text).expect("parses");
        // No sources in the file: the mapping cannot be checked against them, and need not be.
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    }

    #[test]
    fn sink_mistakes_name_the_field() {
        let text = format!("{GOOD}{}", SINK.replace("public.users", "public.nope"));
        let problems = Config::parse(&text).expect("parses").validate().join("\n");
        assert!(
            problems.contains("sinks.warehouse.tables[0].from"),
            "{problems}"
        );
        assert!(
            problems.contains("not captured by any source"),
            "{problems}"
        );
        let err = Config::parse(&format!("{GOOD}{}", SINK.replace("to =", "too =")))
            .expect_err("unknown key");
        assert!(err.contains("sinks.warehouse.tables[0]"), "{err}");
        assert!(err.contains("too"), "{err}");
        let text = format!(
            "{GOOD}{}",
            SINK.replace(
                "[[sinks.warehouse.tables]]",
                "truncate = \"sometimes\"\n[[sinks.warehouse.tables]]"
            )
        );
        let err = Config::parse(&text).expect_err("bad enum");
        assert!(err.contains("sinks.warehouse.truncate"), "{err}");
    }

    /// Every example config shipped in compose/ loads with Sluice's own loader.
    #[test]
    fn shipped_example_configs_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("compose dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!cfg.sources.is_empty() || !cfg.sinks.is_empty());
                seen += 1;
            }
        }
        assert!(seen > 0, "no example config found in {}", dir.display());
    }

    #[test]
    fn debug_output_has_no_password() {
        std::env::set_var("SLUICE_TEST_SECRET_PW", "hunter2-secret");
        let text = GOOD.replace("APP_PW", "SLUICE_TEST_SECRET_PW");
        let cfg = Config::parse(&text).expect("parses");
        assert!(!format!("{cfg:?}").contains("hunter2-secret"));
    }

    #[test]
    fn mysql_sources_name_tables_by_database_and_refuse_postgres_settings() {
        let text = r#"
[kafka]
brokers = "127.0.0.1:9092"

[sources.directory]
mysql = { user = "sluice", database = "lms" }
tables = ["users", "other.institutes"]

[sinks.svc]
postgres = { user = "sluice", database = "svc" }
[[sinks.svc.tables]]
from = "lms.users"
"#;
        let cfg = Config::parse(text).expect("parses");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let s = cfg.mysql_source("directory").expect("mysql source");
        assert_eq!(
            s.tables,
            vec![
                TableId::new("lms", "users"),
                TableId::new("other", "institutes")
            ]
        );
        assert!(s.server_id >= 1_000_000_000 && s.server_id < 2_000_000_000);
        assert_eq!(s.server_id, default_server_id("directory"));
        assert_eq!(s.signal_table, TableId::new("lms", "sluice_signal"));
        assert!(cfg.postgres_source("directory").is_none());
        let named = text.replace(
            "tables = [\"users\"",
            "signal_table = \"ops.signals\"\ntables = [\"users\"",
        );
        let cfg = Config::parse(&named).expect("parses");
        let s = cfg.mysql_source("directory").expect("mysql source");
        assert_eq!(s.signal_table, TableId::new("ops", "signals"));

        let bad = text
            .replace(
                "tables = [\"users\"",
                "slot = \"x\"\nserver_id = 0\ntables = [\"users\"",
            )
            .replace("from = \"lms.users\"", "from = \"public.users\"");
        let problems = Config::parse(&bad).expect("parses").validate();
        let all = problems.join("\n");
        assert!(
            all.contains("sources.directory.slot is a Postgres setting"),
            "{all}"
        );
        assert!(
            all.contains("sources.directory.server_id must not be 0"),
            "{all}"
        );
        assert!(
            all.contains("public.users is not captured by any source"),
            "{all}"
        );
    }

    #[test]
    fn blob_columns_and_stores_are_checked_when_the_config_loads() {
        let text = r#"
[kafka]
brokers = "127.0.0.1:9092"

[stores.docs]
region = "garage"
bucket = "b"
public_url = "https://cdn.example.com/"
presign_ttl_s = 0
multipart_part_mb = 2

[sinks.svc]
postgres = { user = "sluice", database = "svc" }
[[sinks.svc.tables]]
from = "app.sessions"
blobs.pdf_url = { store = "reports", path = "pdf_path", bytes = "pdf", key = "/sessions/{id" }
blobs.json_url = { store = "docs", path = "json_path", key = "sessions/{id}.json" }
compute = { json_url = "'x'" }

[sinks.my]
mysql = { user = "sluice", database = "svc" }
[[sinks.my.tables]]
from = "app.files"
blobs.url = { store = "docs", bytes = "data", key = "files/{sha256}" }
"#;
        let cfg = Config::parse(text).expect("parses");
        let all = cfg.validate().join("\n");
        for expected in [
            "stores.docs.public_url: \"https://cdn.example.com/\" has no {key}",
            "stores.docs.multipart_part_mb: S3 parts are at least 5 MB",
            "sinks.svc.tables[0].blobs.pdf_url.store: no [stores.reports] section (stores: docs)",
            "sinks.svc.tables[0].blobs.pdf_url: set exactly one of `path`",
            "sinks.svc.tables[0].blobs.pdf_url.key: \"/sessions/{id\" starts with '/'",
            "sinks.svc.tables[0].blobs.json_url.base_dirs: name the directories files may be read from",
            "sinks.svc.tables[0].blobs.json_url: target column \"json_url\" is also computed or mapped",
            "sinks.my.tables[0].blobs.url: blob columns need a Postgres target",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        // The store's Debug output names the credentials' variables, never their values.
        let debug = format!("{:?}", cfg.stores["docs"]);
        assert!(debug.contains("SLUICE_S3_ACCESS_KEY_ID"), "{debug}");
        let err = Config::parse(&text.replace("bucket = \"b\"", "bucket = \"b\"\nsecret = \"x\""))
            .expect_err("unknown key");
        assert!(err.contains("stores.docs"), "{err}");
    }

    #[test]
    fn mapping_expressions_are_checked_when_the_config_loads() {
        let text = r#"
[kafka]
brokers = "127.0.0.1:9092"

[sinks.svc]
postgres = { user = "sluice", database = "svc" }
[[sinks.svc.tables]]
from = "lms.users"
compute = { name = "after.first_name + ' ' +" }
filter = "row.status == 'ACTIVE'"
on_delete = "soft"
[[sinks.svc.tables]]
from = "lms.users"
soft_delete = { is_active = "false" }
maps.role = { from = "", values = { A = "B" } }
compute = { role = "'x'", label = "'n' + 1" }
[[sinks.svc.tables]]
from = "lms.users"
filter = "size(after.name) + 1"
"#;
        let cfg = Config::parse(text).expect("parses");
        let all = cfg.validate().join("\n");
        assert!(all.contains("sinks.svc.tables[0].compute.name: CEL syntax error in \"after.first_name + ' ' +\" at line 1, column"), "{all}");
        assert!(all.contains("sinks.svc.tables[0].filter: expression \"row.status == 'ACTIVE'\" uses unknown variable(s) row"), "{all}");
        assert!(
            all.contains("sinks.svc.tables[0].on_delete is \"soft\" but soft_delete is empty"),
            "{all}"
        );
        assert!(
            all.contains("sinks.svc.tables[1].soft_delete is set but on_delete is not \"soft\""),
            "{all}"
        );
        assert!(
            all.contains("sinks.svc.tables[1].maps.role.from must name a source column"),
            "{all}"
        );
        assert!(
            all.contains("target column \"role\" is both computed and mapped"),
            "{all}"
        );
        assert!(
            all.contains("sinks.svc.tables[1].compute.label: CEL type error in \"'n' + 1\" at line 1, column 5: no `+` for string and int (convert with string())"),
            "{all}"
        );
        assert!(
            all.contains("sinks.svc.tables[2].filter: \"size(after.name) + 1\" gives int, but a filter must give true or false"),
            "{all}"
        );
        let bad_mode = text.replace("on_delete = \"soft\"", "on_delete = \"erase\"");
        let err = Config::parse(&bad_mode).expect_err("unknown variant");
        assert!(err.contains("sinks.svc.tables[0].on_delete"), "{err}");
    }
}
