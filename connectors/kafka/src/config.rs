//! Kafka settings.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[kafka]` in the Sluice config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub brokers: String,
    /// First part of every topic name: `<topic_prefix>.<schema>.<table>`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Partitions of each table topic Sluice creates (existing topics are left as they are).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the topics Sluice creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Publish a tombstone (same key, null value) after each delete, so compaction can drop
    /// the row.
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Extra librdkafka client properties (`security.protocol`, `sasl.mechanisms`, …). Values
    /// of the form `env:NAME` are read from the environment variable NAME, for secrets.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Configs of the table topics Sluice creates. The default, `cleanup.policy = "compact"`,
    /// keeps the last change of every key for ever, so that a sink replayed from the
    /// beginning (`sluice replay`) rebuilds a target's current rows from Kafka alone.
    #[serde(default = "default_topic_configs")]
    pub topic_configs: BTreeMap<String, String>,
}

fn default_topic_configs() -> BTreeMap<String, String> {
    BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())])
}

fn default_prefix() -> String {
    "sluice".into()
}

fn default_partitions() -> i32 {
    3
}

fn default_replication() -> i32 {
    1
}

fn default_true() -> bool {
    true
}

impl KafkaConfig {
    /// Problems with the values themselves (no connection needed), naming the field.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems
                .push("kafka.brokers is empty: set it to host:port of at least one broker".into());
        }
        if self.partitions < 1 {
            problems.push(format!(
                "kafka.partitions is {}: it must be at least 1",
                self.partitions
            ));
        }
        if self.replication_factor < 1 {
            problems.push(format!(
                "kafka.replication_factor is {}: it must be at least 1",
                self.replication_factor
            ));
        }
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            problems.push(format!(
                "kafka.topic_prefix {:?} is not a valid topic name part: use letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        for (key, value) in &self.properties {
            if let Some(var) = value.strip_prefix("env:") {
                if std::env::var(var).is_err() {
                    problems.push(format!(
                        "kafka.properties.\"{key}\" reads environment variable {var}, which is not set: export it"
                    ));
                }
            }
        }
        problems
    }
}
