//! Kafka settings.

use std::collections::BTreeMap;

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
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
    /// The largest change event Sluice publishes (a row's envelope, before compression),
    /// in bytes: the producer's `message.max.bytes` and the `max.message.bytes` of the table
    /// topics Sluice creates (unless `topic_configs` sets it). Kafka's own default is 1 MB;
    /// one row over it would stop capture.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Publish a tombstone (same key, null value) after each delete, so compaction can drop
    /// the row.
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// TLS to the brokers: `security.protocol` SSL, or SASL_SSL with `[kafka.sasl]`.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication: `security.protocol` SASL_SSL with `[kafka.tls]`, else
    /// SASL_PLAINTEXT.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka client properties, which win over what `tls` and `sasl` set. Values of
    /// the form `env:NAME` are read from the environment variable NAME and `file:PATH` from
    /// the file PATH, for secrets.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Configs of the table topics Sluice creates. The default, `cleanup.policy = "compact"`,
    /// keeps the last change of every key for ever, so that a sink replayed from the
    /// beginning (`sluice replay`) rebuilds a target's current rows from Kafka alone.
    #[serde(default = "default_topic_configs")]
    pub topic_configs: BTreeMap<String, String>,
}

/// `[kafka.tls]`: how Sluice checks the brokers' certificates, and its own for mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the CA certificates the brokers' certificates chain to (default: the
    /// system's CA store).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for brokers that require mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key file's password, as `env:NAME` or `file:PATH` (never the password itself).
    #[serde(default)]
    pub key_password: Option<String>,
    /// Check that a broker's certificate names the host it was reached by (default true).
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

/// `[kafka.sasl]`: a user name and password the brokers check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Where the password is: `env:NAME` or `file:PATH` (never the password itself).
    pub password: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A secret setting's value: `env:NAME` or `file:PATH`. `Err` names the field and never holds
/// the value.
fn secret(reference: &str, field: &str) -> Result<SecretString, String> {
    if !reference.starts_with("env:") && !reference.starts_with("file:") {
        return Err(format!(
            "{field} must say where the secret is, as \"env:NAME\" or \"file:PATH\", not hold it"
        ));
    }
    sluice_core::secret::resolve(reference, field)
}

impl KafkaConfig {
    /// librdkafka's properties for `[kafka.tls]` and `[kafka.sasl]`, secrets read. `Err`
    /// names the field whose secret cannot be read.
    pub fn security_properties(&self) -> Result<Vec<(&'static str, String)>, String> {
        let mut out = Vec::new();
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => return Ok(out),
            (Some(_), None) => "SSL",
            (Some(_), Some(_)) => "SASL_SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
        };
        out.push(("security.protocol", protocol.to_owned()));
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| p.display().to_string();
            if let Some(ca) = &tls.ca_file {
                out.push(("ssl.ca.location", path(ca)));
            }
            if let Some(cert) = &tls.cert_file {
                out.push(("ssl.certificate.location", path(cert)));
            }
            if let Some(key) = &tls.key_file {
                out.push(("ssl.key.location", path(key)));
            }
            if let Some(reference) = &tls.key_password {
                let password = secret(reference, "kafka.tls.key_password")?;
                out.push(("ssl.key.password", password.expose_secret().to_owned()));
            }
            let check = if tls.verify_hostname { "https" } else { "none" };
            out.push(("ssl.endpoint.identification.algorithm", check.to_owned()));
        }
        if let Some(sasl) = &self.sasl {
            let password = secret(&sasl.password, "kafka.sasl.password")?;
            out.push(("sasl.mechanisms", sasl.mechanism.as_str().to_owned()));
            out.push(("sasl.username", sasl.username.clone()));
            out.push(("sasl.password", password.expose_secret().to_owned()));
        }
        Ok(out)
    }
}

fn default_max_message_bytes() -> u64 {
    16 * 1024 * 1024
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
        if !(1_000..=1_000_000_000).contains(&self.max_message_bytes) {
            problems.push(format!(
                "kafka.max_message_bytes is {}: it must be between 1000 and 1000000000",
                self.max_message_bytes
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
            if value.starts_with("env:") || value.starts_with("file:") {
                let field = format!("kafka.properties.\"{key}\"");
                if let Err(e) = sluice_core::secret::resolve(value, &field) {
                    problems.push(e);
                }
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                problems.push("kafka.tls.cert_file and kafka.tls.key_file go together: set both (the client certificate and its key) or neither".into());
            }
            for (field, file) in [
                ("kafka.tls.ca_file", &tls.ca_file),
                ("kafka.tls.cert_file", &tls.cert_file),
                ("kafka.tls.key_file", &tls.key_file),
            ] {
                if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                    problems.push(format!(
                        "{field} = {}: no such file: point it at the PEM file",
                        f.display()
                    ));
                }
            }
        }
        if let Err(e) = self.security_properties() {
            problems.push(e);
        }
        problems
    }
}
