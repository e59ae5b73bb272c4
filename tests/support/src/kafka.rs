//! A private Apache Kafka broker (KRaft, one combined broker and controller) and a reader of
//! whole topics.
//!
//! The broker runs from the jars `scripts/deps.sh` copies from Maven Central into
//! `$SLUICE_DEPS/kafka-<version>/libs` (default `~/.cache/sluice`). Each broker has its own
//! data directory and ports, so a test may kill it with `kill -9` and start it again on the same
//! ports with the same data, as an operator's restart would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::{end_child, free_port, run_checked, TempDir};

/// The Kafka version scripts/kafka/pom.xml names.
pub const KAFKA_VERSION: &str = "4.1.1";

const KAFKA_INSTALL: &str =
    "bash scripts/deps.sh (it copies Apache Kafka's jars from Maven Central)";

/// Where deps.sh puts what it fetches (the Kafka jars, the class-data-sharing archive, MySQL
/// 8) and the benchmarks theirs (Debezium): `$SLUICE_DEPS`, else `~/.cache/sluice`.
pub fn deps_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_DEPS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sluice")
}

fn kafka_libs() -> PathBuf {
    let libs = deps_dir().join(format!("kafka-{KAFKA_VERSION}/libs"));
    if !libs
        .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
        .is_file()
    {
        panic!(
            "Apache Kafka {KAFKA_VERSION} not found in {}: install it with `{KAFKA_INSTALL}`",
            libs.display()
        );
    }
    libs
}

/// A private Apache Kafka broker. Dropping it kills it.
pub struct Broker {
    dir: TempDir,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
    secure: Option<SecureListeners>,
}

/// Two more listeners beside PLAINTEXT: `SSL` (mutual TLS: clients show a certificate the CA
/// signed) and `SASL_SSL` with SCRAM-SHA-512 for one user, created when the storage is
/// formatted.
#[derive(Debug, Clone)]
pub struct SecureListeners {
    /// PEM files: the broker's certificate, its PKCS#8 key, and the CA clients' certificates
    /// must chain to.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub scram_user: String,
    pub scram_password: String,
    ssl_port: u16,
    sasl_port: u16,
}

impl SecureListeners {
    pub fn new(cert: &Path, key: &Path, ca: &Path, user: &str, password: &str) -> Self {
        SecureListeners {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
            scram_user: user.to_owned(),
            scram_password: password.to_owned(),
            ssl_port: 0,
            sasl_port: 0,
        }
    }
}

impl Broker {
    /// Starts a broker on free ports and waits until it answers metadata requests.
    pub fn start() -> Broker {
        Self::start_inner(None)
    }

    /// [`Broker::start`] with an `SSL` and a `SASL_SSL` listener too (see [`SecureListeners`]).
    pub fn start_secure(secure: SecureListeners) -> Broker {
        Self::start_inner(Some(secure))
    }

    fn start_inner(secure: Option<SecureListeners>) -> Broker {
        let libs = kafka_libs();
        let mut dir = TempDir::new("kafka");
        for attempt in 0..5 {
            let mut broker = Broker {
                dir,
                port: free_port(),
                controller_port: free_port(),
                child: None,
                secure: secure.clone().map(|s| SecureListeners {
                    ssl_port: free_port(),
                    sasl_port: free_port(),
                    ..s
                }),
            };
            broker.write_config();
            broker.format(&libs);
            broker.spawn(&libs);
            if broker.wait_ready(Duration::from_secs(60)) {
                return broker;
            }
            eprintln!(
                "kafka did not start on port {} (attempt {attempt}); retrying",
                broker.port
            );
            broker.kill();
            dir = std::mem::replace(&mut broker.dir, TempDir::new("kafka-spare"));
            let _ = std::fs::remove_dir_all(dir.path());
            std::fs::create_dir_all(dir.path()).expect("recreate kafka dir");
        }
        panic!("kafka did not start");
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{c}\n\
             listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             log.cleaner.backoff.ms=200\n\
             log.retention.check.interval.ms=1000\n\
             log.segment.delete.delay.ms=100\n\
             log.flush.interval.messages=9223372036854775807\n",
            p = self.port,
            c = self.controller_port,
            data = d.join("data").display(),
        );
        if let Some(s) = &self.secure {
            // One PEM keystore file: the key, then the certificate.
            let keystore = d.join("keystore.pem");
            let pem = std::fs::read_to_string(&s.key).expect("broker key")
                + &std::fs::read_to_string(&s.cert).expect("broker certificate");
            std::fs::write(&keystore, pem).expect("write keystore.pem");
            let (p, c, ssl, sasl) = (self.port, self.controller_port, s.ssl_port, s.sasl_port);
            props = props
                .replace(
                    &format!("listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n"),
                    &format!("listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl}\n"),
                )
                .replace(
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n"),
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl}\n"),
                )
                .replace(
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\n",
                );
            props.push_str(&format!(
                "ssl.keystore.type=PEM\nssl.keystore.location={keystore}\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={ca}\n\
                 listener.name.ssl.ssl.client.auth=required\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n",
                keystore = keystore.display(),
                ca = s.ca.display(),
            ));
        }
        std::fs::write(d.join("server.properties"), props).expect("write server.properties");
        let log4j = "status = warn\n\
            appender.file.type = File\n\
            appender.file.name = file\n\
            appender.file.fileName = ${sys:kafka.logs.dir}/server.log\n\
            appender.file.layout.type = PatternLayout\n\
            appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
            rootLogger.level = INFO\n\
            rootLogger.appenderRef.file.ref = file\n";
        std::fs::write(d.join("log4j2.properties"), log4j).expect("write log4j2.properties");
    }

    fn java(libs: &Path) -> Command {
        let mut c = Command::new("java");
        c.arg("-cp").arg(libs.join("*"));
        c
    }

    fn format(&self, libs: &Path) {
        let d = self.dir.path();
        run_checked(
            Self::java(libs)
                .current_dir(d)
                .args(["-Xmx256m", "-Dlog4j2.configurationFile=log4j2.properties"])
                .arg(format!("-Dkafka.logs.dir={}", d.join("logs").display()))
                .args([
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    "c2x1aWNlLXRlc3Qta2Fma2",
                    "-c",
                    "server.properties",
                ])
                // The SCRAM user, in the metadata from the first start.
                .args(self.secure.iter().flat_map(|s| {
                    let user = format!(
                        "SCRAM-SHA-512=[name={},password=\"{}\"]",
                        s.scram_user, s.scram_password
                    );
                    ["--add-scram".to_owned(), user]
                }))
                .stdin(Stdio::null()),
            "kafka storage format (java: install Java 17: apt-get install openjdk-17-jre-headless)",
        );
    }

    fn spawn(&mut self, libs: &Path) {
        let d = self.dir.path();
        let out = std::fs::File::create(d.join("stdout.log")).expect("kafka stdout log");
        let mut cmd = Self::java(libs);
        cmd.current_dir(d)
            .args([
                "-Xms128m",
                "-Xmx512m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
            ])
            .arg("-Dlog4j2.configurationFile=log4j2.properties")
            .arg(format!("-Dkafka.logs.dir={}", d.join("logs").display()));
        // A class-data-sharing archive (written by scripts/deps.sh) saves seconds of start-up.
        let archive = deps_dir().join(format!("kafka-{KAFKA_VERSION}/classes.jsa"));
        if archive.is_file() {
            cmd.arg(format!("-XX:SharedArchiveFile={}", archive.display()))
                .arg("-Xshare:auto");
        }
        cmd.args(["kafka.Kafka", "server.properties"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        self.child = Some(cmd.spawn().expect("spawn kafka"));
    }

    /// Polls metadata until the broker lists itself, or the process exits, or `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let probe: BaseConsumer = match ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "0")
            .create()
        {
            Ok(c) => c,
            Err(_) => return false,
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(md) = probe.fetch_metadata(None, Duration::from_millis(500)) {
                if !md.brokers().is_empty() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The broker's process id (for CPU figures in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `SSL` listener's address (a broker started with [`Broker::start_secure`]).
    pub fn ssl_brokers(&self) -> String {
        let s = self
            .secure
            .as_ref()
            .expect("a broker with secure listeners");
        format!("127.0.0.1:{}", s.ssl_port)
    }

    /// The `SASL_SSL` listener's address (a broker started with [`Broker::start_secure`]).
    pub fn sasl_ssl_brokers(&self) -> String {
        let s = self
            .secure
            .as_ref()
            .expect("a broker with secure listeners");
        format!("127.0.0.1:{}", s.sasl_port)
    }

    /// The broker's log file (for a post-mortem).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs/server.log")
    }

    /// `kill -9` of the broker; its data stays for [`Broker::restart`].
    pub fn kill(&mut self) {
        end_child(&mut self.child, false);
    }

    /// Starts a killed (or running: it is killed first) broker again on the same ports and
    /// data, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let libs = kafka_libs();
        self.spawn(&libs);
        assert!(
            self.wait_ready(Duration::from_secs(60)),
            "kafka did not restart; see {}",
            self.log_path().display()
        );
    }

    /// Sets topic-level configs (e.g. `segment.ms`) with Kafka's own kafka-configs tool.
    pub fn alter_topic_config(&self, topic: &str, configs: &[(&str, &str)]) {
        let libs = kafka_libs();
        let pairs = configs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        run_checked(
            Self::java(&libs)
                .args(["-Xmx128m", "-Dlog4j2.configurationFile=none"])
                .args(["kafka.admin.ConfigCommand", "--bootstrap-server"])
                .arg(self.brokers())
                .args([
                    "--entity-type",
                    "topics",
                    "--entity-name",
                    topic,
                    "--alter",
                    "--add-config",
                ])
                .arg(&pairs)
                .stdin(Stdio::null()),
            &format!("kafka-configs {topic} {pairs}"),
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<serde_json::Value>,
    /// `None` for a tombstone.
    pub value: Option<serde_json::Value>,
}

/// Reads every partition of a topic from the beginning, accumulating what it saw.
pub struct TopicReader {
    consumer: BaseConsumer,
    seen: std::collections::HashSet<(i32, i64)>,
    topic: String,
    partitions: i32,
    pub records: Vec<Record>,
}

impl TopicReader {
    pub fn new(brokers: &str, topic: &str) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("test-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            // Never skip ahead: if the broker ever answers "offset out of range", start over
            // (records already seen are ignored by offset) rather than jump to the end.
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("create consumer");
        // Wait for the topic to exist (Sluice creates it when it starts).
        let deadline = Instant::now() + Duration::from_secs(120);
        let partitions = loop {
            let n = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .unwrap_or(0);
            if n > 0 {
                break n;
            }
            assert!(Instant::now() < deadline, "topic {topic} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&tpl).expect("assign");
        TopicReader {
            consumer,
            seen: Default::default(),
            topic: topic.to_owned(),
            partitions: partitions as i32,
            records: Vec::new(),
        }
    }

    /// Consumes until `done(&records)` holds; panics after `timeout`.
    pub fn read_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Record]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut since_check = 0usize;
        loop {
            // The condition may scan every record: test it when the topic goes quiet, or every
            // thousand records while it streams.
            let got = self.poll_one(Duration::from_millis(100));
            since_check += usize::from(got);
            if (!got || since_check >= 1000) && done(&self.records) {
                return;
            }
            if since_check >= 1000 {
                since_check = 0;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; have {} records",
                self.records.len()
            );
        }
    }

    /// Consumes every record the topic holds now (up to each partition's end); panics after
    /// `timeout`.
    pub fn read_all(&mut self, timeout: Duration) {
        let ends: Vec<(i32, i64)> = (0..self.partitions)
            .map(|p| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (p, high)
            })
            .collect();
        let what = format!("every record of {}", self.topic);
        self.read_until(timeout, &what, |records| {
            ends.iter().all(|(p, high)| {
                *high == 0
                    || records
                        .iter()
                        .any(|r| r.partition == *p && r.offset == high - 1)
            })
        });
    }

    /// Reads one message, if one comes within `wait`; returns whether it was new.
    fn poll_one(&mut self, wait: Duration) -> bool {
        let Some(Ok(m)) = self.consumer.poll(wait) else {
            return false;
        };
        if !self.seen.insert((m.partition(), m.offset())) {
            return false;
        }
        let parse = |b: Option<&[u8]>| b.map(|b| serde_json::from_slice(b).expect("json message"));
        self.records.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            // Table topics have JSON keys; checkpoint topics the source's name as text.
            key: m.key().map(|b| {
                serde_json::from_slice(b).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                })
            }),
            value: parse(m.payload()),
        });
        true
    }

    /// Each partition's earliest offset still in Kafka and its end (low and high watermarks).
    pub fn watermarks(&self) -> Vec<(i64, i64)> {
        (0..self.partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("watermarks")
            })
            .collect()
    }

    /// Reads every partition up to its current end (high watermark).
    pub fn read_to_end(&mut self, timeout: Duration) {
        let mut ends = Vec::new();
        for p in 0..self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.push((p, high));
        }
        let deadline = Instant::now() + timeout;
        while !ends
            .iter()
            .all(|&(p, high)| high == 0 || self.seen.contains(&(p, high - 1)))
        {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} reading {} to its end",
                self.topic
            );
            self.poll_one(Duration::from_millis(100));
        }
    }

    /// The integer keys (the key's `field`) whose last record read is neither a delete nor a
    /// tombstone: the rows a sink of this topic ends with, in key order.
    pub fn alive_ids(&self, field: &str) -> Vec<i64> {
        let mut last: std::collections::BTreeMap<i64, bool> = Default::default();
        for r in &self.records {
            let Some(id) = r.key.as_ref().and_then(|k| k[field].as_i64()) else {
                continue;
            };
            let alive = r
                .value
                .as_ref()
                .is_some_and(|e| e["op"] != "d" && !e["after"].is_null());
            last.insert(id, alive);
        }
        last.into_iter()
            .filter(|(_, a)| *a)
            .map(|(k, _)| k)
            .collect()
    }

    /// Non-tombstone envelopes, in the order read.
    pub fn envelopes(&self) -> Vec<&serde_json::Value> {
        self.records
            .iter()
            .filter_map(|r| r.value.as_ref())
            .collect()
    }
}
