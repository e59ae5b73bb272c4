//! Capture: one source → Kafka, with acknowledgement only after Kafka confirmed.
//!
//! ```text
//!  source session ──batches──► publish task ──deliveries──► ack task ──► checkpoint topic
//!  (own thread)                (serialise,                  (await in       │
//!        ▲                      hand to librdkafka)          order)         │
//!        └──────────────── durable checkpoint (watch) ◄─────────────────────┘
//! ```
//!
//! Batches flow in source order. The ack task awaits each batch's delivery futures in that same
//! order, so when it reaches a batch's checkpoint every event before it is in Kafka. It then
//! writes the checkpoint (at most every `checkpoint_interval_ms`), waits for Kafka to confirm
//! that too, and only then publishes it on the `durable` watch, from which the source reports
//! the position to the database. A crash anywhere loses at most work that is redone after the
//! restart: events after the last durable checkpoint are published again (duplicates, never
//! gaps), and consumers drop them by position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_core::source::ChangeSource;
use sluice_core::{
    Backoff, Batch, Classified, ErrorClass, RunHandles, SourceCheckpoint, TableSchema,
};
use sluice_kafka::{ensure_topics, Acks, CheckpointStore, KafkaConfig, KafkaPublisher, TopicSpec};
use sluice_mysql::{MySqlSource, MySqlSourceSettings};
use sluice_postgres::{PostgresSource, SourceSettings};
use tokio::sync::{mpsc, watch};

use crate::telemetry::error_chain;

/// Which database a capture pipeline reads.
#[derive(Clone)]
pub enum SourceKind {
    Postgres(SourceSettings),
    MySql(MySqlSourceSettings),
}

/// Evaluates `$body` with the type `$s` set to the [`ChangeSource`] implementation of
/// `$kind` (a [`SourceKind`]) and `$settings` bound to its settings: the one place that maps
/// a source's config to its implementation.
macro_rules! on_source {
    ($kind:expr, $s:ident, $settings:ident => $body:expr) => {
        match $kind {
            SourceKind::Postgres($settings) => {
                type $s = PostgresSource;
                $body
            }
            SourceKind::MySql($settings) => {
                type $s = MySqlSource;
                $body
            }
        }
    };
}

/// What a snapshot taken over topics an earlier run already wrote must also publish: the
/// delete of every key the topics hold alive that the new snapshot does not have.
///
/// A capture stopped before its first checkpoint (or run with `--resnapshot`) starts over
/// with a new snapshot, but the earlier run's records stay in the topics. A row the source
/// deleted in between is in neither the new snapshot nor the stream after it, so without
/// this its earlier record would be every sink's last word on it.
struct Reconcile {
    /// Per topic, the keys alive in it and their partitions; struck off as the new run
    /// publishes a record of them.
    keys: HashMap<String, HashMap<Vec<u8>, i32>>,
    tables: HashMap<String, Arc<TableSchema>>,
}

/// Where reconciling deletes go: at the snapshot's position, after every snapshot row
/// (their sequence numbers count rows read), before any change streamed after it.
const RECONCILE_SEQ: u64 = 1 << 62;

impl Reconcile {
    /// Strikes off the key a record was just published with.
    fn settled(&mut self, topic: &str, key: &[u8]) {
        if let Some(keys) = self.keys.get_mut(topic) {
            keys.remove(key);
        }
    }

    /// Publishes, at the position of `cp` (the snapshot's checkpoint), a delete of every key
    /// left; returns how many. They share `acks`, so the checkpoint waits for them.
    async fn publish_deletes(
        self,
        cp: &SourceCheckpoint,
        publisher: &KafkaPublisher,
        now_ms: i64,
        value: &mut Vec<u8>,
        acks: &Arc<Acks>,
    ) -> Result<usize, sluice_kafka::KafkaError> {
        let mut n = 0u64;
        for (topic, keys) in self.keys {
            let Some(table) = self.tables.get(&topic) else {
                continue;
            };
            if !keys.is_empty() {
                tracing::info!(topic = %topic, rows = keys.len(), "deleting rows an earlier snapshot published that the source no longer has");
            }
            for (k, partition) in keys {
                let Some(position) = cp.position_with_seq(RECONCILE_SEQ + n) else {
                    continue;
                };
                n += 1;
                let source = sluice_core::SourceInfo {
                    connector: match position {
                        sluice_core::Position::Postgres { .. } => "postgres",
                        sluice_core::Position::MySql { .. } => "mysql",
                    },
                    position,
                    tx_id: None,
                    commit_time_us: now_ms * 1000,
                    snapshot: false,
                    binlog: None,
                };
                publisher
                    .publish_key_delete(table, &k, partition, &source, now_ms, value, acks)
                    .await?;
            }
        }
        Ok(n as usize)
    }
}

/// One capture pipeline's settings.
#[derive(Clone)]
pub struct CaptureSettings {
    /// The source's name in the config (`[sources.NAME]`).
    pub name: String,
    /// Whether a start without a checkpoint takes an initial snapshot.
    pub snapshots: bool,
    pub source: SourceKind,
    pub checkpoint_interval: Duration,
    pub resnapshot: bool,
}

/// A failed source run: the error and whether retrying can help.
struct RunFailure {
    class: ErrorClass,
    error: anyhow::Error,
}

struct InFlight {
    acks: Arc<Acks>,
    events: usize,
    checkpoint: Option<SourceCheckpoint>,
    /// The source commit time (µs) of the batch's last streamed change, for lag.
    commit_us: Option<i64>,
}

/// How a capture pipeline ended.
enum Ended {
    /// Stopped, or the source ended.
    Done,
    /// A source session failed before the snapshot's checkpoint: the snapshot starts over in a
    /// new pipeline, which learns the keys the topics now hold (this pipeline's published rows
    /// included) so that the new snapshot deletes those the source lost meanwhile.
    SnapshotUnfinished,
}

/// Runs capture for one source until `stop` turns true or a definite error occurs.
pub async fn run(
    kafka: &KafkaConfig,
    settings: CaptureSettings,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let status = crate::status::source(&settings.name);
    status.set_state(crate::status::State::Starting, None);
    let result = run_until_done(kafka, &settings, &mut stop).await;
    match &result {
        Ok(()) => status.set_state(crate::status::State::Stopped, None),
        Err(e) => status.set_state(crate::status::State::Failed, Some(format!("{e:#}"))),
    }
    result
}

async fn run_until_done(
    kafka: &KafkaConfig,
    settings: &CaptureSettings,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    loop {
        let ended = on_source!(&settings.source, S, source => {
            Box::pin(run_pipeline::<S>(kafka, source.clone(), settings, stop.clone(), &mut backoff)).await?
        });
        match ended {
            Ended::Done => return Ok(()),
            Ended::SnapshotUnfinished => {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(stop) => return Ok(()),
                }
            }
        }
    }
}

/// The configs of a table topic Sluice creates: `kafka.topic_configs`, and the largest
/// message `kafka.max_message_bytes` allows unless those set it.
fn table_topic_configs(kafka: &KafkaConfig) -> Vec<(String, String)> {
    let mut configs: Vec<(String, String)> = kafka
        .topic_configs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !kafka.topic_configs.contains_key("max.message.bytes") {
        let bytes = kafka.max_message_bytes.to_string();
        configs.push(("max.message.bytes".into(), bytes));
    }
    configs
}

/// One capture pipeline: the source's sessions (retried while the snapshot is done), the
/// publisher and the checkpoint writer.
async fn run_pipeline<S: ChangeSource>(
    kafka: &KafkaConfig,
    source_settings: S::Settings,
    settings: &CaptureSettings,
    mut stop: watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> anyhow::Result<Ended> {
    let name = settings.name.clone();
    let snapshots = settings.snapshots;
    let source = S::open(source_settings)
        .await
        .with_context(|| format!("source {name}"))?;
    let topics: Vec<TopicSpec> = source
        .tables()
        .into_iter()
        .map(|t| TopicSpec {
            name: t.topic.to_string(),
            partitions: kafka.partitions,
            configs: table_topic_configs(kafka),
        })
        .collect();
    ensure_topics(kafka, &topics).await?;
    let store = CheckpointStore::open(kafka, &name).await?;
    let resume = store.load().await?;
    match &resume {
        Some(cp) => {
            tracing::info!(source = %name, position = %cp.position, snapshot_done = cp.snapshot_done, "resuming from checkpoint")
        }
        None => tracing::info!(source = %name, "no checkpoint yet: starting fresh"),
    }
    let publisher = KafkaPublisher::new(kafka)?;
    let mut reconcile: Option<Reconcile> = None;
    {
        let publisher = publisher.clone();
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        // Resuming from a checkpoint meets events published after it already: learn where
        // each partition ends so that they are not published twice. A fresh start or a new
        // snapshot may bring positions below the old ones (a new binlog, another server), and
        // skips nothing.
        let resuming = resume.is_some() && !settings.resnapshot;
        let reconciling = !resuming && snapshots;
        let alive = tokio::task::spawn_blocking(move || {
            publisher.load_partition_counts(&names)?;
            if resuming {
                publisher.load_published_positions(&names)?;
            }
            if reconciling {
                return publisher.load_alive_keys(&names);
            }
            Ok::<_, sluice_kafka::KafkaError>(HashMap::new())
        })
        .await
        .context("reading topic metadata")??;
        let held: usize = alive.values().map(HashMap::len).sum();
        if held > 0 {
            tracing::info!(source = %name, keys = held, "the topics hold rows of an earlier run without a checkpoint: the new snapshot deletes those the source no longer has");
            reconcile = Some(Reconcile {
                keys: alive,
                tables: source
                    .tables()
                    .into_iter()
                    .map(|t| (t.topic.to_string(), Arc::new(t.clone())))
                    .collect(),
            });
        }
    }
    // The checkpoint that proves the snapshot this pipeline must take (if any) is published.
    let start_checkpoint = resume.clone();
    let must_snapshot =
        snapshots && (settings.resnapshot || !resume.as_ref().is_some_and(|c| c.snapshot_done));
    // Streaming once the snapshot is durable (the checkpoint writer says so), or at once.
    crate::status::source(&name).set_state(
        if must_snapshot {
            crate::status::State::Snapshot
        } else {
            crate::status::State::Running
        },
        None,
    );
    let (durable_tx, durable_rx) = watch::channel(resume);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(4);
    let (inflight_tx, inflight_rx) = mpsc::channel::<InFlight>(8);
    let publish_task = tokio::spawn(publish_loop(
        publisher.clone(),
        batch_rx,
        inflight_tx,
        reconcile,
    ));
    let ack_task = tokio::spawn(ack_loop(
        name.clone(),
        store,
        publisher.clone(),
        inflight_rx,
        durable_tx,
        settings.checkpoint_interval,
    ));

    let mut resnapshot = settings.resnapshot;
    let outcome: anyhow::Result<Ended> = loop {
        let handles = RunHandles {
            out: batch_tx.clone(),
            durable: durable_rx.clone(),
            stop: stop.clone(),
        };
        let resume = durable_rx.borrow().clone();
        let run = source.run(resume.clone(), resnapshot, handles);
        let run = async {
            run.await.map_err(|e| RunFailure {
                class: e.class(),
                error: e.into(),
            })
        };
        tokio::pin!(run);
        let lag = measure_log_lag(&source, &name, durable_rx.clone());
        tokio::pin!(lag);
        let result = tokio::select! {
            r = &mut run => r,
            () = &mut lag => unreachable!("measuring lag never ends"),
            _ = stopped(&mut stop) => {
                // The stream flushes and ends by itself; a snapshot in progress is abandoned
                // (it starts over on the next run, as its checkpoint was never written).
                match tokio::time::timeout(Duration::from_secs(10), &mut run).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                }
            }
        };
        resnapshot = false;
        match result {
            Ok(()) => break Ok(Ended::Done),
            Err(e) if publish_task.is_finished() || ack_task.is_finished() => {
                tracing::debug!(error = %format!("{:#}", e.error), "source stopped after the pipeline ended");
                break Ok(Ended::Done);
            }
            Err(e)
                if e.class == ErrorClass::Transient
                    && !stopping(&stop)
                    && must_snapshot
                    && snapshot_unfinished(&durable_rx.borrow(), &start_checkpoint) =>
            {
                tracing::warn!(source = %name, error = %format!("{:#}", e.error), "capture session failed during the initial snapshot; it starts over once the rows already sent are confirmed");
                break Ok(Ended::SnapshotUnfinished);
            }
            Err(e) if e.class == ErrorClass::Transient && !stopping(&stop) => {
                // A session that moved the checkpoint worked for a while: start the backoff over.
                if *durable_rx.borrow() != resume {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(source = %name, error = %format!("{:#}", e.error), retry_in_ms = delay.as_millis() as u64, "capture session failed; resuming from the last checkpoint");
                crate::status::source(&name).set_state(
                    crate::status::State::Retrying,
                    Some(format!("{:#}", e.error)),
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => break Ok(Ended::Done),
                }
            }
            Err(e) => break Err(e.error.context(format!("source {name}"))),
        }
    };
    drop(batch_tx);
    let published = publish_task.await.context("publish task")?;
    let acked = ack_task.await.context("ack task")?;
    if let Err(e) = publisher.flush(Duration::from_secs(10)) {
        tracing::warn!(error = %error_chain(&e), "kafka producer did not flush");
    }
    let ended = outcome?;
    published.with_context(|| format!("publishing changes of source {name}"))?;
    acked.with_context(|| format!("checkpointing source {name}"))?;
    Ok(ended)
}

/// Whether the snapshot a pipeline started from `start` must take has no durable checkpoint
/// yet: the durable one is still the start's (or none), or records no finished snapshot.
fn snapshot_unfinished(
    durable: &Option<SourceCheckpoint>,
    start: &Option<SourceCheckpoint>,
) -> bool {
    match durable {
        None => true,
        Some(cp) => !cp.snapshot_done || durable == start,
    }
}

/// How often a source's log end is compared with its checkpoint (while the HTTP API runs).
const LOG_LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Measures, while the HTTP API runs, how far the source's log is ahead of the durable
/// checkpoint. Never returns.
async fn measure_log_lag<S: ChangeSource>(
    source: &S,
    name: &str,
    durable: watch::Receiver<Option<SourceCheckpoint>>,
) {
    if !crate::status::watched() {
        return std::future::pending().await;
    }
    let status = crate::status::source(name);
    let mut tick = tokio::time::interval(LOG_LAG_INTERVAL);
    loop {
        tick.tick().await;
        let position = durable.borrow().as_ref().map(|c| c.position.clone());
        let Some(position) = position else { continue };
        match source.log_behind(&position).await {
            Ok(Some(bytes)) => status.log_behind(bytes),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(source = %name, error = %error_chain(&e), "cannot measure how far the source's log is ahead")
            }
        }
    }
}

async fn publish_loop(
    publisher: KafkaPublisher,
    mut batches: mpsc::Receiver<Batch>,
    inflight: mpsc::Sender<InFlight>,
    mut reconcile: Option<Reconcile>,
) -> Result<(), sluice_kafka::KafkaError> {
    let mut key = Vec::with_capacity(128);
    let mut value = Vec::with_capacity(1024);
    while let Some(batch) = batches.recv().await {
        let now_ms = crate::status::now_ms();
        let acks = Acks::new();
        let mut events = batch.events.len();
        for event in &batch.events {
            publisher
                .publish(event, now_ms, &mut key, &mut value, &acks)
                .await?;
            // Any record of a key settles it: a snapshot row, or (a MySQL snapshot read
            // between watermarks) a change streamed while the snapshot is read.
            if let Some(r) = reconcile.as_mut() {
                r.settled(&event.table.topic, &key);
            }
        }
        // The snapshot is complete: what it did not publish again is gone from the source.
        if let Some(cp) = batch.checkpoint.as_ref().filter(|c| c.snapshot_done) {
            if let Some(r) = reconcile.take() {
                events += r
                    .publish_deletes(cp, &publisher, now_ms, &mut value, &acks)
                    .await?;
            }
        }
        let commit_us = batch
            .events
            .iter()
            .rev()
            .find(|e| !e.source.snapshot)
            .map(|e| e.source.commit_time_us);
        let item = InFlight {
            acks,
            events,
            checkpoint: batch.checkpoint,
            commit_us,
        };
        if inflight.send(item).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn ack_loop(
    source: String,
    store: CheckpointStore,
    publisher: KafkaPublisher,
    mut inflight: mpsc::Receiver<InFlight>,
    durable: watch::Sender<Option<SourceCheckpoint>>,
    interval: Duration,
) -> Result<(), sluice_kafka::KafkaError> {
    let status = crate::status::source(&source);
    let mut pending: Option<SourceCheckpoint> = None;
    let mut last_write = Instant::now();
    let mut events_total: u64 = 0;
    let mut last_report = Instant::now();
    loop {
        let due = pending.as_ref().map(|_| last_write + interval);
        tokio::select! {
            item = inflight.recv() => {
                let Some(item) = item else { break };
                item.acks.wait().await?;
                events_total += item.events as u64;
                status.published(item.events as u64);
                if let Some(us) = item.commit_us {
                    status.confirmed_commit(us);
                }
                if let Some(cp) = item.checkpoint {
                    pending = Some(cp);
                }
            }
            _ = sleep_until(due), if due.is_some() => {}
        }
        if pending.is_some() && last_write.elapsed() >= interval {
            if let Some(cp) = pending.take() {
                store.store(&publisher, &cp).await?;
                status.checkpointed(&cp.position.to_string(), cp.snapshot_done);
                tracing::debug!(source = %source, position = %cp.position, events_published = events_total, "checkpoint written");
                durable.send_replace(Some(cp));
                last_write = Instant::now();
            }
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            tracing::info!(source = %source, events_published = events_total, "capture progress");
            last_report = Instant::now();
        }
    }
    if let Some(cp) = pending.take() {
        store.store(&publisher, &cp).await?;
        status.checkpointed(&cp.position.to_string(), cp.snapshot_done);
        tracing::info!(source = %source, position = %cp.position, "final checkpoint written");
        durable.send_replace(Some(cp));
    }
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
