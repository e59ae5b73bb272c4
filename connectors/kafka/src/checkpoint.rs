//! Capture checkpoints, kept in Kafka next to the data they describe.
//!
//! Each source has a single-partition, compacted topic `<prefix>.__sluice_capture.<source>`.
//! Every message is a JSON [`SourceCheckpoint`]; the newest (the last offset) is the one that
//! counts, so loading is one read at `high watermark - 1`. A checkpoint is written only after
//! Kafka confirmed every event it covers, and the source is acknowledged only after the
//! checkpoint itself is confirmed.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::SourceCheckpoint;

use crate::config::KafkaConfig;
use crate::error::KafkaError;
use crate::publisher::{ensure_topics, reader_config, Acks, KafkaPublisher, TopicSpec};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct CheckpointStore {
    cfg: KafkaConfig,
    topic: String,
    source: String,
}

impl CheckpointStore {
    pub fn topic_for(cfg: &KafkaConfig, source: &str) -> String {
        format!("{}.__sluice_capture.{source}", cfg.topic_prefix)
    }

    /// Creates the checkpoint topic of `source` if needed.
    pub async fn open(cfg: &KafkaConfig, source: &str) -> Result<Self, KafkaError> {
        let topic = Self::topic_for(cfg, source);
        let spec = TopicSpec {
            name: topic.clone(),
            partitions: 1,
            configs: vec![("cleanup.policy".into(), "compact".into())],
        };
        ensure_topics(cfg, &[spec]).await?;
        Ok(CheckpointStore {
            cfg: cfg.clone(),
            topic,
            source: source.to_owned(),
        })
    }

    /// The newest checkpoint, if any was written.
    pub async fn load(&self) -> Result<Option<SourceCheckpoint>, KafkaError> {
        let cfg = self.cfg.clone();
        let topic = self.topic.clone();
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || load_blocking(&cfg, &topic, &source))
            .await
            .map_err(|e| KafkaError::Setup(format!("checkpoint reader lost: {e}")))?
    }

    /// Writes `checkpoint` and waits until Kafka confirmed it.
    pub async fn store(
        &self,
        publisher: &KafkaPublisher,
        checkpoint: &SourceCheckpoint,
    ) -> Result<(), KafkaError> {
        let payload = serde_json::to_vec(checkpoint)
            .map_err(|e| KafkaError::Setup(format!("cannot encode checkpoint: {e}")))?;
        let acks = Acks::new();
        publisher
            .send(
                &self.topic,
                self.source.as_bytes(),
                Some(&payload),
                Some(0),
                &acks,
            )
            .await?;
        acks.wait().await
    }
}

fn load_blocking(
    cfg: &KafkaConfig,
    topic: &str,
    source: &str,
) -> Result<Option<SourceCheckpoint>, KafkaError> {
    let consumer: BaseConsumer = reader_config(cfg)
        .set("group.id", format!("sluice-checkpoint-reader-{source}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(KafkaError::client("creating the checkpoint reader"))?;
    read_newest(&consumer, topic, source)
}

/// The newest message of a checkpoint topic, read with `consumer` (blocking).
fn read_newest(
    consumer: &BaseConsumer,
    topic: &str,
    source: &str,
) -> Result<Option<SourceCheckpoint>, KafkaError> {
    let context = || format!("reading the checkpoint of source {source} from topic {topic}");
    let (_low, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .map_err(KafkaError::client(context()))?;
    if high <= 0 {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .map_err(KafkaError::client(context()))?;
    consumer
        .assign(&tpl)
        .map_err(KafkaError::client(context()))?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let cp: SourceCheckpoint = serde_json::from_slice(payload).map_err(|e| {
                    KafkaError::Setup(format!(
                        "the newest checkpoint in {topic} (offset {}) is not valid: {e}",
                        msg.offset()
                    ))
                })?;
                return Ok(Some(cp));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(KafkaError::client(context())(e)),
            None => {}
        }
    }
    Err(KafkaError::Setup(format!(
        "{}: no answer within {}s",
        context(),
        TIMEOUT.as_secs()
    )))
}

/// Reads, for the apply step, how far capture has made everything durable: the newest
/// checkpoint of some sources and, read after them, the high watermarks of some partitions.
/// Every event a checkpoint covers is below those watermarks (a checkpoint is written only
/// after Kafka confirmed every event it covers), so a reader that has read each partition up
/// to its watermark holds every such event. Blocking; one client, reused.
pub struct CheckpointWatch {
    cfg: KafkaConfig,
    consumer: BaseConsumer,
}

/// What one [`CheckpointWatch::read`] saw.
#[derive(Debug, Clone, Default)]
pub struct DurableMarks {
    /// The newest checkpoint of each source that has one.
    pub checkpoints: std::collections::HashMap<String, SourceCheckpoint>,
    /// Each partition's high watermark, read after the checkpoints.
    pub ends: std::collections::HashMap<(std::sync::Arc<str>, i32), i64>,
}

impl CheckpointWatch {
    pub fn new(cfg: &KafkaConfig) -> Result<CheckpointWatch, KafkaError> {
        let consumer: BaseConsumer = reader_config(cfg)
            .set("group.id", "sluice-checkpoint-watch")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(KafkaError::client("creating the checkpoint reader"))?;
        Ok(CheckpointWatch {
            cfg: cfg.clone(),
            consumer,
        })
    }

    pub fn read(
        &self,
        sources: &[String],
        partitions: &[(std::sync::Arc<str>, i32)],
    ) -> Result<DurableMarks, KafkaError> {
        let mut marks = DurableMarks::default();
        for source in sources {
            let topic = CheckpointStore::topic_for(&self.cfg, source);
            if let Some(cp) = read_newest(&self.consumer, &topic, source)? {
                marks.checkpoints.insert(source.clone(), cp);
            }
        }
        // Every partition's end in one request per broker (a timestamp query for "latest"):
        // asked one partition at a time, a fresh client took about half a second each, which
        // held ordered apply for seconds at every start.
        let mut query = TopicPartitionList::new();
        for (topic, p) in partitions {
            query
                .add_partition_offset(topic, *p, Offset::End)
                .map_err(KafkaError::client(format!(
                    "reading the end of {topic}[{p}]"
                )))?;
        }
        let ends = self
            .consumer
            .offsets_for_times(query, TIMEOUT)
            .map_err(KafkaError::client("reading the ends of the ordered topics"))?;
        for (topic, p) in partitions {
            let end = ends
                .find_partition(topic, *p)
                .and_then(|e| match (e.error(), e.offset()) {
                    (Ok(()), Offset::Offset(n)) => Some(n),
                    _ => None,
                })
                .ok_or_else(|| {
                    KafkaError::Setup(format!("the broker gave no end offset for {topic}[{p}]"))
                })?;
            marks.ends.insert((topic.clone(), *p), end);
        }
        Ok(marks)
    }
}
