//! The idempotent publisher of change events.
//!
//! Over 700 lines: publishing with acknowledgements, and the topic readers a restart needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use sluice_core::envelope::{write_envelope, write_key};
use sluice_core::{ChangeEvent, Op, Position, Problem};
use tokio::sync::oneshot;

use crate::config::KafkaConfig;
use crate::error::KafkaError;

/// The header of a tombstone that holds the envelope of the delete it follows.
pub const TOMBSTONE_DELETE_HEADER: &str = "sluice.delete";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a librdkafka client config from `[kafka]`, resolving `env:` property values.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    with_properties(cfg, ClientConfig::new())
}

/// [`client_config`] over Sluice's own defaults for one client (`base`), which the config's
/// settings win over. (Copying a finished config through `config_map` would not do: it hides
/// the passwords.)
pub fn client_config_over(cfg: &KafkaConfig, base: ClientConfig) -> ClientConfig {
    with_properties(cfg, base)
}

/// [`client_config`] for a consumer. When its local queue is full, librdkafka waits
/// `fetch.queue.backoff.ms` (default 1 s) before fetching again: a reader that drains a
/// backlog then reads in one-second bursts (the apply pipeline ran at a third of its speed).
pub fn reader_config(cfg: &KafkaConfig) -> ClientConfig {
    reader_config_over(cfg, ClientConfig::new())
}

/// [`reader_config`] over a consumer's own defaults (`base`).
pub fn reader_config_over(cfg: &KafkaConfig, mut base: ClientConfig) -> ClientConfig {
    base.set("fetch.queue.backoff.ms", "10");
    with_properties(cfg, base)
}

/// The brokers, `[kafka.tls]` and `[kafka.sasl]`, and the user's `[kafka.properties]`, which
/// win over what `c` sets. A secret that cannot be read is left out (the config check names
/// it; the brokers then refuse the connection).
fn with_properties(cfg: &KafkaConfig, mut c: ClientConfig) -> ClientConfig {
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("client.id", "sluice");
    for (k, v) in cfg.security_properties().unwrap_or_default() {
        c.set(k, v);
    }
    for (k, v) in &cfg.properties {
        let value = if v.starts_with("env:") || v.starts_with("file:") {
            match sluice_core::secret::resolve(v, k) {
                Ok(secret) => secrecy::ExposeSecret::expose_secret(&secret).to_owned(),
                Err(_) => continue,
            }
        } else {
            v.clone()
        };
        c.set(k, value);
    }
    c
}

/// Records the errors librdkafka reports while the preflight waits for metadata: a refused
/// login or a failed TLS handshake is told apart from brokers that do not answer.
#[derive(Default)]
struct Probe(Mutex<Vec<(RDKafkaErrorCode, String)>>);

impl ClientContext for Probe {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let (Some(code), Ok(mut seen)) = (error.rdkafka_error_code(), self.0.lock()) {
            seen.push((code, reason.to_owned()));
        }
    }
}

impl ProducerContext for Probe {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Checks that the brokers answer, and accept Sluice's TLS and SASL settings: the preflight
/// for Kafka.
pub fn preflight(cfg: &KafkaConfig) -> Vec<Problem> {
    let producer: Result<rdkafka::producer::BaseProducer<Probe>, _> =
        client_config(cfg).create_with_context(Probe::default());
    let producer = match producer {
        Ok(p) => p,
        Err(e) => {
            return vec![Problem::new(
                "kafka",
                format!(
                    "invalid client settings: {e}: fix kafka.tls, kafka.sasl or kafka.properties"
                ),
            )]
        }
    };
    let Err(e) = producer.client().fetch_metadata(None, METADATA_TIMEOUT) else {
        return Vec::new();
    };
    // Hands the errors librdkafka queued to the probe (one event per poll).
    for _ in 0..64 {
        producer.poll(Duration::ZERO);
    }
    let seen = producer
        .context()
        .0
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let reason = |code| {
        seen.iter()
            .find(|(c, _)| *c == code)
            .map(|(_, r)| r.clone())
    };
    if let Some(why) = reason(RDKafkaErrorCode::Authentication) {
        let user = cfg.sasl.as_ref().map(|s| s.username.as_str()).unwrap_or("");
        return vec![Problem::new(
            "kafka",
            format!("the brokers refused the SASL login of kafka.sasl.username = {user:?} ({why}): check the user, kafka.sasl.mechanism and the password kafka.sasl.password points to"),
        )];
    }
    if let Some(why) = reason(RDKafkaErrorCode::SSL) {
        return vec![Problem::new(
            "kafka",
            format!("TLS with the brokers failed ({why}): check kafka.tls.ca_file (the CA that signed the brokers' certificates), the host names in kafka.brokers, and for mutual TLS kafka.tls.cert_file and key_file"),
        )];
    }
    vec![Problem::unreachable(
        "kafka",
        format!(
            "cannot reach the brokers at {} ({e}): check kafka.brokers and that the brokers are running",
            cfg.brokers
        ),
    )]
}

/// A topic Sluice creates when it is missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Topic configs, e.g. `cleanup.policy = compact`.
    pub configs: Vec<(String, String)>,
}

/// Creates topics that do not exist yet. Existing topics are left as they are.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .map_err(KafkaError::client("creating the kafka admin client"))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|spec| {
            let mut t = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            );
            for (k, v) in &spec.configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics(new_topics.iter(), &opts)
        .await
        .map_err(KafkaError::client(format!(
            "creating topics at {}: check kafka.brokers and that the brokers are running",
            cfg.brokers
        )))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "topic created");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Setup(format!(
                    "cannot create topic {name}: {code}: create it by hand or grant the client CREATE on the cluster"
                )))
            }
        }
    }
    if created.is_empty() {
        return Ok(());
    }
    // A created topic is not usable at once: its partitions get leaders a moment later, and a
    // client asking before then is told the partition is unknown. Wait for the leaders.
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || wait_for_leaders(&cfg, &created))
        .await
        .map_err(|e| KafkaError::Setup(format!("waiting for new topics: {e}")))?
}

/// Waits until every partition of `topics` has a leader (blocking).
fn wait_for_leaders(cfg: &KafkaConfig, topics: &[String]) -> Result<(), KafkaError> {
    let client: rdkafka::producer::BaseProducer = client_config(cfg)
        .create()
        .map_err(KafkaError::client("creating a kafka metadata client"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = topics.iter().all(|name| {
            client
                .client()
                .fetch_metadata(Some(name), METADATA_TIMEOUT)
                .ok()
                .and_then(|md| {
                    md.topics().iter().find(|t| t.name() == name).map(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                })
                .unwrap_or(false)
        });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Setup(format!(
                "topics {} were created but their partitions have no leader after 60 s: check the brokers' health",
                topics.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The confirmations of a group of messages (a capture batch), counted by librdkafka's
/// delivery callback: one completion per group instead of a future per message (whose
/// channel and allocations were ~7 % of capture CPU in the backfill profile).
pub struct Acks {
    /// Messages not yet confirmed, plus one until [`Acks::wait`] seals the group.
    remaining: AtomicUsize,
    /// The first delivery error.
    failed: Mutex<Option<rdkafka::error::KafkaError>>,
    done: Mutex<Option<oneshot::Sender<()>>>,
    waiter: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Acks {
    pub fn new() -> Arc<Acks> {
        let (tx, rx) = oneshot::channel();
        Arc::new(Acks {
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(None),
            done: Mutex::new(Some(tx)),
            waiter: Mutex::new(Some(rx)),
        })
    }

    fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.done.lock().ok().and_then(|mut d| d.take()) {
                let _ = tx.send(());
            }
        }
    }

    /// Waits until Kafka confirmed every message sent with this group; call it once, after
    /// the last send. An error means at least one of them is not in Kafka.
    pub async fn wait(&self) -> Result<(), KafkaError> {
        let rx = self.waiter.lock().ok().and_then(|mut w| w.take());
        self.release();
        if let Some(rx) = rx {
            rx.await.map_err(|_| {
                KafkaError::Setup("the kafka producer was dropped before confirming".into())
            })?;
        }
        match self.failed.lock().ok().and_then(|mut f| f.take()) {
            Some(source) => Err(KafkaError::Client {
                context: "kafka did not confirm a message".into(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Routes librdkafka's delivery reports to their group's [`Acks`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, _)) = result {
            if let Ok(mut failed) = acks.failed.lock() {
                failed.get_or_insert_with(|| e.clone());
            }
        }
        acks.release();
    }
}

/// Publishes change events with an idempotent producer (`acks=all`, lz4).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: Arc<ThreadedProducer<AckContext>>,
    cfg: KafkaConfig,
    tombstones: bool,
    partitions: Arc<Mutex<HashMap<String, i32>>>,
    /// Per topic and partition, the position of the last event published (see
    /// [`KafkaPublisher::load_published_positions`]).
    published: Arc<Mutex<HashMap<String, Vec<Option<Position>>>>>,
}

/// The partition the Java client's default partitioner (and librdkafka's `murmur2_random`)
/// gives a non-empty key: murmur2 of the key bytes, made positive, modulo the partition count.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

impl KafkaPublisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // Fewer, larger produce requests and better lz4 ratios; 20 ms is far inside any
            // latency budget we have.
            .set("linger.ms", "20")
            // The Java client's partitioner, so other producers of the same keys agree with us.
            .set("partitioner", "murmur2_random")
            // Bound what waits in librdkafka's queue (memory): 100k messages or 32 MB.
            .set("queue.buffering.max.messages", "100000")
            // One row's envelope may be large (kafka.max_message_bytes; Kafka's default 1 MB),
            // and the queue must hold one.
            .set(
                "queue.buffering.max.kbytes",
                (cfg.max_message_bytes / 1024 + 1024).max(32768).to_string(),
            )
            .set("message.max.bytes", cfg.max_message_bytes.to_string());
        // User properties come last and win.
        let c = client_config_over(cfg, c);
        let producer: ThreadedProducer<AckContext> =
            c.create_with_context(AckContext)
                .map_err(KafkaError::client(
                    "creating the kafka producer: check kafka.properties",
                ))?;
        Ok(KafkaPublisher {
            producer: Arc::new(producer),
            cfg: cfg.clone(),
            tombstones: cfg.tombstones,
            partitions: Arc::new(Mutex::new(HashMap::new())),
            published: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Whether an event at `position` is in partition `partition` of `topic` already (then it
    /// is not published again); otherwise notes that it is from now on.
    fn already_published(&self, topic: &str, partition: i32, position: &Position) -> bool {
        let Ok(mut published) = self.published.lock() else {
            return false;
        };
        if !published.contains_key(topic) {
            published.insert(topic.to_owned(), Vec::new());
        }
        let Some(slots) = published.get_mut(topic) else {
            return false;
        };
        let i = partition.max(0) as usize;
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        match &slots[i] {
            Some(last) if position <= last => true,
            _ => {
                slots[i] = Some(*position);
                false
            }
        }
    }

    /// Reads the source position of the last record of every partition of `topics` (blocking),
    /// so that events a previous run of capture published after its last checkpoint are not
    /// published again.
    ///
    /// Why it matters: capture resumes from its checkpoint and meets events it published
    /// already. Apply skips such duplicates by position, but a compacted topic may have removed
    /// the original and kept the duplicate (a key's last record), which apply would then skip
    /// as applied although it never saw the original: a lost change. Not publishing
    /// duplicates removes the case. A partition receives its records in publication order
    /// without gaps (idempotent producer), and positions only grow in publication order, so
    /// every event at or below a partition's last position is in it.
    pub fn load_published_positions(&self, topics: &[String]) -> Result<(), KafkaError> {
        use rdkafka::consumer::Consumer as _;
        use rdkafka::message::Message as _;
        let consumer: rdkafka::consumer::BaseConsumer = reader_config(&self.cfg)
            .set("group.id", "sluice-tail-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(KafkaError::client(
                "creating a reader of the topics' last records",
            ))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut wanted = 0usize;
        for (topic, p, _, high) in self.partitions_with_records(&consumer, topics)? {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(high - 1))
                .map_err(KafkaError::client("preparing the last-record reads"))?;
            wanted += 1;
        }
        if wanted == 0 {
            return Ok(());
        }
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("reading the topics' last records"))?;
        let mut seen = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < wanted && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            if !seen.insert((m.topic().to_owned(), m.partition())) {
                continue;
            }
            let bytes = m.payload().or_else(|| {
                use rdkafka::message::Headers as _;
                m.headers()?
                    .iter()
                    .find(|h| h.key == TOMBSTONE_DELETE_HEADER)
                    .and_then(|h| h.value)
            });
            let position = bytes
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v.get("source").and_then(Position::from_envelope_source));
            if let Some(position) = position {
                self.already_published(m.topic(), m.partition(), &position);
            }
        }
        Ok(())
    }

    /// Every partition of `topics` that holds records: (topic, partition, low, high).
    fn partitions_with_records(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer,
        topics: &[String],
    ) -> Result<Vec<(String, i32, i64, i64)>, KafkaError> {
        use rdkafka::consumer::Consumer as _;
        let mut out = Vec::new();
        for topic in topics {
            for p in 0..self.partition_count(topic)? {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                    .map_err(KafkaError::client(format!(
                        "reading the end of {topic}[{p}]"
                    )))?;
                if high > low {
                    out.push((topic.clone(), p, low, high));
                }
            }
        }
        Ok(out)
    }

    /// The keys the table topics hold alive (their last record is neither a delete nor a
    /// tombstone), with their partitions: what an earlier run published. Blocking; reads
    /// every partition from its start to its end.
    pub fn load_alive_keys(
        &self,
        topics: &[String],
    ) -> Result<HashMap<String, HashMap<Vec<u8>, i32>>, KafkaError> {
        use rdkafka::consumer::Consumer as _;
        use rdkafka::message::Message as _;
        /// Only the operation: the row images are skipped.
        #[derive(serde::Deserialize)]
        struct Op {
            op: Option<String>,
        }
        let consumer: rdkafka::consumer::BaseConsumer = reader_config(&self.cfg)
            .set("group.id", "sluice-key-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(KafkaError::client("creating a reader of the topics' keys"))?;
        let mut alive: HashMap<String, HashMap<Vec<u8>, i32>> = HashMap::new();
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        for (topic, p, low, high) in self.partitions_with_records(&consumer, topics)? {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))
                .map_err(KafkaError::client("preparing the key reads"))?;
            ends.insert((topic, p), high);
        }
        if ends.is_empty() {
            return Ok(alive);
        }
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("reading the topics' keys"))?;
        let mut idle_since = std::time::Instant::now();
        while !ends.is_empty() {
            let m = match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => m,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {
                    if idle_since.elapsed() > Duration::from_secs(60) {
                        return Err(KafkaError::Setup(
                            "reading the topics' keys: no record for 60 s before their ends".into(),
                        ));
                    }
                    continue;
                }
                Some(Err(e)) => {
                    return Err(KafkaError::client("reading the topics' keys")(e));
                }
            };
            idle_since = std::time::Instant::now();
            let tp = (m.topic().to_owned(), m.partition());
            if ends.get(&tp).is_some_and(|end| m.offset() + 1 >= *end) {
                ends.remove(&tp);
            }
            let Some(key) = m.key() else { continue };
            if key == b"{}" {
                continue; // a truncate marker
            }
            let live = m.payload().is_some_and(|v| {
                serde_json::from_slice::<Op>(v).is_ok_and(|o| o.op.as_deref() != Some("d"))
            });
            let keys = alive.entry(tp.0).or_default();
            if live {
                keys.insert(key.to_vec(), tp.1);
            } else {
                keys.remove(key);
            }
        }
        Ok(alive)
    }

    /// Publishes the delete of one key (envelope, then its tombstone) in `partition`.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_key_delete(
        &self,
        table: &sluice_core::event::TableSchema,
        key: &[u8],
        partition: i32,
        source: &sluice_core::event::SourceInfo,
        now_ms: i64,
        value: &mut Vec<u8>,
        acks: &Arc<Acks>,
    ) -> Result<(), KafkaError> {
        value.clear();
        sluice_core::envelope::write_key_delete(table, key, source, now_ms, value);
        let topic = &*table.topic;
        self.send(topic, key, Some(value), Some(partition), acks)
            .await?;
        if self.tombstones {
            self.send_tombstone(topic, key, partition, value, acks)
                .await?;
        }
        Ok(())
    }

    /// Hands one event (and its tombstone, for deletes) to the producer; `acks` counts their
    /// confirmations. `key` and `value` are scratch buffers.
    pub async fn publish(
        &self,
        event: &ChangeEvent,
        now_ms: i64,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
        acks: &Arc<Acks>,
    ) -> Result<(), KafkaError> {
        key.clear();
        value.clear();
        let topic = &*event.table.topic;
        let position = &event.source.position;
        if write_key(event, key) {
            // The partition the Java client's partitioner picks, set here so that the check
            // against what the partition holds already is made for the right one.
            let partition = java_partition(key, self.partition_count(topic)?);
            if self.already_published(topic, partition, position) {
                return Ok(());
            }
            write_envelope(event, now_ms, value);
            match self
                .send(topic, key, Some(value), Some(partition), acks)
                .await
            {
                Err(e) if e.is_too_large() => {
                    // One row over kafka.max_message_bytes must not stop every table: a delete
                    // needs only its key; any other change travels as a stand-in that the
                    // sinks make a dead letter, in its place in the key's order.
                    let bytes = key.len() + value.len();
                    value.clear();
                    if event.op == Op::Delete {
                        sluice_core::envelope::write_key_delete(
                            &event.table,
                            key,
                            &event.source,
                            now_ms,
                            value,
                        );
                    } else {
                        sluice_core::envelope::write_too_large(
                            event,
                            key,
                            bytes,
                            self.cfg.max_message_bytes,
                            now_ms,
                            value,
                        );
                    }
                    tracing::warn!(
                        topic,
                        op = event.op.code(),
                        bytes,
                        max_message_bytes = self.cfg.max_message_bytes,
                        "a change event is larger than kafka.max_message_bytes allows: published without its row values (a delete keeps its key); sinks record it as a dead letter"
                    );
                    self.send(topic, key, Some(value), Some(partition), acks)
                        .await?;
                }
                r => r?,
            }
            if event.op == Op::Delete && self.tombstones {
                // Compaction keeps only a key's last record, the tombstone: it carries the
                // delete's envelope in a header so that a sink reading a compacted topic
                // still learns the delete, with its source position and row.
                self.send_tombstone(topic, key, partition, value, acks)
                    .await?;
            }
        } else {
            // A truncate concerns every key: it goes to every partition, so that each one sees
            // it in order with the changes around it.
            key.extend_from_slice(b"{}");
            write_envelope(event, now_ms, value);
            for partition in 0..self.partition_count(topic)? {
                if self.already_published(topic, partition, position) {
                    continue;
                }
                self.send(topic, key, Some(value), Some(partition), acks)
                    .await?;
            }
        }
        Ok(())
    }

    /// Hands a tombstone of `key` (to its delete's partition) to the producer, its delete
    /// envelope in the [`TOMBSTONE_DELETE_HEADER`] header.
    async fn send_tombstone(
        &self,
        topic: &str,
        key: &[u8],
        partition: i32,
        delete: &[u8],
        acks: &Arc<Acks>,
    ) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: TOMBSTONE_DELETE_HEADER,
            value: Some(delete),
        });
        acks.remaining.fetch_add(1, Ordering::AcqRel);
        let record = BaseRecord::<[u8], [u8], Arc<Acks>>::with_opaque_to(topic, acks.clone())
            .key(key)
            .partition(partition)
            .headers(headers);
        self.enqueue(topic, record, acks).await
    }

    /// Hands one message to the producer, counted in `acks`.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        partition: Option<i32>,
        acks: &Arc<Acks>,
    ) -> Result<(), KafkaError> {
        acks.remaining.fetch_add(1, Ordering::AcqRel);
        let mut record =
            BaseRecord::<[u8], [u8], Arc<Acks>>::with_opaque_to(topic, acks.clone()).key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.enqueue(topic, record, acks).await
    }

    /// Queues a record already counted in `acks`, waiting while librdkafka's queue is full.
    async fn enqueue<'a>(
        &self,
        topic: &str,
        mut record: BaseRecord<'a, [u8], [u8], Arc<Acks>>,
        acks: &Arc<Acks>,
    ) -> Result<(), KafkaError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    // The local queue is full: wait for librdkafka to drain some of it.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    // The record (and its reference to `acks`) is dropped unsent.
                    acks.remaining.fetch_sub(1, Ordering::AcqRel);
                    let too_large =
                        e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge);
                    let context = if too_large {
                        format!(
                            "publishing to topic {topic}: a change event is larger than kafka.max_message_bytes = {} allows: raise it (and max.message.bytes of a topic created before)",
                            self.cfg.max_message_bytes
                        )
                    } else {
                        format!("publishing to topic {topic}")
                    };
                    return Err(KafkaError::Client { context, source: e });
                }
            }
        }
    }

    /// Learns the partition counts of `topics` up front (blocking), so that publishing a
    /// truncate never waits on a metadata request.
    pub fn load_partition_counts(&self, topics: &[String]) -> Result<(), KafkaError> {
        for topic in topics {
            self.partition_count(topic)?;
        }
        Ok(())
    }

    fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
        if let Some(n) = self
            .partitions
            .lock()
            .ok()
            .and_then(|m| m.get(topic).copied())
        {
            return Ok(n);
        }
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(KafkaError::client(format!(
                "reading metadata of topic {topic}"
            )))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| KafkaError::Setup(format!("topic {topic} has no partitions")))?;
        if let Ok(mut m) = self.partitions.lock() {
            m.insert(topic.to_owned(), n);
        }
        Ok(n)
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(KafkaError::client("flushing the kafka producer"))
    }
}

#[cfg(test)]
mod tests {
    use super::java_partition;

    #[test]
    fn partitions_agree_with_the_java_client() {
        // murmur2 values printed by org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients
        // 4.1), modulo 3 after toPositive.
        for (key, java) in [
            ("{\"id\":1}", 0),
            ("{\"id\":1455046}", 0),
            ("abc", 0),
            ("21", 0),
            ("{\"order_id\":7,\"line\":3}", 0),
            ("a-little-bit-longer-string", 2),
        ] {
            assert_eq!(java_partition(key.as_bytes(), 3), java, "{key}");
        }
    }
}
