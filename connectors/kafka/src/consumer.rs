//! The sink consumer: a consumer-group member whose read positions come from the target.
//!
//! Kafka's committed group offsets are not used to resume. The target database keeps, in the
//! same transaction as the rows, the next offset of every partition it applied; when the group
//! assigns partitions to this member, the rebalance callback asks the target for those offsets
//! ([`OffsetSource`]) and assigns the partitions at exactly them. So a crash at any moment
//! resumes where the last committed target transaction ended.
//!
//! The consumer runs on a thread of its own (librdkafka's poll loop and rebalance callbacks are
//! synchronous) and hands every record and (re)assignment, in order, to a [`ConsumerSink`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use sluice_core::Backoff;

use crate::config::KafkaConfig;
use crate::error::KafkaError;
use crate::publisher::{reader_config, reader_config_over};

/// A topic and partition.
pub type TopicPartition = (Arc<str>, i32);

/// What the target holds for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    /// The next offset to read.
    pub next_offset: i64,
    /// The source position of the last event applied (JSON text), if any.
    pub position: Option<String>,
}

/// One Kafka record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Arc<[u8]>>,
    pub value: Option<Arc<[u8]>>,
    /// For a tombstone (no value): the envelope of the delete it follows, from its
    /// [`TOMBSTONE_DELETE_HEADER`](crate::TOMBSTONE_DELETE_HEADER) header, if it has one.
    pub tombstone_of: Option<Arc<[u8]>>,
}

/// What the consumer hands on, in the order it happened.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// These partitions are now ours, read from the stored offset (or the beginning). The
    /// number identifies this assignment in [`Control`] requests.
    Assigned(Vec<(TopicPartition, Option<StoredOffset>)>, u64),
    /// These partitions are no longer ours: forget anything not yet applied.
    Revoked(Vec<TopicPartition>),
    Record(Record),
}

/// Reads the stored offsets of partitions from the target (blocking; called on the consumer
/// thread during a rebalance).
pub trait OffsetSource: Send + Sync + 'static {
    fn load(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, StoredOffset>, String>;
}

/// Receives the consumer's events (blocking is allowed: it is how back-pressure works).
pub trait ConsumerSink: Send + Sync + 'static {
    fn deliver(&self, event: ConsumerEvent);
}

/// Requests from the apply side to the consumer thread.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop fetching a partition (its events are parked, e.g. at a truncate barrier). Ignored
    /// unless the assignment number is still the current one.
    Pause(TopicPartition, u64),
    Resume(TopicPartition, u64),
    /// Read the partition again from its stored offset (moved back by a replay): the consumer
    /// seeks there and hands the partition over again as a fresh [`ConsumerEvent::Assigned`],
    /// so that the worker drops what it buffered.
    Restart(TopicPartition, u64),
}

struct GroupContext {
    offsets: Arc<dyn OffsetSource>,
    sink: Arc<dyn ConsumerSink>,
    stop: Arc<AtomicBool>,
    group: String,
    /// Partitions held after the last rebalance (`usize::MAX` before the first one).
    assigned: std::sync::atomic::AtomicUsize,
    /// Counts assignments, so that a pause meant for an earlier one is ignored.
    generation: std::sync::atomic::AtomicU64,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "rdkafka", facility = fac, "{message}")
            }
            L::Warning => tracing::warn!(target: "rdkafka", facility = fac, "{message}"),
            L::Notice | L::Info => tracing::info!(target: "rdkafka", facility = fac, "{message}"),
            L::Debug => tracing::debug!(target: "rdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(target: "rdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let Some(stored) = self.load_offsets(&partitions) else {
                    // Stopping: take nothing.
                    return;
                };
                let mut assignment = TopicPartitionList::new();
                let mut assigned = Vec::with_capacity(partitions.len());
                for tp in partitions {
                    let s = stored.get(&tp).cloned();
                    let offset = match &s {
                        Some(s) => Offset::Offset(s.next_offset),
                        None => Offset::Beginning,
                    };
                    if let Err(e) = assignment.add_partition_offset(&tp.0, tp.1, offset) {
                        tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "cannot set a partition's start offset");
                    }
                    assigned.push((tp, s));
                }
                // Workers learn their partitions before any record of them arrives.
                tracing::info!(group = %self.group, partitions = %describe(&assigned), "partitions assigned");
                self.assigned.store(assigned.len(), Ordering::Relaxed);
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                self.sink
                    .deliver(ConsumerEvent::Assigned(assigned, generation));
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                // A pause (a partition parked at a truncate) can outlive a rebalance inside
                // librdkafka; the worker starts over from the stored offset, so must the fetch.
                if let Err(e) = consumer.resume(&assignment) {
                    tracing::debug!(error = %e, "resuming assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(group = %self.group, count = partitions.len(), "partitions revoked");
                self.assigned.store(0, Ordering::Relaxed);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassigning partitions failed");
                }
                self.sink.deliver(ConsumerEvent::Revoked(partitions));
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                let _ = consumer.unassign();
                self.sink.deliver(ConsumerEvent::Revoked(partitions));
            }
        }
    }

    fn commit_callback(&self, _result: KafkaResult<()>, _offsets: &TopicPartitionList) {}
}

fn describe(assigned: &[(TopicPartition, Option<StoredOffset>)]) -> String {
    assigned
        .iter()
        .map(|((t, p), s)| match s {
            Some(s) => format!("{t}[{p}]@{}", s.next_offset),
            None => format!("{t}[{p}]@beginning"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl GroupContext {
    /// Asks the target for the stored offsets, retrying with backoff while it is unreachable.
    /// `None` when asked to stop meanwhile.
    fn load_offsets(
        &self,
        partitions: &[TopicPartition],
    ) -> Option<HashMap<TopicPartition, StoredOffset>> {
        let mut backoff = Backoff::default();
        loop {
            match self.offsets.load(partitions) {
                Ok(stored) => return Some(stored),
                Err(e) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read stored offsets from the target; retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

/// Settings of one sink's consumer.
pub struct ConsumerSettings {
    pub group: String,
    pub topics: Vec<String>,
}

/// A running consumer thread.
pub struct SinkConsumer {
    thread: Option<std::thread::JoinHandle<Result<(), KafkaError>>>,
    stop: Arc<AtomicBool>,
    control: std::sync::mpsc::Sender<Control>,
}

impl SinkConsumer {
    /// Joins the group and starts delivering events to `sink`.
    pub fn start(
        cfg: &KafkaConfig,
        settings: ConsumerSettings,
        offsets: Arc<dyn OffsetSource>,
        sink: Arc<dyn ConsumerSink>,
    ) -> Result<SinkConsumer, KafkaError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = ClientConfig::new();
        c.set("group.id", &settings.group)
            // Offsets live in the target, written with the rows.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A stored offset Kafka no longer has (deleted by retention) means changes are gone:
            // stop that partition with an error rather than jump anywhere silently.
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "50")
            // A crashed member holds its partitions until its session times out: keep that
            // short (Kafka Connect uses 10 s), so a restarted apply resumes quickly.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1500")
            // Bound what is fetched ahead (memory): 8 MB queued, 4 MB per fetch response.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.max.bytes", "4194304");
        // `reader_config` shortens librdkafka's pause after a full queue: with its default
        // (1 s), apply read in one-second bursts and the pipeline ran at 42k rows/s with its
        // workers idle 78% of the time.
        let mut c = reader_config_over(cfg, c);
        c.set("client.id", format!("sluice-{}", settings.group));
        let context = GroupContext {
            offsets,
            sink: sink.clone(),
            stop: stop.clone(),
            group: settings.group.clone(),
            assigned: std::sync::atomic::AtomicUsize::new(usize::MAX),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        let consumer: BaseConsumer<GroupContext> = c.create_with_context(context).map_err(
            KafkaError::client("creating the kafka consumer: check kafka.properties"),
        )?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(KafkaError::client("subscribing to the sink's topics"))?;
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("consumer {}", settings.group))
                .spawn(move || poll_loop(consumer, &settings.topics, sink, control_rx, stop))
                .map_err(|e| KafkaError::Setup(format!("cannot start the consumer thread: {e}")))?
        };
        Ok(SinkConsumer {
            thread: Some(thread),
            stop,
            control: control_tx,
        })
    }

    /// A handle to send [`Control`] requests from any thread.
    pub fn control(&self) -> std::sync::mpsc::Sender<Control> {
        self.control.clone()
    }

    /// Whether the consumer thread ended (it only ends on stop or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Leaves the group and ends the thread.
    pub fn stop(mut self) -> Result<(), KafkaError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(KafkaError::Setup("the consumer thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for SinkConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long a member may hold no partition before it says so at WARN (then again at doubling
/// intervals). A member with nothing to do is normal when more apply processes run than the
/// topics have partitions; anything else is worth an operator's look. Apache Kafka's group
/// coordinator hands a dead member's partitions on when its session times out, so the member
/// does not rejoin by itself.
const EMPTY_ASSIGNMENT_WARN: Duration = Duration::from_secs(60);

fn poll_loop(
    consumer: BaseConsumer<GroupContext>,
    topics: &[String],
    sink: Arc<dyn ConsumerSink>,
    control: std::sync::mpsc::Receiver<Control>,
    stop: Arc<AtomicBool>,
) -> Result<(), KafkaError> {
    let mut warned_at: Option<std::time::Instant> = None;
    // Partitions (with the stored offset) whose records retention deleted, already reported.
    let mut lost: std::collections::HashSet<(TopicPartition, i64)> = Default::default();
    let mut empty_since: Option<std::time::Instant> = None;
    let mut warn_after = EMPTY_ASSIGNMENT_WARN;
    while !stop.load(Ordering::Relaxed) {
        // `usize::MAX` (no rebalance yet) counts as empty too: a member that never got an
        // assignment is as idle as one that lost it.
        match consumer.context().assigned.load(Ordering::Relaxed) {
            0 | usize::MAX => {
                let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= warn_after {
                    tracing::warn!(
                        group = %consumer.context().group,
                        topics = topics.len(),
                        idle_s = since.elapsed().as_secs(),
                        "this apply process has held no partition for a while: normal if more apply processes run than the topics have partitions; otherwise check that the brokers are reachable and the group's state (kafka-consumer-groups --describe --group)"
                    );
                    warn_after = (warn_after * 2).min(Duration::from_secs(3600));
                }
            }
            _ => {
                empty_since = None;
                warn_after = EMPTY_ASSIGNMENT_WARN;
            }
        }
        while let Ok(request) = control.try_recv() {
            let (tp, pause, generation) = match request {
                Control::Pause(tp, g) => (tp, true, g),
                Control::Resume(tp, g) => (tp, false, g),
                Control::Restart(tp, g) => {
                    if g == consumer.context().generation.load(Ordering::SeqCst) {
                        restart(&consumer, &tp, g);
                    }
                    continue;
                }
            };
            if generation != consumer.context().generation.load(Ordering::SeqCst) {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = result {
                // Not assigned any more: nothing to pause or resume.
                tracing::debug!(topic = %tp.0, partition = tp.1, error = %e, "pause/resume ignored");
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let record = Record {
                    topic: Arc::from(m.topic()),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(Arc::from),
                    value: m.payload().map(Arc::from),
                    tombstone_of: tombstone_delete(&m),
                };
                sink.deliver(ConsumerEvent::Record(record));
            }
            // With `auto.offset.reset = error`, librdkafka reports a fetch below the log's start
            // as "no offset to reset to", without the partition: find it.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange
                            | rdkafka::types::RDKafkaErrorCode::AutoOffsetReset
                    )
                ) =>
            {
                report_lost_offsets(&consumer, &mut lost, &e);
            }
            // librdkafka reconnects by itself; say so once in a while, not on every poll.
            Some(Err(e)) if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) => {
                tracing::warn!(error = %e, "kafka consumer error (retrying)");
                warned_at = Some(std::time::Instant::now());
            }
            Some(Err(_)) => {}
        }
    }
    // Leave the group so that the partitions move to the other members at once.
    consumer.unsubscribe();
    Ok(())
}

/// Names each assigned partition whose stored offset is below the earliest offset Kafka still
/// has (retention deleted the records in between), once per stored offset. librdkafka stops
/// fetching such a partition: it is not read past the gap.
fn report_lost_offsets(
    consumer: &BaseConsumer<GroupContext>,
    lost: &mut std::collections::HashSet<(TopicPartition, i64)>,
    error: &rdkafka::error::KafkaError,
) {
    let cx = consumer.context();
    let assigned: Vec<TopicPartition> = consumer
        .assignment()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .collect()
        })
        .unwrap_or_default();
    let Some(stored) = cx.load_offsets(&assigned) else {
        return;
    };
    let mut named = false;
    for tp in &assigned {
        let Some(next) = stored.get(tp).map(|s| s.next_offset) else {
            continue;
        };
        if lost.contains(&(tp.clone(), next)) {
            named = true;
            continue;
        }
        let Ok((earliest, _)) = consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(5))
        else {
            continue;
        };
        if next < earliest {
            named = true;
            lost.insert((tp.clone(), next));
            tracing::error!(
                group = %cx.group,
                topic = %tp.0,
                partition = tp.1,
                stored_offset = next,
                earliest_offset = earliest,
                records_lost = earliest - next,
                "a stored offset is no longer in Kafka (retention deleted the records after it): those changes are lost to this sink, and this partition stops here rather than skip them. Re-snapshot the source (sluice run --resnapshot) or accept the loss and move the sink to what Kafka still has (sluice replay --from beginning), then restart; raise the topic's retention.ms, or keep it compacted, if sinks may stop this long"
            );
        }
    }
    if !named {
        tracing::error!(group = %cx.group, error = %error, "a stored offset is no longer in Kafka (retention deleted it), in a partition not found again: the changes in between are lost to this sink and its partition stops here. Re-snapshot the source (sluice run --resnapshot) or move the sink's offsets on, then restart");
    }
}

/// A tombstone's delete envelope (see [`Record::tombstone_of`]).
fn tombstone_delete(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Arc<[u8]>> {
    use rdkafka::message::Headers as _;
    if m.payload().is_some() {
        return None;
    }
    m.headers()?
        .iter()
        .find(|h| h.key == crate::TOMBSTONE_DELETE_HEADER)
        .and_then(|h| h.value)
        .map(Arc::from)
}

/// Seeks `tp` to its stored offset and hands it to the sink again.
fn restart(consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition, generation: u64) {
    let cx = consumer.context();
    let Some(stored) = cx.load_offsets(std::slice::from_ref(tp)) else {
        return;
    };
    let s = stored.get(tp).cloned();
    let offset = s
        .as_ref()
        .map(|s| Offset::Offset(s.next_offset))
        .unwrap_or(Offset::Beginning);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let _ = consumer.resume(&tpl);
    if let Err(e) = consumer.seek(&tp.0, tp.1, offset, Duration::from_secs(10)) {
        tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "seeking a partition to its moved offset failed; it is read again at the next rebalance");
        return;
    }
    tracing::info!(topic = %tp.0, partition = tp.1, offset = ?offset, "partition read again from its stored offset (moved by a replay)");
    cx.sink
        .deliver(ConsumerEvent::Assigned(vec![(tp.clone(), s)], generation));
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    Beginning,
    /// Unix milliseconds: each partition's first record at or after it.
    Time(i64),
    /// One partition's offset.
    Offset(String, i32, i64),
}

/// For each partition of `topics` (name, partition count) that `from` concerns: the offset a
/// replay starts at and the partition's end (blocking).
pub fn replay_offsets(
    cfg: &KafkaConfig,
    topics: &[(String, i32)],
    from: &ReplayFrom,
) -> Result<Vec<(String, i32, i64, i64)>, KafkaError> {
    let consumer: BaseConsumer = reader_config(cfg).create().map_err(KafkaError::client(
        "creating a kafka client: check kafka.properties",
    ))?;
    let timeout = Duration::from_secs(10);
    let mut out = Vec::new();
    let mut times = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            if let ReplayFrom::Offset(t, tp, _) = from {
                if t != topic || *tp != p {
                    continue;
                }
            }
            let (low, high) =
                consumer
                    .fetch_watermarks(topic, p, timeout)
                    .map_err(KafkaError::client(format!(
                        "reading the offsets of {topic}[{p}]"
                    )))?;
            match from {
                ReplayFrom::Beginning => out.push((topic.clone(), p, low, high)),
                ReplayFrom::Offset(_, _, o) => {
                    out.push((topic.clone(), p, (*o).clamp(low, high), high))
                }
                ReplayFrom::Time(ms) => {
                    times
                        .add_partition_offset(topic, p, Offset::Offset(*ms))
                        .map_err(KafkaError::client("preparing an offsets-for-times request"))?;
                    out.push((topic.clone(), p, high, high));
                }
            }
        }
    }
    if let ReplayFrom::Time(_) = from {
        let found = consumer
            .offsets_for_times(times, timeout)
            .map_err(KafkaError::client("looking up offsets for a time"))?;
        for e in found.elements() {
            if let Offset::Offset(o) = e.offset() {
                if let Some(row) = out
                    .iter_mut()
                    .find(|r| r.0 == e.topic() && r.1 == e.partition())
                {
                    row.2 = o.min(row.3);
                }
            }
        }
    }
    if let ReplayFrom::Offset(t, p, _) = from {
        if out.is_empty() {
            return Err(KafkaError::Setup(format!(
                "{t}[{p}] is not a partition of this sink's topics"
            )));
        }
    }
    Ok(out)
}

/// The partition count of each topic (blocking). A topic that does not exist is an error that
/// says which capture creates it.
/// Reads partitions' high watermarks (the offset the next record will get), for lag.
pub struct Watermarks(BaseConsumer);

impl Watermarks {
    pub fn new(cfg: &KafkaConfig) -> Result<Watermarks, KafkaError> {
        reader_config(cfg)
            .create()
            .map(Watermarks)
            .map_err(KafkaError::client(
                "creating a kafka metadata client: check kafka.properties",
            ))
    }

    /// The high watermark of `partition` of `topic` (blocking, up to 5 s).
    pub fn high(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        self.0
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .map(|(_, high)| high)
            .map_err(KafkaError::client(format!(
                "reading the end of {topic} partition {partition}"
            )))
    }
}

pub fn partition_counts(
    cfg: &KafkaConfig,
    topics: &[String],
) -> Result<HashMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer = reader_config(cfg).create().map_err(KafkaError::client(
        "creating a kafka metadata client: check kafka.properties",
    ))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(KafkaError::client(format!(
            "reading topic metadata from {}: check kafka.brokers and that the brokers are running",
            cfg.brokers
        )))?;
    let mut out = HashMap::new();
    for topic in topics {
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if n == 0 {
            return Err(KafkaError::Setup(format!(
                "topic {topic} does not exist yet: it is created when capture of its table starts (run capture first, or create it)"
            )));
        }
        out.insert(topic.clone(), n);
    }
    Ok(out)
}
