//! A private tansu broker (sqlite storage) and a reader of whole topics.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::{free_port, require_binary, signal_child, TempDir};

pub const TANSU_INSTALL: &str =
    "cargo install tansu --version 0.6.0 --locked --features libsql,dynostore";

/// A tansu broker with the sqlite storage engine (offsets and group state survive restarts).
pub struct Broker {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with_engine("sqlite")
    }

    /// `sqlite` (durable, correct offsets) or `memory` (fast, for throughput benchmarks only:
    /// its high watermark and offsets-for-times are wrong).
    pub fn start_with_engine(engine: &str) -> Broker {
        let storage = match engine {
            "memory" => "memory://tansu/",
            _ => "sqlite://tansu.db",
        };
        let tansu = require_binary("tansu", &[], TANSU_INSTALL);
        let mut dir = TempDir::new("tansu");
        for _ in 0..5 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let log = std::fs::File::create(dir.path().join("broker.log")).expect("broker log");
            let child = Command::new(&tansu)
                .current_dir(dir.path())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", storage, "--silent"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn tansu");
            let mut broker = Broker {
                dir,
                port,
                child: Some(child),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return broker;
                }
                if let Some(Ok(Some(_))) = broker.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            broker.kill();
            dir = std::mem::replace(&mut broker.dir, TempDir::new("tansu-spare"));
        }
        panic!("tansu did not start");
    }

    /// The broker's process id (for CPU figures in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_child(&mut c, true);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
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
            // tansu answers a fetch only after the full wait when little data is there.
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

    /// Non-tombstone envelopes, in the order read.
    pub fn envelopes(&self) -> Vec<&serde_json::Value> {
        self.records
            .iter()
            .filter_map(|r| r.value.as_ref())
            .collect()
    }
}
